"""The issue-13 pieces under real DDP on 2 gloo processes: one hand-written StyleGAN2 step (D main with ADA on
reals and fakes, lazy R1 through ADA, G main with noise and style mixing, path length with batch shrink)
gives the same gradients, w_avg and pl_mean on 1 worker x 8 as on 2 workers x 4.

The phases here are a sketch of how step.py should call the pieces, not step.py itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distgan import dist
from distgan.augment import ada_augment
from distgan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from distgan.models.stylegan2_draws import mixing, noise_maps
from distgan.regularizers import PathLengthPenalty, path_length_noise, r1_penalty
from distgan.rng import first_index
from distgan.testing import gloo

torch.set_num_threads(1)
B, SEED, CLASSES = 8, 3, 3
# stream ids of this sketch (the lead's Stream table assigns the real ones)
NOISE_D, MIX_D, NOISE_G, MIX_G, NOISE_PL, MIX_PL, PL_DIR, AUG_REAL, AUG_FAKE, AUG_REAL_R1, AUG_FAKE_G = range(30, 41)


def _grads(net):
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def _one_step(z_all, y_all, real_all, z_pl_all):
    rank, world = dist.rank(), dist.world_size()
    torch.manual_seed(0)
    G = StyleGAN2Generator(32, 3, 256, 32, 2, z_dim=16, w_dim=16, num_classes=CLASSES)
    D = StyleGAN2Discriminator(32, 3, 256, 32, num_classes=CLASSES, mapping_layers=2)
    for m in G.modules():  # non-zero noise strengths, so the noise maps matter
        if hasattr(m, "noise_strength"):
            m.noise_strength.data.fill_(0.3)
    G_ddp, D_ddp = dist.wrap(G, torch.device("cpu")), dist.wrap(D, torch.device("cpu"))
    n, first = B // world, first_index(B, rank, world)
    z, y, real = (t[first:first + n] for t in (z_all, y_all, real_all))
    p, counter, out = 0.6, 5, {}

    def draws(noise_stream, mix_stream, first_, n_):
        return dict(noise=noise_maps(G.noise_resolutions, SEED, noise_stream, counter, first_, n_),
                    mixing=mixing(G.num_ws, 16, SEED, mix_stream, counter, first_, n_))

    # D main: fakes from the unwrapped G (no DDP hooks), which also moves w_avg
    with torch.no_grad():
        fake = G(z, y, update_w_avg=True, **draws(NOISE_D, MIX_D, first, n))
    G.flush_w_avg()  # once per D step, after all micro-batches
    real_logits = D_ddp(ada_augment(real, p, SEED, AUG_REAL, counter, first), y)
    fake_logits = D_ddp(ada_augment(fake, p, SEED, AUG_FAKE, counter, first), y)
    (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()).backward()
    out["D_main"] = _grads(D)
    D.zero_grad(set_to_none=True)

    # D reg: R1 through the augmentation, `logits * 0` so D's last bias is in the graph
    x = real.detach().requires_grad_(True)
    logits = D_ddp(ada_augment(x, p, SEED, AUG_REAL_R1, counter, first), y)
    (r1_penalty(logits, x) * 0.5 * 4 + logits.sum() * 0).backward()
    out["D_reg"] = _grads(D)
    D.zero_grad(set_to_none=True)

    # G main: D frozen and unwrapped
    D.requires_grad_(False)
    fake = G_ddp(z, y, **draws(NOISE_G, MIX_G, first, n))
    F.softplus(-D(ada_augment(fake, p, SEED, AUG_FAKE_G, counter, first), y)).mean().backward()
    out["G_main"] = _grads(G)
    G.zero_grad(set_to_none=True)

    # G reg: path length on its own global batch of B / 2 (not each rank's first half)
    n_pl, first_pl = B // 2 // world, first_index(B // 2, rank, world)
    z_pl, y_pl = z_pl_all[first_pl:first_pl + n_pl], y_all[first_pl:first_pl + n_pl]
    pl = PathLengthPenalty()
    for _ in range(2):
        img, ws = G_ddp(z_pl, y_pl, return_ws=True, **draws(NOISE_PL, MIX_PL, first_pl, n_pl))
        direction = path_length_noise((3, 32, 32), SEED, PL_DIR, counter, first_pl, n_pl)
        (pl(img, ws, direction) * 4).backward()
        pl.flush()  # once per G-reg step, after all micro-batches
    out["G_reg"] = _grads(G)
    out["pl_mean"], out["w_avg"] = float(pl.pl_mean), G.mapping.w_avg.clone()
    D.requires_grad_(True)
    D_ddp(real, y).mean().backward()  # a next D step: DDP raises here if D reg left a bucket unreduced
    return out


def test_two_workers_take_the_same_stylegan2_step_as_one():
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(B, 16, generator=g), torch.randint(CLASSES, (B,), generator=g),
            torch.rand(B, 3, 32, 32, generator=g) * 2 - 1, torch.randn(B // 2, 16, generator=g))
    two = gloo.run(_one_step, 2, *args)
    one = _one_step(*args)
    assert two[0]["pl_mean"] == two[1]["pl_mean"] and torch.equal(two[0]["w_avg"], two[1]["w_avg"])
    assert abs(two[0]["pl_mean"] - one["pl_mean"]) < 1e-6 * abs(one["pl_mean"])
    assert torch.allclose(two[0]["w_avg"], one["w_avg"], atol=1e-7)
    for phase in ("D_main", "D_reg", "G_main", "G_reg"):
        assert two[0][phase].keys() == one[phase].keys(), phase
        for name, grad in one[phase].items():
            assert torch.equal(two[0][phase][name], two[1][phase][name]), (phase, name)  # DDP averaged
            scale = grad.abs().max().clamp(min=1e-3)
            assert (two[0][phase][name] - grad).abs().max() <= 1e-5 * scale, (phase, name)
