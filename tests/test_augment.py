"""ADA and DiffAugment: matrices against hand-computed values, p = 0 is the identity, gradients flow, draws
are per global sample (world-size invariant, resumable); AdaptiveP's update and its all-reduce."""

from __future__ import annotations

import math

import pytest
import torch

from distgan.augment import AUGMENTS, AdaptiveP, ADASpec, ada
from distgan.augment import diffaugment as da
from distgan.testing import gloo

torch.set_num_threads(1)


def quiet_draws(n: int = 1, **fire) -> dict[str, torch.Tensor]:
    """Draws under which nothing fires ("_on" = 1 is never < mult * p), except the columns given."""
    d = {k: torch.ones(n, dtype=torch.float64) for k in ada.UNIFORMS}
    d.update({k: torch.zeros(n, dtype=torch.float64) for k in ada.NORMALS})
    for k, v in fire.items():
        d[k] = torch.full((n,), float(v), dtype=torch.float64)
    return d


def image(n=1, c=3, h=4, w=4):
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w) / (n * c * h * w) * 2 - 1


# ---------------------------------------------------------------- geometric matrices (hand-computed)
def test_x_flip():
    d = quiet_draws(xflip_on=0.0, xflip=0.75)  # fires; floor(0.75 * 2) = 1
    G = ada.geometric_matrices(d, 1.0, 4, 4)
    assert torch.allclose(G[0], torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)))
    x = image()
    assert torch.allclose(ada.apply_geometric(x, G), x.flip(3), atol=1e-6)
    d = quiet_draws(xflip_on=0.0, xflip=0.25)  # fires, but floor(0.5) = 0: no flip
    assert torch.equal(ada.geometric_matrices(d, 1.0, 4, 4)[0], torch.eye(3, dtype=torch.float64))


def test_rotate90():
    d = quiet_draws(rot90_on=0.0, rot90=0.3)  # floor(1.2) = 1 quarter turn: output (x, y) reads input (-y, x)
    G = ada.geometric_matrices(d, 1.0, 4, 4)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(G[0], expected, atol=1e-12)
    x = image()
    out = ada.apply_geometric(x, G)
    # pixel (row i, col j) sits at (x, y) = (j - 1.5, i - 1.5); it reads (-y, x): row j, col 3 - i
    hand = torch.stack([torch.stack([x[0, :, j, 3 - i] for j in range(4)], -1) for i in range(4)], -2)[None]
    assert torch.allclose(out, hand, atol=1e-6)
    assert torch.allclose(out, torch.rot90(x, 1, (2, 3)), atol=1e-6)


def test_integer_translation_on_a_4x4_image():
    spec = ADASpec(xint_max=0.5)
    d = quiet_draws(xint_on=0.0, xint_x=0.9, xint_y=0.5)  # t = (0.8 * 0.5, 0) -> round(0.4 * 4) = 2 px in x
    G = ada.geometric_matrices(d, 1.0, 4, 4, spec)
    expected = torch.tensor([[1.0, 0.0, -2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(G[0], expected)
    x = image()
    out = ada.apply_geometric(x, G)
    # output column j reads input column j - 2; columns -1, -2 reflect about the border to 0, 1
    hand = torch.cat([x[..., 1:2], x[..., 0:1], x[..., 0:1], x[..., 1:2]], dim=3)
    assert torch.allclose(out, hand, atol=1e-6)


def test_scaling_rotation_and_fractional_translation_matrices():
    d = quiet_draws(scale_on=0.0, scale=1.0)  # s = 2 ** 0.2
    s = 2 ** 0.2
    assert torch.allclose(ada.geometric_matrices(d, 1.0, 8, 8)[0].diagonal(), torch.tensor([1 / s, 1 / s, 1.0],
                                                                                            dtype=torch.float64))
    d = quiet_draws(aniso_on=0.0, aniso=-1.0)  # s = 2 ** -0.2: inverse scale2d(1 / s, s)
    s = 2 ** -0.2
    assert torch.allclose(ada.geometric_matrices(d, 1.0, 8, 8)[0].diagonal(), torch.tensor([1 / s, s, 1.0],
                                                                                            dtype=torch.float64))
    d = quiet_draws(prerot_on=0.0, prerot=0.75)  # theta = 0.5 pi; fires when u < 1 - sqrt(1 - p)
    G = ada.geometric_matrices(d, 1.0, 8, 8)[0]
    assert torch.allclose(G[:2, :2], torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64), atol=1e-12)
    # each rotation fires with probability 1 - sqrt(1 - p), so that one of the two fires with probability p:
    # 0.2929 at p = 0.5
    assert torch.equal(ada.geometric_matrices(quiet_draws(postrot_on=0.30, postrot=0.75), 0.5, 8, 8)[0],
                       torch.eye(3, dtype=torch.float64))
    fired = ada.geometric_matrices(quiet_draws(postrot_on=0.29, postrot=0.75), 0.5, 8, 8)[0]
    assert torch.allclose(fired[:2, :2], torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64), atol=1e-12)
    d = quiet_draws(xfrac_on=0.0, xfrac_x=1.0, xfrac_y=-2.0)  # t = (0.125, -0.25) of 8 px
    G = ada.geometric_matrices(d, 1.0, 8, 8)[0]
    assert torch.allclose(G[:2, 2], torch.tensor([-1.0, 2.0], dtype=torch.float64))


def test_transforms_compose_in_adas_order():
    """flip then quarter turn: G_inv = flip_inv @ rot_inv."""
    d = quiet_draws(xflip_on=0.0, xflip=0.75, rot90_on=0.0, rot90=0.3)
    G = ada.geometric_matrices(d, 1.0, 4, 4)[0]
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(G, flip @ rot, atol=1e-12)


# ---------------------------------------------------------------- colour matrices (hand-computed)
def colour(x, **fire):
    return ada.apply_colour(x, ada.colour_matrices(quiet_draws(x.shape[0], **fire), 1.0))


def test_brightness_contrast_and_luma_flip():
    x = image()
    assert torch.allclose(colour(x, bright_on=0.0, bright=1.5), x + 0.3, atol=1e-6)  # b = 1.5 * 0.2
    assert torch.allclose(colour(x, contrast_on=0.0, contrast=2.0), x * 2, atol=1e-6)  # c = 2 ** (2 * 0.5)
    grey_mean = x.mean(1, keepdim=True)
    assert torch.allclose(colour(x, luma_on=0.0, luma=0.5), x - 2 * grey_mean, atol=1e-6)  # mirror the grey axis
    C = ada.colour_matrices(quiet_draws(bright_on=0.0, bright=1.5, contrast_on=0.0, contrast=2.0), 1.0)[0]
    expected = torch.tensor([[2, 0, 0, 0.6], [0, 2, 0, 0.6], [0, 0, 2, 0.6], [0, 0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(C, expected)  # brightness first, then contrast scales it


def test_saturation_matrix():
    C = ada.colour_matrices(quiet_draws(sat_on=0.0, sat=1.0), 1.0)[0]  # s = 2 ** 1
    third = 1 / 3
    rgb = torch.full((3, 3), third - 2 * third, dtype=torch.float64) + torch.eye(3, dtype=torch.float64) * 2
    assert torch.allclose(C[:3, :3], rgb) and torch.allclose(C[:3, 3], torch.zeros(3, dtype=torch.float64))
    x = image()
    m = x.mean(1, keepdim=True)
    assert torch.allclose(colour(x, sat_on=0.0, sat=1.0), m + 2 * (x - m), atol=1e-6)


def test_hue_rotation_by_a_third_turn_cycles_the_channels():
    x = image()
    out = colour(x, hue_on=0.0, hue=5 / 6)  # theta = (5/3 - 1) pi = 2 pi / 3 about (1, 1, 1)
    assert torch.allclose(out, x[:, [2, 0, 1]], atol=1e-5)
    grey = torch.full((1, 3, 2, 2), 0.4)
    assert torch.allclose(colour(grey, hue_on=0.0, hue=0.9), grey, atol=1e-6)


def test_colour_on_one_channel_averages_the_rows():
    x = image(c=1)
    assert torch.allclose(colour(x, bright_on=0.0, bright=1.5), x + 0.3, atol=1e-6)
    assert torch.allclose(colour(x, contrast_on=0.0, contrast=2.0), x * 2, atol=1e-6)
    assert torch.allclose(colour(x, sat_on=0.0, sat=1.0), x, atol=1e-6)  # grey images have no saturation


# ---------------------------------------------------------------- the pipeline
@pytest.mark.parametrize("name", ["ada", "diffaugment"])
def test_p_zero_is_the_identity(name):
    x = torch.randn(4, 3, 8, 8)
    assert AUGMENTS[name](x, 0.0, 0, 40, 3, 0) is x
    assert AUGMENTS["none"](x, 0.7, 0, 40, 3, 0) is x


def test_samples_that_draw_nothing_pass_through_exactly():
    x = torch.randn(64, 3, 8, 8)
    out = ada.ada_augment(x, 0.02, 0, 40, 0, 0)
    same = (out == x).flatten(1).all(1)
    assert 0 < same.sum() < 64  # most samples fire nothing at p = 0.02 (~ 1 - 12 * 0.02), some do
    changed = ~same
    assert (out[changed] - x[changed]).abs().amax() > 1e-3


@pytest.mark.parametrize("name", ["ada", "diffaugment"])
def test_augmentation_is_differentiable(name):
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: AUGMENTS[name](t, 1.0, 0, 40, 1, 0), (x,))
    # R1 through the augmentation: the input gradient has a graph to D's weights
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    logits = torch.nn.functional.conv2d(AUGMENTS[name](x, 1.0, 0, 40, 1, 0), w).tanh().sum()
    (g,) = torch.autograd.grad(logits, x, create_graph=True)
    g.square().sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ada", "diffaugment"])
def test_draws_are_world_size_invariant_and_resumable(name):
    aug = AUGMENTS[name]
    x = torch.randn(8, 3, 16, 16)
    whole = aug(x, 0.8, 5, 40, 7, 0)
    halves = torch.cat([aug(x[:4], 0.8, 5, 40, 7, 0), aug(x[4:], 0.8, 5, 40, 7, 4)])
    assert torch.allclose(whole, halves, atol=1e-6)
    assert torch.allclose(aug(x[2:5], 0.8, 5, 40, 7, 2), whole[2:5], atol=1e-6)  # a micro-batch
    assert torch.equal(aug(x, 0.8, 5, 40, 7, 0), whole)  # a resumed run redraws the same
    assert not torch.allclose(aug(x, 0.8, 5, 40, 8, 0), whole)  # the next counter draws anew
    assert not torch.allclose(aug(x, 0.8, 5, 41, 7, 0), whole)  # another stream too


def test_keeps_dtype_and_runs_in_fp32_under_autocast():
    x = torch.randn(4, 3, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ada.ada_augment(x, 1.0, 0, 40, 0, 0).dtype == torch.bfloat16


# ---------------------------------------------------------------- DiffAugment by hand
def test_diffaugment_ops_by_hand():
    x = image(n=2, h=8, w=8)
    shifted = da._shift(x, torch.tensor([1, 0]), torch.tensor([0, -2]))
    assert torch.equal(shifted[0, :, 1:], x[0, :, :-1]) and shifted[0, :, 0].abs().sum() == 0
    assert torch.equal(shifted[1, :, :, :-2], x[1, :, :, 2:]) and shifted[1, :, :, -2:].abs().sum() == 0
    mask = da._cutout_mask(torch.tensor([4, 0]), torch.tensor([4, 0]), 8, 8, (4, 4), "cpu")
    assert mask[0, 0, 2:6, 2:6].sum() == 0 and mask[0].sum() == 64 - 16
    assert mask[1, 0, :2, :2].sum() == 0 and mask[1].sum() == 64 - 4  # clipped at the corner
    d = da.draw(0, 40, 0, 0, 2)
    out = da.diffaugment(x, 1.0, 0, 40, 0, 0)
    b = (d["bright"] - 0.5)[:, None, None, None]
    y = x + b
    m = y.mean(1, keepdim=True)
    y = (y - m) * (d["sat"] * 2)[:, None, None, None] + m
    m = y.mean((1, 2, 3), keepdim=True)
    y = (y - m) * (d["contrast"] + 0.5)[:, None, None, None] + m
    sy = 1  # int(8 / 8 + 0.5)
    dy = (d["shift_y"] * 3).long() - sy
    dx = (d["shift_x"] * 3).long() - sy
    y = da._shift(y, dy, dx)
    cy, cx = (d["cut_y"] * 9).long(), (d["cut_x"] * 9).long()  # 8 + (1 - 4 % 2) centres
    y = y * da._cutout_mask(cy, cx, 8, 8, (4, 4), "cpu")
    assert torch.allclose(out, y, atol=1e-6)


# ---------------------------------------------------------------- AdaptiveP
def test_adaptive_p_moves_by_images_over_kimg():
    a = AdaptiveP(target=0.6, interval=4, kimg=500)
    for k in range(3):
        a.observe(torch.tensor([1.0] * 7 + [-1.0]))  # rt = 0.75 > 0.6
        assert not a.step(k) and a.p == 0.0
    a.observe(torch.tensor([1.0] * 7 + [-1.0]))
    assert a.step(3)
    assert a.rt == pytest.approx(0.75) and a.p == pytest.approx(4 * 8 / 500_000)
    for k in range(4, 8):
        a.observe(torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0]))  # rt = 0 < 0.6
        a.step(k)
    assert a.rt == 0.0 and a.p == 0.0  # down by the same amount
    a.step(11)
    assert a.p == 0.0  # never below 0
    assert a.scalars() == {"aug/p": 0.0, "aug/rt": 0.0}
    top = AdaptiveP(interval=1, kimg=0.001, p=0.99)
    top.observe(torch.ones(8))
    top.step(0)
    assert top.p == 1.0


def test_adaptive_p_resumes_mid_interval():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(8, generator=g) + 1.0 for _ in range(10)]
    straight = AdaptiveP(interval=4, kimg=0.1)
    for k, lg in enumerate(logits):
        straight.observe(lg)
        straight.step(k)
    first = AdaptiveP(interval=4, kimg=0.1)
    for k, lg in enumerate(logits[:6]):
        first.observe(lg)
        first.step(k)
    resumed = AdaptiveP(interval=4, kimg=0.1)
    resumed.load_state_dict(first.state_dict())
    for k, lg in enumerate(logits[6:], start=6):
        resumed.observe(lg)
        resumed.step(k)
    assert resumed.p == straight.p > 0 and resumed.rt == straight.rt


def _adaptive_p_on_rank(logits_all):
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    a = AdaptiveP(interval=2, kimg=0.05)
    trace = []
    for k, lg in enumerate(logits_all):
        n = lg.shape[0] // world
        a.observe(lg[rank * n:(rank + 1) * n])
        a.step(k)
        trace.append((a.p, None if math.isnan(a.rt) else a.rt))
    return trace


def test_adaptive_p_is_all_reduced_across_ranks():
    # rank 0's half is all positive, rank 1's mostly negative: alone, rank 1 would lower p while the global
    # rt (0.75, then 0) raises it twice and lowers it once
    second = [torch.tensor([1.0, 1.0, 1.0, -1.0])] * 4 + [-torch.ones(4)] * 2
    logits = [torch.cat([torch.ones(4), half]) for half in second]
    ranks = gloo.run(_adaptive_p_on_rank, 2, logits)
    single = _adaptive_p_on_rank(logits)
    assert ranks[0] == ranks[1]
    assert [p for p, _ in ranks[0]] == [p for p, _ in single]
    assert [p for p, _ in single] == pytest.approx([0, 0.32, 0.32, 0.64, 0.64, 0.32])
