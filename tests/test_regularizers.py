"""Path-length penalty (hand-computed on a linear synthesis; pl_mean all-reduced), R1/R2 and the rpgan loss
(against the formula and against finite differences, float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distgan.config import LossConfig
from distgan.losses import build_loss
from distgan.regularizers import PathLengthPenalty, path_length_noise, r1_penalty, r2_penalty
from distgan.testing import gloo

torch.set_num_threads(1)
N, L, WD, SHAPE = 4, 3, 5, (2, 3, 3)  # batch, num_ws, w_dim, image
RPGAN = build_loss(LossConfig(name="rpgan"))  # the registry's loss
rpgan_d_loss, rpgan_g_loss = RPGAN.d_loss, RPGAN.g_loss


def rpgan_d_penalty(real_logits, real, fake_logits, fake, gamma):
    """R3GAN's gamma / 2 (R1 + R2), as the D reg phase applies it with r1_gamma = r2_gamma = gamma."""
    return gamma / 2 * r1_penalty(real_logits, real) + gamma / 2 * r2_penalty(fake_logits, fake)


def linear_synthesis(ws: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """img = A applied to the flattened w's: its Jacobian is A for every w."""
    return (ws.flatten(1) @ A).reshape(ws.shape[0], *SHAPE)


def test_path_length_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(L * WD, math.prod(SHAPE), generator=g, dtype=torch.float64)
    ws = torch.randn(N, L, WD, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(N, *SHAPE, generator=g, dtype=torch.float64)
    pl = PathLengthPenalty(decay=0.01, weight=2.0)
    loss = pl(linear_synthesis(ws, A), ws, y)
    grad = (y.flatten(1) @ A.t()).reshape(N, L, WD)  # d sum(img * y) / d ws = A^T y
    lengths = grad.square().sum(2).mean(1).sqrt()
    assert loss.item() == pytest.approx(float(2 * lengths.square().mean()), rel=1e-10)  # pl_mean starts at 0
    assert float(pl.pl_mean) == 0.0  # until the flush
    pl.flush()
    mean = 0.01 * lengths.mean()
    assert float(pl.pl_mean) == pytest.approx(float(mean), rel=1e-12)
    loss2 = pl(linear_synthesis(ws, A), ws, 2 * y)  # lengths double; pl_mean moves 1 % of the way
    assert loss2.item() == pytest.approx(float(2 * (2 * lengths - mean).square().mean()), rel=1e-10)
    pl.flush()
    mean2 = mean + 0.01 * (2 * lengths.mean() - mean)
    assert float(pl.pl_mean) == pytest.approx(float(mean2), rel=1e-12)
    pl.flush()  # nothing accumulated: nothing moves
    assert float(pl.pl_mean) == pytest.approx(float(mean2), rel=1e-12)
    restored = PathLengthPenalty()
    restored.load_state_dict(pl.state_dict())
    assert float(restored.pl_mean) == float(pl.pl_mean)


def test_path_length_gradient_against_finite_differences():
    """pl_mean is a constant within a step: the loss is a plain function of the synthesis weights."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(L * WD, math.prod(SHAPE), generator=g, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(N, L, WD, generator=g, dtype=torch.float64)
    y = torch.randn(N, *SHAPE, generator=g, dtype=torch.float64)

    def loss(A):
        pl = PathLengthPenalty()
        pl.load_state_dict({"pl_mean": 0.7})  # the penalty uses pl_mean as a constant
        w = ws.clone().requires_grad_(True)
        return pl(torch.tanh(linear_synthesis(w, A)), w, y)  # tanh: J depends on w and A

    assert torch.autograd.gradcheck(loss, (A,))


def test_path_length_noise_scale_and_invariance():
    noise = path_length_noise((3, 16, 16), 0, 50, 2, 0, 32)
    assert noise.shape == (32, 3, 16, 16) and abs(noise.std().item() * 16 - 1) < 0.02
    assert torch.equal(path_length_noise((3, 16, 16), 0, 50, 2, 8, 8), noise[8:16])


def _pl_on_rank(A, ws_all, y_all, micro=1):
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n = ws_all.shape[0] // world
    A = A.clone().requires_grad_(True)
    pl = PathLengthPenalty()
    means, grads = [], []
    for step in range(3):
        grad = torch.zeros_like(A)
        for k in range(micro):  # gradient accumulation: the local batch in `micro` pieces
            rows = slice(rank * n + k * n // micro, rank * n + (k + 1) * n // micro)
            ws = ws_all[rows].clone().requires_grad_(True) * (1 + step)
            loss = pl(torch.tanh(linear_synthesis(ws, A)), ws, y_all[rows]) / micro
            grad += torch.autograd.grad(loss, A)[0]
        pl.flush()
        means.append(float(pl.pl_mean))
        grads.append(grad)
    return means, grads


def test_pl_mean_is_all_reduced_and_the_gradient_world_size_invariant():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(L * WD, math.prod(SHAPE), generator=g, dtype=torch.float64)
    ws = torch.randn(N, L, WD, generator=g, dtype=torch.float64)
    ws[2:] *= 3  # rank 1's local lengths differ from rank 0's
    y = torch.randn(N, *SHAPE, generator=g, dtype=torch.float64)
    (m0, g0), (m1, g1) = gloo.run(_pl_on_rank, 2, A, ws, y)
    single_means, single_grads = _pl_on_rank(A, ws, y)
    micro_means, micro_grads = _pl_on_rank(A, ws, y, 2)  # 1 worker x 2 micro-batches
    assert m0 == m1
    assert m0 == pytest.approx(single_means, rel=1e-12) and micro_means == pytest.approx(single_means, rel=1e-12)
    for a, b, s, m in zip(g0, g1, single_grads, micro_grads):  # DDP averages the ranks' gradients
        assert torch.allclose((a + b) / 2, s, rtol=1e-10, atol=1e-12)
        assert torch.allclose(m, s, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- R1, R2, rpgan
class TinyD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w1 = torch.nn.Parameter(torch.randn(6, 4, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(x @ self.w1) @ self.w2


def test_r1_and_r2_against_the_formula():
    D = TinyD()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    h = torch.tanh(x @ D.w1)
    grad = ((1 - h.square()) * D.w2) @ D.w1.t()  # d D(x) / dx by hand
    expected = grad.square().sum(1).mean().detach()
    assert r1_penalty(D(x), x).detach().item() == pytest.approx(float(expected), rel=1e-12)
    assert r2_penalty(D(x), x).detach().item() == pytest.approx(float(expected), rel=1e-12)


def test_rpgan_losses_against_the_formula():
    real = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    fake = torch.tensor([1.0, 0.0, -3.0], dtype=torch.float64)
    d = sum(math.log1p(math.exp(-(r - f))) for r, f in zip(real.tolist(), fake.tolist())) / 3
    g = sum(math.log1p(math.exp(-(f - r))) for r, f in zip(real.tolist(), fake.tolist())) / 3
    assert float(rpgan_d_loss(real, fake)) == pytest.approx(d, rel=1e-12)
    assert float(rpgan_g_loss(fake, real)) == pytest.approx(g, rel=1e-12)
    assert RPGAN.g_needs_real and RPGAN.fakes_penalty and not RPGAN.needs_gradient_penalty
    with pytest.raises(ValueError):
        RPGAN.g_loss(fake)  # the G loss pairs fakes with reals: it cannot run without them
    # pairing: swapping fakes between samples changes the loss (not a sum of separate real and fake terms)
    assert float(rpgan_d_loss(real, fake.flip(0))) != pytest.approx(d)


def test_rpgan_d_loss_with_penalties_against_finite_differences():
    real = torch.randn(4, 6, dtype=torch.float64)
    fake = torch.randn(4, 6, dtype=torch.float64)

    def d_loss(w1, w2):
        xr, xf = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
        lr, lf = torch.tanh(xr @ w1) @ w2, torch.tanh(xf @ w1) @ w2  # TinyD as a function of its weights
        return rpgan_d_loss(lr, lf) + rpgan_d_penalty(lr, xr, lf, xf, gamma=0.8)

    D = TinyD()
    w1, w2 = D.w1.detach().clone().requires_grad_(True), D.w2.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(d_loss, (w1, w2))
    # gamma / 2 (R1 + R2) by hand at these weights
    xr, xf = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
    lr, lf = torch.tanh(xr @ w1) @ w2, torch.tanh(xf @ w1) @ w2
    penalty = rpgan_d_penalty(lr, xr, lf, xf, gamma=0.8)
    by_hand = 0.4 * (r1_penalty(lr, xr) + r2_penalty(lf, xf))
    assert penalty.detach().item() == pytest.approx(by_hand.detach().item(), rel=1e-12)


def test_rpgan_g_loss_gradient_against_finite_differences():
    D = TinyD().requires_grad_(False)
    real_logits = D(torch.randn(4, 6, dtype=torch.float64))
    z = torch.randn(4, 3, dtype=torch.float64)
    W = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda W: rpgan_g_loss(D(F.silu(z @ W)), real_logits), (W,))
