"""The GAN step's phases in one process: the D funnel's augmentation (p = 0 is the identity), rpgan with R1
and R2 in the D reg phase against the formula (values and D's gradient, float64), rpgan's G loss pairing
fakes with reals, and the regularisers in fp32 under bf16 autocast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distgan.config import LossConfig, TrainConfig
from distgan.losses import build_loss
from distgan.rng import Stream
from distgan.step import GANStep, StepContext, Trainable

torch.set_num_threads(1)


class RecordingSGD(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.record = []

    def step(self, closure=None):
        self.record.append([p.grad.detach().clone() if p.grad is not None else None
                            for g in self.param_groups for p in g["params"]])
        return super().step(closure)


class ConvD(nn.Module):
    """A small smooth conv D on (N, 1, 8, 8) images (tanh, so gradients are smooth for float64 checks)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.out = nn.Linear(3 * 64, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.conv(x)).flatten(1)).squeeze(1)


class AffineG(nn.Module):
    """z (N, 4) -> an (N, 1, 8, 8) image, smooth."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 64)

    def forward(self, z):
        return torch.tanh(self.fc(z)).view(-1, 1, 8, 8)


def _step(G_cls, D_cls, loss="bce", dtype=torch.float64, **train):
    torch.manual_seed(0)
    G, D = G_cls().to(dtype), D_cls().to(dtype)
    opt_g, opt_d = RecordingSGD(G.parameters()), RecordingSGD(D.parameters())
    t = TrainConfig(**{"batch_size": 4, **train})
    ctx = StepContext(torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False), 4)
    return GANStep(Trainable(G, opt_g), Trainable(D, opt_d), build_loss(LossConfig(name=loss)), t, ctx)


def test_augment_p_zero_is_the_identity_through_the_funnel():
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    for kind in ("ada", "diffaugment"):
        off = _step(AffineG, ConvD, augment=kind, augment_p=0.0)
        plain = off.D(x)
        assert torch.equal(off.discriminate(x, None, True, 3, 0, aug_stream=Stream.AUG_REAL), plain), kind
        on = _step(AffineG, ConvD, augment=kind, augment_p=0.8)
        assert torch.equal(on.D(x), plain)  # same weights
        seen = on.discriminate(x, None, True, 3, 0, aug_stream=Stream.AUG_REAL)
        assert not torch.allclose(seen, plain), f"{kind} at p = 0.8 changed nothing D saw"
        # the same global samples are augmented identically whatever batch they share
        halves = torch.cat([on.discriminate(x[:2], None, True, 3, 0, aug_stream=Stream.AUG_REAL),
                            on.discriminate(x[2:], None, True, 3, 2, aug_stream=Stream.AUG_REAL)])
        torch.testing.assert_close(halves, seen, rtol=1e-12, atol=1e-12)
    none = _step(AffineG, ConvD)
    assert none.augment.p == 0 and torch.equal(none.discriminate(x, None, True), none.D(x))


def _input_grad(D, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return g.flatten(1).square().sum(1).mean()


def test_rpgan_r1_r2_phase_against_the_formula():
    """D reg = interval x (γ1/2 E||∇D(x)||² + γ2/2 E||∇D(G(z))||²) on the reals and D main's fakes."""
    gan = _step(AffineG, ConvD, loss="rpgan", r1_gamma=0.6, r2_gamma=0.8, r1_interval=3)
    D = gan.D
    real = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    z = torch.randn(4, 4, dtype=torch.float64)
    stats = gan.d_main(real, None, z, None)
    fake = gan.G(z).detach()
    want_d = F.softplus(D(fake) - D(real)).mean()  # lr = 0: D did not move
    assert abs(stats.loss_d.item() - want_d.item()) < 1e-6  # the step takes losses of fp32 logits
    r1, r2 = gan.d_reg(real, None)
    assert abs(r1.item() - 0.3 * _input_grad(D, real).item()) < 1e-12
    assert abs(r2.item() - 0.4 * _input_grad(D, fake).item()) < 1e-12
    # the gradient D's optimizer got from the reg phase: interval x d(penalty)/d(params), by autograd
    penalty = 3 * (0.3 * _input_grad(D, real) + 0.4 * _input_grad(D, fake))
    want = torch.autograd.grad(penalty, list(D.parameters()), allow_unused=True)
    got = gan.opt_d.record[-1]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w if w is not None else torch.zeros_like(g), rtol=1e-10, atol=1e-12)
    # and against central finite differences of the penalty in one weight
    weight, eps = D.conv.weight, 1e-6
    old = weight.data[0, 0, 1, 1].item()
    values = []
    for v in (old + eps, old - eps):
        weight.data[0, 0, 1, 1] = v
        values.append((3 * (0.3 * _input_grad(D, real) + 0.4 * _input_grad(D, fake))).item())
    weight.data[0, 0, 1, 1] = old
    assert abs((values[0] - values[1]) / (2 * eps) - got[0][0, 0, 1, 1].item()) < 1e-6


def test_rpgan_g_loss_pairs_each_fake_with_its_real():
    gan = _step(AffineG, ConvD, loss="rpgan")
    real = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    z = torch.randn(4, 4, dtype=torch.float64)
    loss = gan.g_main(z, None, 0, real, None)
    D, fake = gan.D, gan.G(z)
    assert abs(loss.item() - F.softplus(D(real) - D(fake)).mean().item()) < 1e-6
    assert abs(loss.item() - F.softplus(D(real).flip(0) - D(fake)).mean().item()) > 1e-6  # pairs matter
    assert all(p.requires_grad for p in D.parameters())  # D unfrozen again after the G phase


def test_regularisers_run_in_fp32_under_bf16():
    from distgan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

    torch.manual_seed(0)
    G = StyleGAN2Generator(32, 1, 256, 16, 2, z_dim=8, w_dim=8)
    D = StyleGAN2Discriminator(32, 1, 256, 16, mapping_layers=2)
    # r1_interval 2: the lazy D reg phase (at interval 1 R1 is part of D main: tests/test_fused_penalty.py)
    t = TrainConfig(batch_size=4, precision="bf16", r1_gamma=1.0, r1_interval=2, pl_weight=2.0, pl_interval=1)
    gan = GANStep(Trainable(G, RecordingSGD(G.parameters())), Trainable(D, RecordingSGD(D.parameters())),
                  build_loss(LossConfig()), t,
                  StepContext(torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False), 8, style=True))
    seen = {}
    phase = {"name": None}
    D.register_forward_hook(lambda m, i, out: seen.setdefault(phase["name"], set()).add(out.dtype))
    G.synthesis.register_forward_hook(lambda m, i, out: seen.setdefault(phase["name"], set()).add(out.dtype))
    for name in ("d_main", "d_reg", "g_main", "g_reg"):  # label each phase's forwards
        method = getattr(gan, name)
        setattr(gan, name, lambda *a, _m=method, _n=name, **k: (phase.update(name=_n), _m(*a, **k))[1])
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    stats = gan.train_step(0, lambda counter: (real, None))
    assert torch.bfloat16 in seen["d_main"] and torch.bfloat16 in seen["g_main"]
    assert seen["d_reg"] == {torch.float32} and seen["g_reg"] == {torch.float32}
    assert all(torch.isfinite(v) for v in (stats.r1, stats.pl, stats.loss_g))


def test_lazy_path_length_and_r2_get_the_lazy_adam_correction():
    """G's Adam with lazy path length (every k G steps) is corrected by c = k/(k+1) like D's with lazy R1;
    R2 alone corrects D the same way; without regularisers nothing changes."""
    from distgan.optim import build_optimizers

    G, D = nn.Linear(2, 2), nn.Linear(2, 1)
    t = TrainConfig(lr_g=2e-3, lr_d=1e-3, beta1=0.0, beta2=0.99, pl_weight=2.0, pl_interval=4, r2_gamma=1.0,
                    r1_interval=16)
    opt_g, opt_d = build_optimizers(G, D, t)
    assert opt_g.param_groups[0]["lr"] == 2e-3 * 4 / 5 and opt_g.param_groups[0]["betas"] == (0.0, 0.99 ** (4 / 5))
    assert opt_d.param_groups[0]["lr"] == 1e-3 * 16 / 17 and opt_d.param_groups[0]["betas"] == (0.0, 0.99 ** (16 / 17))
    opt_g, opt_d = build_optimizers(G, D, TrainConfig(lr_g=2e-3, lr_d=1e-3, beta2=0.99))
    assert opt_g.param_groups[0]["lr"] == 2e-3 and opt_d.param_groups[0]["betas"] == (0.5, 0.99)
