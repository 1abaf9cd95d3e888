"""model=r3gan (distgan/models/r3gan.py): its blocks against hand-computed values, R3GAN's five presets at
their published sizes, its bad inputs as one line each, 2 gloo workers x B/2 == 1 worker x B through the real
training loop with R1 + R2, the schedules and R3GAN's augmentation on, and a stopped-and-resumed run that
ends exactly where a straight run does."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from distgan import checkpoint
from distgan.config import Config, DatasetConfig, LossConfig, ModelConfig, TrainConfig
from distgan.errors import UserError
from distgan.models import build_models
from distgan.models import r3gan as r3
from distgan.testing import gloo

GAIN = math.sqrt(2 / 1.04)
# R3GAN's train.py presets: (G widths, cardinalities, classes) -> (G, D) parameters counted with its code
PRESETS = {
    "CIFAR10": ([768] * 4, [96] * 4, 10, (20_781_952, 21_280_512)),
    "FFHQ-64": ([768] * 4 + [384], [96] * 4 + [48], 0, (22_429_824, 22_381_440)),
    "FFHQ-256": ([768] * 4 + [384, 192, 96], [96] * 4 + [48, 24, 12], 0, (23_057_952, 23_009_568)),
    "ImageNet-32": ([1536] * 4, [96] * 4, 1000, (82_914_304, 86_548_992)),
    "ImageNet-64": ([1536] * 5, [96] * 5, 1000, (103_570_432, 107_205_120)),
}


def tiny(**kw) -> ModelConfig:
    m = dict(name="r3gan", latent_dim=8, widths=[8, 8, 4, 4], cardinalities=[2, 2, 2, 1], blocks=[1, 1, 1, 1],
             expansion=2, norm_g="none", norm_d="none")
    m.update(kw)
    return ModelConfig(**m)


def _count(net) -> int:
    return sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_have_r3gans_parameter_counts(preset):
    widths, cards, classes, (g, d) = PRESETS[preset]
    m = tiny(latent_dim=64, widths=widths, cardinalities=cards, blocks=[2] * len(widths), conditional=classes > 0)
    side = 4 * 2 ** (len(widths) - 1)
    with torch.device("meta"):  # no memory, no initialisation: sizes only
        G, D = build_models(m, (3, side, side), classes)
    assert (_count(G), _count(D)) == (g, d)


def test_state_dict_names_are_r3gans():
    G, D = build_models(tiny(conditional=True), (3, 32, 32), 3)
    g, d = G.state_dict(), D.state_dict()
    assert {"MainLayers.0.Layers.0.Basis", "MainLayers.0.Layers.0.LinearLayer.weight",
            "MainLayers.0.Layers.1.LinearLayer1.Layer.weight", "MainLayers.0.Layers.1.NonLinearity1.Bias",
            "MainLayers.2.Layers.0.LinearLayer.Layer.weight", "MainLayers.2.Layers.0.Resampler.Kernel",
            "AggregationLayer.Layer.weight", "EmbeddingLayer.weight"} <= g.keys()
    assert "MainLayers.1.Layers.0.LinearLayer.Layer.weight" not in g  # width unchanged: no 1x1 conv
    assert {"ExtractionLayer.Layer.weight", "MainLayers.1.Layers.1.LinearLayer.Layer.weight",
            "MainLayers.3.Layers.1.Basis.weight", "MainLayers.3.Layers.1.LinearLayer.weight",
            "EmbeddingLayer.weight"} <= d.keys()
    assert d["MainLayers.3.Layers.1.LinearLayer.weight"].shape == (8, 8)  # embedding as wide as D's last stage
    assert g["EmbeddingLayer.weight"].shape == (8, 3)  # G's label embedding as wide as z


# ----------------------------------------------------------------------------------------- blocks
def test_resampling_kernel_is_121_convolved_with_11():
    k = r3.lowpass_kernel()
    expected = torch.tensor([1.0, 3, 3, 1])
    torch.testing.assert_close(k, torch.outer(expected, expected) / 64)


def test_upsampling_and_downsampling_by_hand():
    x = torch.tensor([[0.0, 8.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    up = r3.Resampler(up=True)(x)
    # upfirdn2d: zero insertion [x0, 0, x1, 0], padding (2, 1) -> [0, 0, x0, 0, x1, 0, 0], 4-tap [1,3,3,1]/8 per
    # axis, gain 4. Input row 0 sits at padded index 2: outputs 0, 1, 2 see it through taps 3, 3, 1; input
    # column 1 sits at padded index 4: outputs 1, 2, 3 see it through taps 1, 3, 3.
    col = torch.tensor([3.0, 3, 1, 0]) / 8
    row = torch.tensor([0.0, 1, 3, 3]) / 8
    torch.testing.assert_close(up[0, 0], 8 * 4 * torch.outer(col, row))
    assert torch.allclose(r3.Resampler(up=True)(torch.ones(1, 2, 4, 4))[..., 1:-1, 1:-1], torch.tensor(1.0))
    y = torch.arange(16.0).view(1, 1, 4, 4)
    down = r3.Resampler(up=False)(y)
    # output (0, 0) reads input rows/cols -1..2 (zero padding) with [1,3,3,1]/8 per axis
    w = torch.tensor([1.0, 3, 3, 1]) / 8
    padded = F.pad(y, [1, 1, 1, 1])[0, 0]
    torch.testing.assert_close(down[0, 0, 0, 0], (torch.outer(w, w) * padded[:4, :4]).sum())
    torch.testing.assert_close(down[0, 0, 1, 1], (torch.outer(w, w) * padded[2:6, 2:6]).sum())


def test_residual_block_by_hand_and_its_initialisation():
    torch.manual_seed(0)
    block = r3.ResidualBlock(4, cardinality=2, expansion=2, scaling=16)
    assert torch.count_nonzero(block.LinearLayer3.Layer.weight) == 0  # zero-gain last layer: the identity
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(block(x), x)
    for layer in (block.LinearLayer1, block.LinearLayer2, block.LinearLayer3):
        layer.Layer.weight.data.normal_()
    block.NonLinearity1.Bias.data.fill_(0.1)
    block.NonLinearity2.Bias.data.fill_(-0.2)
    w1, w2, w3 = (layer.Layer.weight for layer in (block.LinearLayer1, block.LinearLayer2, block.LinearLayer3))
    h = torch.einsum("oi,nihw->nohw", w1[:, :, 0, 0], x) + 0.1
    h = torch.where(h > 0, h, 0.2 * h)
    halves = [F.conv2d(h[:, 4 * g:4 * g + 4], w2[4 * g:4 * g + 4], padding=1) for g in range(2)]  # 2 groups of 4
    h = torch.cat(halves, 1) - 0.2
    h = torch.where(h > 0, h, 0.2 * h)
    torch.testing.assert_close(block(x), x + torch.einsum("oi,nihw->nohw", w3[:, :, 0, 0], h))


def test_msr_initialisation_scales():
    torch.manual_seed(0)
    block = r3.ResidualBlock(64, cardinality=4, expansion=2, scaling=16)
    gain = GAIN * 16 ** -0.25
    std1 = block.LinearLayer1.Layer.weight.std().item()  # fan-in 64
    std2 = block.LinearLayer2.Layer.weight.std().item()  # fan-in 128 / 4 groups x 9 taps
    assert std1 == pytest.approx(gain / 8, rel=0.05) and std2 == pytest.approx(gain / math.sqrt(32 * 9), rel=0.05)
    basis = r3.DiscriminativeBasis(64, 1)
    assert basis.Basis.weight.std().item() == pytest.approx(1 / 4, rel=0.05)  # depthwise 4x4: fan-in 16
    D = r3.R3Discriminator([8, 8], [2, 2], [1, 1], num_classes=5)
    assert D.EmbeddingLayer.weight.std().item() == pytest.approx(1 / math.sqrt(8) / math.sqrt(5), rel=0.5)


def test_generative_and_discriminative_bases_by_hand():
    torch.manual_seed(0)
    g = r3.GenerativeBasis(3, 2)
    z = torch.randn(4, 3)
    torch.testing.assert_close(g(z), g.Basis[None] * (z @ g.LinearLayer.weight.T)[:, :, None, None])
    d = r3.DiscriminativeBasis(2, 1)
    x = torch.randn(4, 2, 4, 4)
    per_channel = (x * d.Basis.weight[:, 0][None]).sum((2, 3))
    torch.testing.assert_close(d(x), per_channel @ d.LinearLayer.weight.T)


def test_shapes_conditioning_and_one_hot_labels():
    torch.manual_seed(0)
    G, D = build_models(tiny(conditional=True), (1, 32, 32), 3)
    z, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 1, 0])
    img = G(z, y)
    assert img.shape == (5, 1, 32, 32) and D(img, y).shape == (5,)
    torch.testing.assert_close(G(z, F.one_hot(y, 3).float()), img)  # R3GAN's one-hot c gives the same
    torch.testing.assert_close(G(z), G(z, torch.tensor([0, 1, 2, 0, 1])))  # no labels: balanced classes
    for net in (G, D):  # no normalisation anywhere
        assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in net.modules())


# ------------------------------------------------------------------------------------- bad inputs
def _check(m: ModelConfig, size: int = 32):
    from distgan.models import check

    check(Config(model=m, dataset=DatasetConfig(name="fashion_mnist", resolution=size)))


@pytest.mark.parametrize("m, size, message", [
    (tiny(widths=[8, 8, 6, 4], cardinalities=[2, 2, 5, 1]), 32,
     r"width 6 x model.expansion 2 is not divisible by its cardinality 5"),
    (tiny(), 64, r"4 stages makes 32 px images, the data is 64 px: give model.widths, cardinalities and blocks 5 "),
    (tiny(blocks=[1, 1]), 32, r"one entry per stage each; got 4, 4 and 2"),
    (tiny(widths=None), 32, r"model=r3gan needs model.widths"),
    (tiny(spectral_norm=True), 32, r"model=r3gan has no normalisation"),
])
def test_bad_inputs_are_one_line(m, size, message):
    with pytest.raises(UserError, match=message) as e:
        _check(m, size)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------- the loop: DDP and resume
def loop_config(run_dir: str, root: str, **train) -> Config:
    """model=r3gan (class-conditional) on Fashion-MNIST at 32 px, tiny; rpgan with R1 + R2 every D step, R3GAN's
    augmentation and every schedule moving within the run (8 images a step, schedule over 48 images = 6 steps)."""
    t = dict(steps=8, batch_size=8, seed=3, log_every=2, sample_every=100, checkpoint_every=4, num_sample_images=4,
             lr_g=1e-3, lr_d=1e-3, beta1=0.0, beta2=0.9, r1_gamma=1.0, r2_gamma=1.0, r1_interval=1,
             schedule_kimg=0.048, schedule_hold_kimg=0.008, lr_final=2e-4, beta2_final=0.99, gamma_final=0.1,
             ema_kimg=0.0, ema_final_kimg=0.02, augment="r3gan", augment_p=0.3, augment_p_final=0.9)
    t.update(train)
    return Config(model=tiny(conditional=True), dataset=DatasetConfig(name="fashion_mnist", root=root, resolution=32),
                  loss=LossConfig(name="rpgan"), train=TrainConfig(**t), run_dir=run_dir, resume="auto")


def _train_and_return_weights(run_dir: str, root: str) -> dict:
    from distgan.train import Hooks, train_worker

    out = {}

    class Keep(Hooks):
        def end(self, G, D):
            out.update({f"G.{k}": v.clone() for k, v in G.state_dict().items()})
            out.update({f"D.{k}": v.clone() for k, v in D.state_dict().items()})

    torch.set_num_threads(1)
    train_worker(loop_config(run_dir, root), Keep())
    return out


def test_two_workers_train_r3gan_like_one(tmp_path, fashion_root, monkeypatch):
    from distgan.regularizers import fused_d_reg
    from distgan.step import GANStep

    # R1 + R2 every D step: part of D main's loss (one update), never the lazy D reg phase
    assert fused_d_reg(loop_config("", "").train)
    monkeypatch.setattr(GANStep, "d_reg", lambda *a, **k: pytest.fail("D reg ran at r1_interval=1"))
    one = _train_and_return_weights(str(tmp_path / "one"), fashion_root)
    two = gloo.run(_train_and_return_weights, 2, str(tmp_path / "two"), fashion_root, timeout=300)
    assert all(torch.equal(v, two[1][k]) for k, v in two[0].items())  # the ranks agree bit for bit
    for key, w in one.items():
        scale = w.abs().max().clamp(min=1e-3)
        assert (two[0][key] - w).abs().max() <= 1e-4 * scale, key
    # the schedules reached their final values and were logged
    state = checkpoint.load(tmp_path / "one" / "checkpoints")
    assert state["G_ema"] is not None
    groups = state["opt_D"]["param_groups"][0]  # one update per D step: no lazy correction
    assert groups["lr"] == pytest.approx(2e-4) and groups["betas"][1] == pytest.approx(0.99)


def test_stopped_and_resumed_mid_schedule_equals_a_straight_run(tmp_path, fashion_root):
    from distgan.train import Hooks, train_worker

    class Stop(Exception):
        pass

    class StopAt4(Hooks):
        def report(self, metrics, checkpoint_dir):
            if metrics["step"] == 4:
                raise Stop

    torch.set_num_threads(1)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train_worker(loop_config(straight, fashion_root))
    with pytest.raises(Stop):
        train_worker(loop_config(resumed, fashion_root), StopAt4())
    assert checkpoint.load(tmp_path / "resumed" / "checkpoints")["step"] == 4
    train_worker(loop_config(resumed, fashion_root))
    a, b = (checkpoint.load(tmp_path / run / "checkpoints") for run in ("straight", "resumed"))
    assert a["step"] == b["step"] == 8
    for net in ("G", "D", "G_ema"):
        for name in a[net]:
            torch.testing.assert_close(a[net][name], b[net][name], rtol=0, atol=0, msg=f"{net}.{name}")
    assert a["opt_G"]["param_groups"][0]["lr"] == b["opt_G"]["param_groups"][0]["lr"]


def test_the_schedules_are_logged(tmp_path, fashion_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distgan.train import train_worker

    torch.set_num_threads(1)
    train_worker(replace(loop_config(str(tmp_path), fashion_root), train=replace(
        loop_config("", "").train, steps=2, checkpoint_every=2)))
    events = EventAccumulator(str(tmp_path / "tb" / "global"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"sched/lr", "sched/beta2", "sched/gamma", "sched/ema_kimg", "sched/aug_p"} <= tags, tags
    # R1 + R2 in D main's loss (r1_interval=1) are still logged under their names
    assert {"loss/R1", "loss/R2", "loss/D"} <= tags, tags
    assert all(e.value > 0 for name in ("loss/R1", "loss/R2") for e in events.Scalars(name))


# ----------------------------------------------------------------------------------- bf16 stages
def test_bf16_stages_compute_in_bfloat16_as_r3gans_datatype():
    """model.bf16_stages=n: G's last n stages and D's first n run as the same stages converted to bfloat16
    (R3GAN's DataType: input cast, weights cast to it); the rest in float32; G's output is bfloat16."""
    import copy

    torch.manual_seed(0)
    G, D = build_models(tiny(bf16_stages=2), (3, 32, 32), 0)
    for net in (G, D):
        for p in net.parameters():
            p.data.add_(torch.randn_like(p) * 0.05)
    assert [s.dtype for s in G.MainLayers] == [torch.float32] * 2 + [torch.bfloat16] * 2
    assert [s.dtype for s in D.MainLayers] == [torch.bfloat16] * 2 + [torch.float32] * 2
    z = torch.randn(3, 8)
    with torch.no_grad():
        x = z
        for i, stage in enumerate(G.MainLayers):  # by hand: plain copies, the high stages converted to bf16
            plain = copy.deepcopy(stage)
            plain.dtype = None
            x = plain.to(torch.bfloat16)(x.bfloat16()) if i >= 2 else plain(x.float())
        want = copy.deepcopy(G.AggregationLayer).to(torch.bfloat16)(x)
        got = G(z)
        assert got.dtype == torch.bfloat16 and G.output_dtype == torch.bfloat16
        assert torch.equal(got, want)
        img = got.float()
        y = copy.deepcopy(D.ExtractionLayer).to(torch.bfloat16)(img.bfloat16())
        for i, stage in enumerate(D.MainLayers):
            plain = copy.deepcopy(stage)
            plain.dtype = None
            y = plain.to(torch.bfloat16)(y.bfloat16()) if i < 2 else plain(y.float())
        assert D(img).dtype == torch.float32 and torch.equal(D(img), y.view(-1))
    # off (the default): no casts at all, as before
    G0, _ = build_models(tiny(), (3, 32, 32), 0)
    assert all(s.dtype is None for s in G0.MainLayers) and G0.output_dtype is None
    with pytest.raises(UserError, match="model.bf16_stages must be an integer from 0 to 3"):
        build_models(tiny(bf16_stages=4), (3, 32, 32), 0)


def test_r3gan_trains_with_bf16_stages(tmp_path, fashion_root):
    """A few steps with model.bf16_stages (R1 + R2, R3GAN's augmentation, EMA): finite losses, float32 weights."""
    from distgan.train import train_worker

    torch.set_num_threads(1)
    cfg = loop_config(str(tmp_path), fashion_root)
    cfg = replace(cfg, model=replace(cfg.model, bf16_stages=2), train=replace(cfg.train, steps=4))
    train_worker(cfg)
    state = checkpoint.load(tmp_path / "checkpoints")
    assert state["step"] == 4
    for net in ("G", "D", "G_ema"):
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state[net].values()), net


# --------------------------------------------------------------------------- R3GAN's augmentation
def test_r3gan_augment_cutout_by_hand_and_per_sample():
    from distgan.augment import Augmenter, r3gan_augment
    from distgan.augment.r3gan import R3GAN_SPEC, cutout_mask

    assert (R3GAN_SPEC.xflip, R3GAN_SPEC.scale, R3GAN_SPEC.xfrac) == (1.0, 1.0, 1.0)  # geometric x 1
    assert (R3GAN_SPEC.brightness, R3GAN_SPEC.contrast, R3GAN_SPEC.hue, R3GAN_SPEC.saturation) == (0.5,) * 4
    # a firing sample centred at (0.25, 0.75) of an 8x8 image: a 4x4 hole over columns 0-3, rows 4-7
    mask = cutout_mask(torch.tensor([[0.0, 0.25, 0.75], [0.99, 0.5, 0.5]]), p=0.5, height=8, width=8)
    hole = torch.ones(8, 8)
    hole[4:8, 0:4] = 0
    assert torch.equal(mask[0, 0], hole) and torch.equal(mask[1, 0], torch.ones(8, 8))  # 0.99 >= p: no cutout
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert r3gan_augment(x, 0.0, 1, 17, 3, 0) is x
    whole = r3gan_augment(x, 0.7, 1, 17, 3, 10)
    halves = torch.cat([r3gan_augment(x[:3], 0.7, 1, 17, 3, 10), r3gan_augment(x[3:], 0.7, 1, 17, 3, 13)])
    torch.testing.assert_close(whole, halves)  # per global sample index: any split, any world size
    assert not torch.equal(whole, x)
    assert Augmenter("r3gan", 1).p == 0.0 and Augmenter("r3gan", 1, p=0.4).p == 0.4  # fixed; default 0


def test_r3gan_augment_without_any_p_is_one_line():
    from distgan.augment import check

    with pytest.raises(UserError, match="train.augment=r3gan has a fixed or scheduled p") as e:
        check(Config(train=TrainConfig(augment="r3gan")), "image")
    assert "\n" not in str(e.value)
    check(Config(train=TrainConfig(augment="r3gan", augment_p=0.2)), "image")
