"""R1 / R2 at every D step (``train.r1_interval=1``) as part of D main's loss, as R3GAN's
``AccumulateDiscriminatorGradients`` (and StyleGAN2-ADA's "Dboth") do: one D forward on the reals and on the
fakes, adversarial loss + γ1/2 E||∇D(x)||² + γ2/2 E||∇D(G(z))||², one backward, one optimizer update.

Checked here: D's gradient against a hand-written torch.autograd reference (float64), accumulation,
one update per D step (no D reg phase) while interval 2 keeps the lazy one, no lazy Adam correction at
interval 1, fp32 penalties under bf16, the non-finite guard, and 2 gloo workers x B/2 == 1 worker x B on a
tiny model=r3gan through DDP (double backward through the DDP wrapper)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distgan.config import LossConfig, TrainConfig
from distgan.losses import build_loss
from distgan.step import GANStep, StepContext, Trainable


class RecordingSGD(torch.optim.SGD):
    """SGD (lr 0 unless given) that keeps a copy of the gradients of every step."""

    def __init__(self, params, lr: float = 0.0):
        super().__init__(params, lr=lr)
        self.record: list[list[torch.Tensor | None]] = []

    def step(self, closure=None):
        self.record.append([p.grad.detach().clone() if p.grad is not None else None
                            for g in self.param_groups for p in g["params"]])
        return super().step(closure)


class SmoothD(nn.Module):
    """(N, 1, 8, 8) -> (N,), tanh: a non-zero second derivative, so the double backward matters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.out = nn.Linear(3 * 64, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.conv(x)).flatten(1)).squeeze(1)


class SmoothG(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 64)

    def forward(self, z):
        return torch.tanh(self.fc(z)).view(-1, 1, 8, 8)


def _step(dtype=torch.float64, opt_d=None, guard=None, **train) -> GANStep:
    torch.manual_seed(0)
    G, D = SmoothG().to(dtype), SmoothD().to(dtype)
    t = TrainConfig(**{"batch_size": 4, "r1_gamma": 0.6, "r2_gamma": 0.8, "r1_interval": 1, **train})
    ctx = StepContext(torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False), 4)
    opt_d = opt_d(D.parameters()) if opt_d else RecordingSGD(D.parameters())
    return GANStep(Trainable(G, RecordingSGD(G.parameters())), Trainable(D, opt_d),
                   build_loss(LossConfig(name="rpgan")), t, ctx, guard=guard)


def _sq_grad(D, x):
    """E_i ||∇_x D(x)_i||², with a graph (R3GAN's ZeroCenteredGradientPenalty, then the batch mean)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return g.square().sum([1, 2, 3]).mean()


def _reference(D, real, fake, g1, g2):
    """R3GAN's D loss, by hand: mean softplus(D(f) - D(x)) + γ1/2 R1 + γ2/2 R2; and its gradient."""
    adv = F.softplus(D(fake) - D(real)).mean()
    r1, r2 = g1 / 2 * _sq_grad(D, real), g2 / 2 * _sq_grad(D, fake)
    grads = torch.autograd.grad(adv + r1 + r2, list(D.parameters()))
    return adv, r1, r2, grads


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1,
            torch.randn(n, 4, generator=g, dtype=torch.float64))


def test_fused_gradient_equals_the_hand_written_reference():
    gan = _step()
    real, z = _data()
    stats = gan.d_main(real, None, z, None, penalize=True)
    assert len(gan.opt_d.record) == 1  # one update
    adv, r1, r2, want = _reference(gan.D, real, gan.G(z).detach(), 0.6, 0.8)  # lr 0: D did not move
    got = gan.opt_d.record[0]
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() < 1e-6 * max(1.0, w.abs().max().item())
    # loss/D is the adversarial part alone (the step takes the loss of fp32 logits: not float64-exact)
    assert abs(stats.loss_d.item() - adv.item()) < 1e-6
    assert abs(stats.r1.item() - r1.item()) < 1e-12 and abs(stats.r2.item() - r2.item()) < 1e-12
    # without the penalties the gradient differs: they are really in it
    fake = gan.G(z).detach()
    plain = torch.autograd.grad(F.softplus(gan.D(fake) - gan.D(real)).mean(), list(gan.D.parameters()))
    assert max((g - p).abs().max().item() for g, p in zip(got, plain)) > 1e-4


def test_r1_alone_and_r2_alone():
    for g1, g2 in ((0.6, 0.0), (0.0, 0.8)):
        gan = _step(r1_gamma=g1, r2_gamma=g2)
        real, z = _data()
        stats = gan.d_main(real, None, z, None, penalize=True)
        _, _, _, want = _reference(gan.D, real, gan.G(z).detach(), g1, g2)
        assert max((g - w).abs().max().item() for g, w in zip(gan.opt_d.record[0], want)) < 1e-6
        assert (stats.r1 is None) == (g1 == 0) and (stats.r2 is None) == (g2 == 0)


def test_accumulated_fused_step_equals_the_whole_batch():
    whole, micro = _step(), _step(batch_per_gpu=2)
    real, z = _data()
    a = whole.d_main(real, None, z, None, penalize=True)
    b = micro.d_main(real, None, z, None, penalize=True)
    assert len(micro.opt_d.record) == 1
    for g, w in zip(micro.opt_d.record[0], whole.opt_d.record[0]):
        assert (g - w).abs().max().item() < 1e-12
    for x, y in ((a.loss_d, b.loss_d), (a.r1, b.r1), (a.r2, b.r2)):
        assert abs(x.item() - y.item()) < 1e-12


def _count_phases(gan: GANStep, steps: int) -> list[int]:
    """D optimizer updates per generator step (n_critic = 1), and whether the D reg phase ran."""
    calls = []
    orig = gan.d_reg
    gan.d_reg = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    real = torch.rand(4, 1, 8, 8) * 2 - 1
    counts = []
    for step in range(steps):
        before = len(gan.opt_d.record)
        stats = gan.train_step(step, lambda counter: (real, None))
        counts.append(len(gan.opt_d.record) - before)
        assert stats.r1 is not None or not gan.fused_reg
    return counts, len(calls)


def test_interval_one_is_one_update_per_d_step_and_interval_two_stays_lazy():
    fused = _step(dtype=torch.float32)
    assert fused.fused_reg
    counts, reg_calls = _count_phases(fused, 3)
    assert counts == [1, 1, 1] and reg_calls == 0
    lazy = _step(dtype=torch.float32, r1_interval=2)
    assert not lazy.fused_reg
    counts, reg_calls = _count_phases(lazy, 3)
    assert counts == [2, 1, 2] and reg_calls == 2  # D main, then D reg on counters 0 and 2


def test_no_lazy_adam_correction_at_interval_one():
    from distgan.optim import build_optimizers, corrections

    D, G = nn.Linear(2, 1), nn.Linear(2, 2)
    for lazy_always in (False, True):
        t = TrainConfig(lr_d=1e-3, beta1=0.0, beta2=0.99, r1_gamma=1.0, r2_gamma=1.0, r1_interval=1)
        assert corrections(t, lazy_always)[1] == 1.0
        _, opt_d = build_optimizers(G, D, t, lazy_always)
        assert opt_d.param_groups[0]["lr"] == 1e-3 and opt_d.param_groups[0]["betas"] == (0.0, 0.99)
        t16 = TrainConfig(lr_d=1e-3, r1_gamma=1.0, r1_interval=16)  # lazy: unchanged
        assert corrections(t16, lazy_always)[1] == 16 / 17
    # no penalty at interval 1: nothing is fused; a style model keeps NVIDIA's lazy correction
    assert corrections(TrainConfig(r1_interval=1), True)[1] == 0.5
    assert corrections(TrainConfig(r1_interval=1), False)[1] == 1.0


def test_fused_penalties_run_in_fp32_under_bf16():
    gan = _step(dtype=torch.float32, precision="bf16")
    seen = {"D": [], "G": []}
    gan.D.register_forward_hook(lambda m, i, out: seen["D"].append((i[0].dtype, out.dtype)))
    gan.G.register_forward_hook(lambda m, i, out: seen["G"].append(out.dtype))
    real = torch.rand(4, 1, 8, 8) * 2 - 1
    z = torch.randn(4, 4)
    stats = gan.d_main(real, None, z, None, penalize=True)
    assert seen["G"] == [torch.bfloat16]  # G's fakes follow train.precision
    assert seen["D"] == [(torch.float32, torch.float32)] * 2  # D's one fused pass: fp32 in and out
    assert all(torch.isfinite(v) for v in (stats.loss_d, stats.r1, stats.r2))
    out = gan.train_step(0, lambda counter: (real, None))
    assert torch.bfloat16 in [o for _, o in seen["D"]]  # the G phase still scores fakes in bf16
    assert all(torch.isfinite(v) for v in (out.loss_g, out.r1, out.r2))


def test_a_non_finite_penalty_is_skipped_or_raised():
    from distgan.nonfinite import NonFiniteError, NonFiniteGuard

    guard = NonFiniteGuard(skip=True, where=lambda: "step 0")
    gan = _step(opt_d=lambda p: RecordingSGD(p, lr=0.1), guard=guard)
    gan.gammas = (float("inf"), 0.8)
    before = [p.detach().clone() for p in gan.D.parameters()]
    real, z = _data()
    stats = gan.d_main(real, None, z, None, penalize=True)
    assert guard.skipped == 1 and all(torch.equal(a, b) for a, b in zip(before, gan.D.parameters()))
    assert torch.isfinite(stats.loss_d) and not torch.isfinite(stats.r1)
    strict = _step(guard=NonFiniteGuard(skip=False, where=lambda: "step 0"))
    strict.gammas = (float("nan"), 0.8)
    with pytest.raises(NonFiniteError, match="non-finite D gradient"):
        strict.d_main(real, None, z, None, penalize=True)


# ------------------------------------------------------------------- DDP: 2 gloo workers x B/2
def _r3gan_steps(batch_per_gpu=None) -> dict:
    from distgan import dist
    from distgan.config import ModelConfig
    from distgan.data import ShardedSampler
    from distgan.models import build_models
    from tests.test_algorithms_ddp import toy_data

    data = toy_data(size=32)
    m = ModelConfig(name="r3gan", latent_dim=8, widths=[8, 8, 4, 4], cardinalities=[2, 2, 2, 1],
                    blocks=[1, 1, 1, 1], expansion=2, norm_g="none", norm_d="none", conditional=True)
    t = TrainConfig(batch_size=8, seed=4, lr_g=1e-2, lr_d=1e-2, r1_gamma=1.0, r2_gamma=2.0, r1_interval=1,
                    batch_per_gpu=batch_per_gpu)
    torch.manual_seed(4)
    G, D = build_models(m, data.shape, data.num_classes)
    for p in D.parameters():  # leave R3GAN's zero-init identity: every layer in the penalties' gradient
        p.data.add_(torch.randn_like(p) * 0.05)
    cpu = torch.device("cpu")
    opt_g, opt_d = RecordingSGD(G.parameters(), lr=t.lr_g), RecordingSGD(D.parameters(), lr=t.lr_d)
    gan = GANStep(Trainable(dist.wrap(G, cpu), opt_g), Trainable(dist.wrap(D, cpu), opt_d),
                  build_loss(LossConfig(name="rpgan")), t, StepContext(cpu, torch.amp.GradScaler("cpu", enabled=False),
                                                                       8, data.num_classes))
    assert gan.fused_reg
    sampler = ShardedSampler(len(data), t.batch_size, dist.rank(), dist.world_size(), t.seed)

    def real_batch(counter):
        idx = sampler.indices(counter)
        return data.batch(idx, cpu), data.batch_labels(idx, cpu)

    r1 = [gan.train_step(step, real_batch).r1 for step in range(2)]
    flat = [torch.cat([g.flatten() for g in rec if g is not None]) for rec in opt_d.record]
    return {"grads_d": flat, "r1": [float(x) for x in r1],
            "weights": {k: v.clone() for k, v in D.state_dict().items()}}


def test_two_gloo_workers_take_the_fused_step_of_one():
    from distgan.testing import gloo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _r3gan_steps()
    finally:
        torch.set_num_threads(threads)
    two = gloo.run(_r3gan_steps, 2, 2, timeout=240)  # 2 workers x 4, in micro-batches of 2
    assert len(one["grads_d"]) == len(two[0]["grads_d"]) == 2  # one D update per step
    for g1, g2 in zip(one["grads_d"], two[0]["grads_d"]):
        assert g1.abs().max() > 0
        assert (g1 - g2).abs().max().item() <= 1e-5 * max(1.0, g1.abs().max().item())
    for k, w in one["weights"].items():
        assert torch.equal(two[0]["weights"][k], two[1]["weights"][k]), k  # the ranks agree bit for bit
        assert (w - two[0]["weights"][k]).abs().max().item() <= 1e-5 * max(1.0, w.abs().max().item()), k
    # each rank reports its own shard's penalty; their mean is the global one
    for i, p in enumerate(one["r1"]):
        assert abs(p - (two[0]["r1"][i] + two[1]["r1"][i]) / 2) <= 1e-5 * max(1.0, abs(p))
