"""StyleGAN2 G/D: shapes, equalised lr, demodulation, FIR resampling, truncation, w_avg, style mixing, noise,
minibatch std, and the per-sample draws (world-size invariant, resumable)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distgan.errors import UserError
from distgan.models import fir
from distgan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, channel_plan
from distgan.models.stylegan2_draws import Mixing, local_mixing, local_noise_maps, mixing, noise_maps
from distgan.models.stylegan2_layers import EqualConv2d, EqualLinear, MinibatchStd, modulated_conv2d
from distgan.testing import gloo

torch.set_num_threads(1)
TINY = dict(channel_base=256, channel_max=32, mapping_layers=2, z_dim=16, w_dim=16)


def tiny_g(resolution=32, channels=3, num_classes=0, **kw):
    torch.manual_seed(0)
    return StyleGAN2Generator(resolution, channels, num_classes=num_classes, **{**TINY, **kw})


def tiny_d(resolution=32, channels=3, num_classes=0):
    torch.manual_seed(1)
    return StyleGAN2Discriminator(resolution, channels, 256, 32, num_classes=num_classes, mapping_layers=2)


# ---------------------------------------------------------------- shapes and plans
@pytest.mark.parametrize("resolution,channels,num_classes", [(32, 3, 0), (64, 1, 0), (32, 3, 10), (64, 3, 4)])
def test_shapes(resolution, channels, num_classes):
    G, D = tiny_g(resolution, channels, num_classes), tiny_d(resolution, channels, num_classes)
    z = torch.randn(8, 16)
    y = torch.randint(max(num_classes, 1), (8,)) if num_classes else None
    img = G(z, y)
    assert img.shape == (8, channels, resolution, resolution)
    assert D(img, y).shape == (8,)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2
    assert len(G.noise_resolutions) == G.num_ws - 1


def test_paper256_plan_matches_stylegan2_ada():
    """StyleGAN2-ADA's paper256 networks have 24,767,458 (G) and 24,001,089 (D) parameters."""
    plan = channel_plan(256, 16384, 512)
    assert plan == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}
    with torch.device("meta"):
        G, D = StyleGAN2Generator(256, 3), StyleGAN2Discriminator(256, 3)
    assert sum(p.numel() for p in G.parameters()) == 24_767_458
    assert sum(p.numel() for p in D.parameters()) == 24_001_089


@pytest.mark.parametrize("resolution,channels", [(48, 3), (16, 3), (2048, 3), (32, 2)])
def test_bad_shape_is_a_user_error(resolution, channels):
    with pytest.raises(UserError):
        StyleGAN2Generator(resolution, channels, **TINY)


def test_conditional_d_uses_labels_and_needs_them():
    D = tiny_d(num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(D(x, torch.tensor([0, 1, 2, 3])), D(x, torch.tensor([4, 5, 6, 7])))
    with pytest.raises(ValueError):
        D(x)


def test_conditional_g_uses_labels():
    G = tiny_g(num_classes=10)
    z = torch.randn(4, 16)
    assert not torch.allclose(G(z, torch.tensor([0, 1, 2, 3])), G(z, torch.tensor([4, 5, 6, 7])))


# ---------------------------------------------------------------- equalised learning rate
def test_equalised_linear_scales_at_run_time():
    torch.manual_seed(0)
    layer = EqualLinear(400, 300, bias_init=0.5, lr_mul=0.01)
    assert abs(layer.weight.std().item() * 0.01 - 1) < 0.02  # stored N(0,1)/lr_mul
    assert torch.allclose(layer.bias * 0.01, torch.full([300], 0.005))
    x = torch.randn(5, 400)
    expected = x @ (layer.weight * 0.01 / math.sqrt(400)).t() + layer.bias * 0.01
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer(x).sum().backward()  # the lr multiplier also scales the gradient of the stored weight
    assert torch.allclose(layer.weight.grad, (0.01 / math.sqrt(400)) * x.sum(0).expand(300, 400), atol=1e-5)


def test_every_weight_has_unit_variance_init_and_mapping_has_lr_mul():
    G = StyleGAN2Generator(32, 3, 2048, 64, mapping_layers=4, z_dim=128, w_dim=128)
    D = StyleGAN2Discriminator(32, 3, 2048, 64)
    mapping = {id(p) for p in G.mapping.layers.parameters()}
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        if p.dim() < 2 or p.numel() < 2000:
            continue
        scale = 0.01 if id(p) in mapping else 1.0
        assert abs(p.std().item() * scale - 1) < 0.1, name
    for layer in G.mapping.layers:
        assert layer.weight_gain == pytest.approx(0.01 / math.sqrt(layer.weight.shape[1]))


def test_equalised_conv_down_halves_and_uses_gain():
    conv = EqualConv2d(3, 5, 3, down=True)
    x = torch.randn(2, 3, 8, 8)
    assert conv(x).shape == (2, 5, 4, 4)
    assert EqualConv2d(3, 5, 1, down=True, bias=False)(x).shape == (2, 5, 4, 4)


# ---------------------------------------------------------------- modulated convolution
def test_demodulation_keeps_unit_variance():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 16, 16)
    weight = torch.randn(64, 64, 3, 3)
    styles = torch.rand(8, 64) * 3 + 0.5  # far from 1, so without demodulation the std is ~ 50
    std = modulated_conv2d(x, weight, styles).std().item()
    assert 0.85 < std < 1.15


@pytest.mark.parametrize("up", [False, True])
def test_demodulation_removes_the_scale_of_the_styles(up):
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 8, 8, 8), torch.randn(4, 8, 3, 3), torch.rand(2, 8) + 0.5
    scaled = styles * torch.tensor([[10.0], [0.1]])
    assert torch.allclose(modulated_conv2d(x, weight, styles, up=up), modulated_conv2d(x, weight, scaled, up=up),
                          atol=1e-5)
    assert not torch.allclose(modulated_conv2d(x, weight, styles, demodulate=False, up=up),
                              modulated_conv2d(x, weight, scaled, demodulate=False, up=up))


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("demodulate", [False, True])
def test_fused_equals_separate_modulation(up, demodulate):
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 4, 8, 8), torch.randn(5, 4, 3, 3), torch.randn(3, 4)
    a = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, fused=True)
    b = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, fused=False)
    assert a.shape == (3, 5, 16 if up else 8, 16 if up else 8)
    assert torch.allclose(a, b, atol=1e-5)


def test_fused_modconv_auto_is_separate_while_training_and_grouped_in_eval(monkeypatch):
    """model.fused_modconv=auto (the default): the shared-conv path in train mode, the grouped conv in eval
    mode, the same images either way; true/false force one path."""
    import distgan.models.stylegan2_layers as layers

    seen = []
    original = layers.modulated_conv2d
    monkeypatch.setattr(layers, "modulated_conv2d", lambda *a, **k: seen.append(k["fused"]) or original(*a, **k))
    G = tiny_g()
    assert G.synthesis.blocks[0].conv1.fused is None
    z = torch.randn(2, 16)
    train = G.train()(z)
    assert seen and not any(seen)
    seen.clear()
    with torch.no_grad():
        evaluated = G.eval()(z)
    assert seen and all(seen)
    assert torch.allclose(train.detach(), evaluated, atol=1e-4)
    seen.clear()
    tiny_g(fused_modconv=False).eval()(z)
    assert seen and not any(seen)


def test_fused_modconv_setting_is_checked():
    from distgan.config import Config, validate

    cfg = Config()
    cfg.model.fused_modconv = "sometimes"
    with pytest.raises(UserError, match="model.fused_modconv must be auto, true or false"):
        validate(cfg, 1)


def test_modulation_matches_per_sample_reference():
    """Sample n is the plain conv with weight w * s_n (input channels), demodulated per output channel."""
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(2, 4)
    out = modulated_conv2d(x, weight, styles)
    for n in range(2):
        w = weight * styles[n][None, :, None, None]
        w = w / w.square().sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        assert torch.allclose(out[n:n + 1], F.conv2d(x[n:n + 1], w, padding=1), atol=1e-5)


# ---------------------------------------------------------------- FIR resampling
def test_upsample_is_zero_insertion_then_filter():
    x = torch.randn(2, 3, 5, 5)
    up = torch.zeros(2, 3, 10, 10)
    up[:, :, ::2, ::2] = x  # StyleGAN2's upfirdn2d: zero-insert, pad (2, 1), filter, gain 4
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = (torch.outer(f, f) / 64 * 4).expand(3, 1, 4, 4)
    reference = F.conv2d(F.pad(up, [2, 1, 2, 1]), k, groups=3)
    assert torch.allclose(fir.upsample2d(x), reference, atol=1e-6)


def test_resampling_preserves_constants_away_from_borders():
    x = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(fir.upsample2d(x)[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))
    down = fir.downsample2d(x)
    assert down.shape == (1, 2, 4, 4)
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))
    # the 4-tap kernel [1,3,3,1]/8: a unit impulse spreads to exactly those weights
    impulse = torch.zeros(1, 1, 7, 7)
    impulse[0, 0, 3, 3] = 1
    row = fir.blur(impulse, (2, 1))[0, 0, 3]  # the kernel's row 2: 3/8 * [1, 3, 3, 1] / 8
    assert torch.allclose(row[2:6] * 64 / 3, torch.tensor([1.0, 3.0, 3.0, 1.0]))
    assert row[:2].abs().sum() == 0 and row[6:].abs().sum() == 0


# ---------------------------------------------------------------- mapping: truncation, w_avg, mixing
def test_truncation():
    G = tiny_g()
    G.mapping.w_avg.copy_(torch.randn(16))
    z = torch.randn(4, 16)
    ws = G.map(z)
    assert torch.equal(G.map(z, truncation_psi=1.0), ws)
    assert torch.allclose(G.map(z, truncation_psi=0.0), G.mapping.w_avg.expand_as(ws))
    half = G.map(z, truncation_psi=0.5)
    assert torch.allclose(half, (ws + G.mapping.w_avg) / 2, atol=1e-6)
    cut = G.map(z, truncation_psi=0.0, truncation_cutoff=3)
    assert torch.allclose(cut[:, :3], G.mapping.w_avg.expand(4, 3, 16)) and torch.equal(cut[:, 3:], ws[:, 3:])


def test_w_avg_moves_only_when_asked_and_once_per_flush():
    G = tiny_g()
    z = torch.randn(8, 16)
    G.mapping.w_avg.fill_(1.0)
    G.map(z)
    G.flush_w_avg()  # nothing accumulated
    assert torch.equal(G.mapping.w_avg, torch.ones(16))
    w = G.map(z, update_w_avg=True)[:, 0]
    assert torch.equal(G.mapping.w_avg, torch.ones(16))  # accumulated, not applied
    G.flush_w_avg()
    assert torch.allclose(G.mapping.w_avg, 0.995 + w.mean(0) * 0.005, atol=1e-7)
    # micro-batches: two calls of 4 then one flush move w_avg as one call of 8
    first = G.mapping.w_avg.clone()
    G.map(z, update_w_avg=True)
    G.flush_w_avg()
    whole = G.mapping.w_avg.clone()
    G.mapping.w_avg.copy_(first)
    G.map(z[:4], update_w_avg=True)
    G.map(z[4:], update_w_avg=True)
    G.flush_w_avg()
    assert torch.allclose(G.mapping.w_avg, whole, atol=1e-7)


def test_style_mixing_uses_the_second_w_after_the_cutoff():
    G = tiny_g()
    z, z2 = torch.randn(3, 16), torch.randn(3, 16)
    cutoff = torch.tensor([2, 5, G.num_ws])
    ws = G.map(z, mixing=Mixing(z2, cutoff))
    w1, w2 = G.map(z), G.map(z2)
    for i, c in enumerate(cutoff.tolist()):
        assert torch.equal(ws[i, :c], w1[i, :c]) and torch.equal(ws[i, c:], w2[i, c:])
    img = G(z, mixing=Mixing(z2, cutoff))
    assert not torch.allclose(img[:2], G(z)[:2]) and torch.equal(img[2], G(z)[2])


def test_noise_inputs_change_the_image_and_train_their_strength():
    G = tiny_g()
    for m in G.modules():
        if hasattr(m, "noise_strength"):
            m.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 16)
    noise = [torch.randn(2, 1, r, r) for r in G.noise_resolutions]
    assert torch.equal(G(z), G(z))  # constant noise without explicit maps
    out = G(z, noise=noise)
    assert not torch.allclose(out, G(z))
    out.square().sum().backward()
    strengths = [m.noise_strength.grad for m in G.modules() if hasattr(m, "noise_strength")]
    assert len(strengths) == len(noise) and all(g is not None and g != 0 for g in strengths)


def test_return_ws_is_the_tensor_synthesis_consumed():
    G = tiny_g()
    z = torch.randn(2, 16)
    img, ws = G(z, mixing=Mixing(torch.randn(2, 16), torch.tensor([3, 4])), return_ws=True)
    (grad,) = torch.autograd.grad(img.sum(), ws)
    assert grad.shape == (2, G.num_ws, 16) and grad.abs().sum(2).min() > 0  # every layer's w is used


# ---------------------------------------------------------------- minibatch standard deviation
def test_minibatch_std_groups_are_contiguous():
    """A sample's logit depends only on its own group of 4 consecutive samples: D on a rank's slice gives
    the same logits as D on the global batch."""
    D = tiny_d()
    x = torch.randn(8, 3, 32, 32)
    assert torch.allclose(torch.cat([D(x[:4]), D(x[4:])]), D(x), atol=1e-5)
    layer = MinibatchStd(4)
    y = layer(x[:, :2, :2, :2])
    std = x[:4, :2, :2, :2].std(0, unbiased=False).mean()
    assert torch.allclose(y[:4, 2], std.expand(4, 2, 2), atol=1e-5)
    with pytest.raises(ValueError):
        D(x[:6])


# ---------------------------------------------------------------- per-sample draws
def test_noise_and_mixing_draws_are_world_size_invariant_and_resumable():
    res = [4, 8, 8]
    one = local_noise_maps(res, 7, 30, 5, 8, 0, 1)
    two = [local_noise_maps(res, 7, 30, 5, 8, r, 2) for r in range(2)]
    for k in range(3):
        assert torch.equal(one[k], torch.cat([two[0][k], two[1][k]]))
    again = noise_maps(res, 7, 30, 5, 2, 3)  # samples 2..4, as a resumed run or a micro-batch draws them
    assert all(torch.equal(a, o[2:5]) for a, o in zip(again, one))
    assert not torch.equal(local_noise_maps(res, 7, 30, 6, 8, 0, 1)[2], one[2])  # next counter: new draw
    m1 = local_mixing(12, 16, 7, 31, 5, 8, 0, 1)
    m2 = [local_mixing(12, 16, 7, 31, 5, 8, r, 2) for r in range(2)]
    assert torch.equal(m1.z, torch.cat([m2[0].z, m2[1].z])) and torch.equal(m1.cutoff, torch.cat([m2[0].cutoff,
                                                                                                  m2[1].cutoff]))
    assert torch.equal(mixing(12, 16, 7, 31, 5, 3, 4).cutoff, m1.cutoff[3:7])


def test_mixing_draw_statistics():
    m = mixing(12, 4, 0, 31, 0, 0, 2000)
    mixed = m.cutoff < 12
    assert 0.87 < mixed.float().mean() < 0.93
    assert m.cutoff[mixed].min() == 1 and m.cutoff[mixed].max() == 11
    assert (mixing(12, 4, 0, 31, 0, 0, 50, prob=0.0).cutoff == 12).all()
    noise = noise_maps([16], 0, 30, 0, 0, 64)[0]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02


# ---------------------------------------------------------------- w_avg on 2 gloo ranks
def _w_avg_on_rank(z_all):
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    G = tiny_g()
    local = z_all[rank * len(z_all) // world:(rank + 1) * len(z_all) // world]
    for _ in range(2):
        G.map(local, update_w_avg=True)
        G.flush_w_avg()
    return G.mapping.w_avg


def test_w_avg_is_all_reduced_across_ranks():
    z = torch.randn(8, 16)
    ranks = gloo.run(_w_avg_on_rank, 2, z)
    single = _w_avg_on_rank(z)
    assert torch.equal(ranks[0], ranks[1])
    assert torch.allclose(ranks[0], single, atol=1e-7)


# ---------------------------------------------------------------- a whole tiny step
def test_tiny_training_step_reaches_every_parameter():
    G, D = tiny_g(num_classes=3), tiny_d(num_classes=3)
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    noise = noise_maps(G.noise_resolutions, 0, 30, 0, 0, 4)
    img = G(z, y, noise=noise, mixing=mixing(G.num_ws, 16, 0, 31, 0, 0, 4))
    F.softplus(-D(img, y)).mean().backward()
    assert all(p.grad is not None for p in G.parameters())
    real = torch.randn(4, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(D(real, y).sum(), real, create_graph=True)
    D.zero_grad()
    g.square().sum().backward()  # R1's double backward through the FIR ops and mbstd
    # the logit's bias does not move the input gradient: R1 needs `logits * 0` for DDP's buckets
    assert [n for n, p in D.named_parameters() if p.grad is None] == ["out.bias"]
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)
