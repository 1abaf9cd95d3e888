"""The four phases under DDP through the REAL ``GANStep.train_step``: StyleGAN2 with R1, path length, ADA
(p > 0 and moving) and style mixing on 2 gloo workers x B/2 takes the same steps as 1 worker x B; gradient
accumulation (``train.batch_per_gpu``) gives the un-accumulated step: 1 worker x 4 micro-batches == 2
workers x 2 == 4 workers x 1, for a BN-free MLP, for StyleGAN2 and for rpgan with R1 and R2.

As tests/test_algorithms_ddp.py: SGD that records every step's all-reduced gradients (Adam's first step
would hide a wrongly scaled gradient), compared step by step, then every weight and buffer (w_avg
included), ADA's p and the path-length mean.
"""

from __future__ import annotations

import pytest
import torch

from distgan import dist
from distgan.config import LossConfig, ModelConfig, TrainConfig
from distgan.data import ShardedSampler
from distgan.losses import build_loss
from distgan.models import build_models, spec
from distgan.step import GANStep, StepContext, Trainable
from distgan.testing import gloo
from tests.test_algorithms_ddp import RecordingSGD, _close, toy_data

STEPS, SEED = 3, 5
STYLE = dict(name="stylegan2", latent_dim=16, w_dim=16, channel_base=256, channel_max=16, mapping_layers=2,
             norm_g="none", norm_d="none")
STYLE_TRAIN = dict(r1_gamma=1.0, r1_interval=2, pl_weight=2.0, pl_interval=2, style_mixing=0.9, augment="ada",
                   augment_p=0.5, ada_kimg=0.1, ada_interval=2)
# name -> (model, loss, train, worlds it runs on); accumulation variants keep batch_per_gpu fixed, so world
# 1, 2, 4 run 4, 2, 1 micro-batches of the same global batch
VARIANTS = {
    "stylegan2": ({**STYLE, "conditional": True}, "bce", dict(batch_size=8, **STYLE_TRAIN), (1, 2)),
    "mlp_accumulated": (dict(name="mlp", width=2, latent_dim=8), "bce",
                        dict(batch_size=8, batch_per_gpu=2, r1_gamma=1.0, r1_interval=2), (1, 2, 4)),
    "stylegan2_accumulated": (STYLE, "bce", dict(batch_size=16, batch_per_gpu=4, **STYLE_TRAIN), (1, 2, 4)),
    # R3GAN: pairs, R1 + R2 in D reg, the G phase scoring reals; accumulated too
    "rpgan_conditional": (dict(name="mlp", width=2, latent_dim=8, conditional=True), "rpgan",
                          dict(batch_size=8, batch_per_gpu=2, r1_gamma=1.0, r2_gamma=2.0, r1_interval=1), (1, 2, 4)),
}


def run_variant(model: dict, loss: str, train: dict) -> dict:
    data = toy_data(size=32)
    cfg = ModelConfig(**{"norm_g": "none", "norm_d": "none", **model})
    t = TrainConfig(**{"seed": SEED, "lr_g": 0.01, "lr_d": 0.01, **train})
    num_classes = data.num_classes if cfg.conditional else 0
    torch.manual_seed(SEED)
    G, D = build_models(cfg, data.shape, num_classes)
    if spec(cfg.name).style:  # non-zero noise strengths, so the per-sample noise maps matter
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.data.fill_(0.3)
    opt_g, opt_d = RecordingSGD(G.parameters(), lr=t.lr_g), RecordingSGD(D.parameters(), lr=t.lr_d)
    cpu = torch.device("cpu")
    gan = GANStep(Trainable(dist.wrap(G, cpu), opt_g), Trainable(dist.wrap(D, cpu), opt_d),
                  build_loss(LossConfig(name=loss)), t,
                  StepContext(cpu, torch.amp.GradScaler("cpu", enabled=False), cfg.latent_dim, num_classes,
                              style=spec(cfg.name).style))
    sampler = ShardedSampler(len(data), t.batch_size, dist.rank(), dist.world_size(), SEED)

    def real_batch(counter):
        idx = sampler.indices(counter)
        return data.batch(idx, torch.device("cpu")), data.batch_labels(idx, torch.device("cpu"))

    ps = []
    for step in range(STEPS):
        gan.train_step(step, real_batch)
        ps.append(gan.augment.p)
    weights = {f"G.{k}": v.clone() for k, v in G.state_dict().items()}
    weights.update({f"D.{k}": v.clone() for k, v in D.state_dict().items()})
    return {"grads_d": opt_d.record, "grads_g": opt_g.record, "weights": weights, "p": ps,
            "pl_mean": float(gan.pl.pl_mean) if gan.pl is not None else None}


def run_all() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: run_variant(*v[:3]) for name, v in VARIANTS.items() if dist.world_size() in v[3]}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs():
    return {1: [run_all()], 2: gloo.run(run_all, 2, timeout=300), 4: gloo.run(run_all, 4, timeout=300)}


def _compare(a: dict, b: dict, what: str) -> None:
    for kind in ("grads_d", "grads_g"):
        assert len(a[kind]) == len(b[kind]), f"{what}: {kind} counts differ"
        for i, (g1, g2) in enumerate(zip(a[kind], b[kind])):
            assert g1.abs().max() > 0, f"{what}: {kind}[{i}] is all zeros: the phase trained nothing"
            assert _close(g1, g2) < 1e-5, f"{what}: {kind}[{i}] differs"
    for key, w in a["weights"].items():
        assert _close(w.float(), b["weights"][key].float()) < 1e-5, f"{what}: {key} differs"
    assert a["p"] == b["p"], f"{what}: ADA's p differs"
    if a["pl_mean"] is not None:
        assert abs(a["pl_mean"] - b["pl_mean"]) <= 1e-6 * abs(a["pl_mean"]), f"{what}: pl_mean differs"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_world_size_takes_the_same_steps(runs, variant):
    worlds = VARIANTS[variant][3]
    single = runs[1][0][variant]
    for world in worlds[1:]:
        ranks = [r[variant] for r in runs[world]]
        for r in range(1, world):  # ranks identical: the same weights, bit for bit, and the same p
            assert all(torch.equal(w, ranks[r]["weights"][k]) for k, w in ranks[0]["weights"].items()), (world, r)
            assert ranks[r]["p"] == ranks[0]["p"] and ranks[r]["pl_mean"] == ranks[0]["pl_mean"]
        _compare(single, ranks[0], f"{variant}: 1 vs {world} workers")


def test_the_stylegan2_run_used_every_phase_and_a_moving_p(runs):
    single = runs[1][0]["stylegan2"]
    t = VARIANTS["stylegan2"][2]
    r1_steps = sum(1 for c in range(STEPS) if c % t["r1_interval"] == 0)
    pl_steps = sum(1 for s in range(STEPS) if s % t["pl_interval"] == 0)
    assert len(single["grads_d"]) == STEPS + r1_steps and len(single["grads_g"]) == STEPS + pl_steps
    assert all(p > 0 for p in single["p"]) and single["p"][0] == 0.5 != single["p"][-1]  # moved after 2 D steps
    assert single["pl_mean"] > 0
    mixed = runs[1][0]["stylegan2_accumulated"]["weights"]
    assert any(k.endswith("w_avg") for k in mixed) and mixed["G.mapping.w_avg"].abs().sum() > 0
