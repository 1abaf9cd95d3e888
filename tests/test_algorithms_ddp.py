"""Every loss and regulariser under DDP: 2 gloo workers x B/2 take the same steps as 1 worker x B.

One spawn of 2 processes runs every variant through the real phase code (``GANStep.train_step``: data
shard, world-size-invariant z / labels / WGAN-GP alphas, D phases, lazy R1, G phase) and is compared
with the same variants in this process. SGD, not Adam, so the updated weights show the gradients'
size too (Adam's first step is lr * sign(g) and would hide a wrongly averaged gradient). Every
optimizer step's gradients are recorded and compared, as are the final weights and buffers.

Spectral norm: the power-iteration vector ``u`` is a buffer updated in place by every training-mode
forward, from W alone (not from the data). The ranks see the same W and run the same number of
forwards, so ``u`` stays identical across ranks and across world sizes, and the gradients match: the
test compares the ``_u``/``_v`` buffers like any weight.
"""

from __future__ import annotations

import time

import pytest
import torch

from distgan import dist
from distgan.config import LossConfig, ModelConfig, TrainConfig
from distgan.data import MemoryDataset, ShardedSampler
from distgan.losses import build_loss
from distgan.models import build_models
from distgan.step import GANStep, StepContext, Trainable
from distgan.testing import gloo

GLOBAL_BATCH, STEPS, SEED = 8, 3, 11
# name -> (model settings, loss, train settings); every model is BN-free (BatchNorm's batch statistics
# are per shard by design, so no world-size identity holds for it)
VARIANTS = {
    "bce": (dict(name="mlp"), "bce", {}),
    "hinge": (dict(name="mlp"), "hinge", {}),
    "lsgan": (dict(name="mlp"), "lsgan", {}),
    "wgan_gp": (dict(name="mlp"), "wgan_gp", dict(n_critic=2)),
    "r1": (dict(name="mlp"), "bce", dict(r1_gamma=2.0, r1_interval=2, n_critic=2)),
    "spectral_norm": (dict(name="dcgan", spectral_norm=True), "hinge", {}),
    "conditional": (dict(name="mlp", conditional=True), "bce", {}),
    # bce: its gradient is never exactly zero (a saturated hinge can be, which would hide a mismatch)
    "resnet_sn_conditional_r1": (dict(name="resnet", width=4, spectral_norm=True, conditional=True), "bce",
                                 dict(r1_gamma=1.0, r1_interval=1, lr_g=1e-3, lr_d=1e-3)),
    "conditional_wgan_gp": (dict(name="dcgan", conditional=True), "wgan_gp", {}),
}


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the (all-reduced) gradients of every step."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr)
        self.record: list[torch.Tensor] = []

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        self.record.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                      for p in params]).clone())
        return super().step(closure)


def toy_data(n: int = 64, size: int = 28) -> MemoryDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return MemoryDataset(x, torch.randint(0, 10, (n,), generator=g), 10)


def run_variant(model: dict, loss: str, train: dict) -> dict:
    """STEPS generator steps of one variant on this process's rank; returns gradients and weights."""
    data = toy_data()
    cfg = ModelConfig(**{"width": 2, "latent_dim": 8, "norm_g": "none", "norm_d": "none", **model})
    t = TrainConfig(**{"batch_size": GLOBAL_BATCH, "seed": SEED, "lr_g": 0.05, "lr_d": 0.05, **train})
    num_classes = data.num_classes if cfg.conditional else 0
    torch.manual_seed(SEED)
    G, D = build_models(cfg, data.shape, num_classes)
    G_ddp, D_ddp = dist.wrap(G, torch.device("cpu")), dist.wrap(D, torch.device("cpu"))
    opt_g, opt_d = RecordingSGD(G.parameters(), lr=t.lr_g), RecordingSGD(D.parameters(), lr=t.lr_d)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gan = GANStep(Trainable(G_ddp, opt_g), Trainable(D_ddp, opt_d), build_loss(LossConfig(name=loss)), t,
                  StepContext(torch.device("cpu"), scaler, cfg.latent_dim, num_classes))
    sampler = ShardedSampler(len(data), GLOBAL_BATCH, dist.rank(), dist.world_size(), SEED)

    def real_batch(counter):
        idx = sampler.indices(counter)
        return data.batch(idx, torch.device("cpu")), data.batch_labels(idx, torch.device("cpu"))

    init = {f"D.{k}": v.clone() for k, v in D.state_dict().items()}
    for step in range(STEPS):
        gan.train_step(step, real_batch)
    weights = {f"G.{k}": v.clone() for k, v in G.state_dict().items()}
    weights.update({f"D.{k}": v.clone() for k, v in D.state_dict().items()})
    return {"grads_d": opt_d.record, "grads_g": opt_g.record, "weights": weights, "init_d": init}


def run_all() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: run_variant(*spec) for name, spec in VARIANTS.items()}
    finally:
        torch.set_num_threads(threads)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> float:
    """Largest difference, relative to the size of the values when they exceed 1."""
    return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))


@pytest.fixture(scope="module")
def runs():
    start = time.perf_counter()
    one = run_all()
    two = gloo.run(run_all, 2, timeout=240)
    return one, two, time.perf_counter() - start


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_two_workers_match_one_worker(runs, variant):
    one, (rank0, _), _ = runs
    single, r0 = one[variant], rank0[variant]
    t = VARIANTS[variant][2]
    n_critic = t.get("n_critic", 1)
    # lazy R1 is a separate update; at r1_interval=1 it is part of D main's (tests/test_fused_penalty.py)
    lazy = t.get("r1_gamma") and t.get("r1_interval", 1) > 1
    r1_steps = sum(1 for c in range(STEPS * n_critic) if c % t["r1_interval"] == 0) if lazy else 0
    assert len(single["grads_d"]) == len(r0["grads_d"]) == STEPS * n_critic + r1_steps
    assert len(single["grads_g"]) == len(r0["grads_g"]) == STEPS
    for kind in ("grads_d", "grads_g"):
        for i, (g1, g2) in enumerate(zip(single[kind], r0[kind])):
            assert g1.abs().max() > 0, f"{kind}[{i}] is all zeros: the phase trained nothing"
            assert _close(g1, g2) < 1e-5, f"{variant}: {kind}[{i}] differs between 1 and 2 workers"
    for key, w in single["weights"].items():
        assert _close(w, r0["weights"][key]) < 1e-5, f"{variant}: {key} differs between 1 and 2 workers"
    moved = max(float((single["weights"][k] - v).abs().max()) for k, v in single["init_d"].items())
    assert moved > 1e-4, "D did not train"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ranks_stay_identical(runs, variant):
    _, (rank0, rank1), _ = runs
    for key, w in rank0[variant]["weights"].items():
        assert torch.equal(w, rank1[variant]["weights"][key]), f"{variant}: ranks disagree on {key}"


def test_spectral_norm_power_iteration_buffers_are_compared(runs):
    """The identity above covers u: it is in the compared state, and training really moved it."""
    one, _, _ = runs
    weights, init = one["spectral_norm"]["weights"], one["spectral_norm"]["init_d"]
    u_keys = [k for k in init if k.endswith("_u")]
    assert u_keys and all(k in weights for k in u_keys)
    # (a 1-row weight, like the last linear layer, has u = ±1 for ever; the conv layers' u move)
    assert any(not torch.equal(weights[k], init[k]) for k in u_keys)


def test_whole_comparison_is_fast(runs):
    assert runs[2] < 60, f"the 1- and 2-worker runs took {runs[2]:.0f} s"
