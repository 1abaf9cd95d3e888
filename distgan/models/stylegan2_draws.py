"""StyleGAN2's training-time randomness, drawn per global sample index (:func:`distgan.rng.sample_generator`).

StyleGAN2-ADA draws the per-pixel noise inside the network from torch's global RNG and makes ONE style-mixing
decision (mix or not, one cutoff) per GPU batch, so its step changes with the number of GPUs. Here sample
``i`` of a phase gets its own noise maps, its own mixing decision (probability ``prob``), cutoff layer
(uniform in 1 .. num_ws - 1) and second latent, all from (seed, stream, counter, i): the same sample gets
the same draws on 1 worker or on W, and a resumed run redraws them from the counter alone. The marginal
per sample is StyleGAN2's; only the correlation across a GPU's batch is gone.

Rank ``r`` of ``W`` calls these with ``first = first_index(global_batch, r, W)`` and ``n = global_batch // W``
(plus a micro-batch offset); :func:`local_noise_maps` and :func:`local_mixing` do that arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from distgan.rng import first_index, sample_generator


class Mixing(NamedTuple):
    """``G(..., mixing=Mixing(z2, cutoff))``: layers ``>= cutoff[i]`` of sample i use w(z2[i])."""

    z: torch.Tensor  # (n, z_dim)
    cutoff: torch.Tensor  # (n,) int64 in [1, num_ws]; num_ws means "not mixed"


def noise_maps(resolutions: list[int], seed: int, stream: int, counter: int, first: int, n: int,
               device="cpu") -> list[torch.Tensor]:
    """One (n, 1, r, r) N(0, 1) map per noise input (``G.noise_resolutions``). A sample's maps are one flat
    draw of its own generator on ``device`` (cheap on CUDA: no host work, no copy), then split into
    contiguous maps (strided views made every layer they were added to ~10 % slower: docs/benchmarks.md)."""
    sizes = [r * r for r in resolutions]
    flat = torch.empty(n, sum(sizes), device=device)
    for i in range(n):
        flat[i].normal_(generator=sample_generator(seed, stream, counter, first + i, device))
    return [part.reshape(n, 1, r, r).contiguous() for part, r in zip(flat.split(sizes, dim=1), resolutions)]


def mixing(num_ws: int, z_dim: int, seed: int, stream: int, counter: int, first: int, n: int,
           prob: float = 0.9, device="cpu") -> Mixing:
    """Per sample: mix with probability ``prob`` at a cutoff uniform in [1, num_ws - 1], with a fresh z2.
    Drawn on the CPU (a few numbers per sample) and moved to ``device``."""
    z2 = torch.empty(n, z_dim)
    u = torch.empty(n, 2)
    for i in range(n):
        g = sample_generator(seed, stream, counter, first + i)
        u[i] = torch.rand(2, generator=g)
        z2[i] = torch.randn(z_dim, generator=g)
    cutoff = 1 + (u[:, 1] * (num_ws - 1)).long().clamp(max=num_ws - 2)
    cutoff = torch.where(u[:, 0] < prob, cutoff, torch.full_like(cutoff, num_ws))
    return Mixing(z2.to(device, non_blocking=True), cutoff.to(device, non_blocking=True))


def local_noise_maps(resolutions: list[int], seed: int, stream: int, counter: int, global_batch: int,
                     rank: int, world: int, device="cpu") -> list[torch.Tensor]:
    """This rank's rows of the global batch's noise maps."""
    return noise_maps(resolutions, seed, stream, counter, first_index(global_batch, rank, world),
                      global_batch // world, device)


def local_mixing(num_ws: int, z_dim: int, seed: int, stream: int, counter: int, global_batch: int, rank: int,
                 world: int, prob: float = 0.9, device="cpu") -> Mixing:
    """This rank's rows of the global batch's style-mixing draws."""
    return mixing(num_ws, z_dim, seed, stream, counter, first_index(global_batch, rank, world),
                  global_batch // world, prob, device)
