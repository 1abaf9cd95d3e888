"""Per-sample random draws: sample ``i`` of a step gets a generator seeded by (seed, stream, counter, i).

:func:`distgan.rng.counter_generator` draws a whole global batch on every rank and slices it, which is right
for small rows (z, labels) but wasteful for large per-sample tensors (noise maps, augmentation parameters,
path-length noise). Here every rank seeds one generator per sample it owns instead, so rank ``r`` of ``W``
computes only its rows and 1 worker x B and W workers x B/W still see the same numbers. The global index of
a rank's first sample is ``rank * global_batch // world`` (:func:`first_index`); micro-batches offset it.

Large draws can be made on the training device (a CUDA generator): the numbers then depend on the device
type (CPU and CUDA generators differ) but not on the world size or on the batch a sample shares.
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def _mix(h: int) -> int:
    """splitmix64's finaliser: a cheap bijective scramble of a 64-bit integer."""
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK
    return h ^ (h >> 31)


def sample_seed(seed: int, stream: int, counter: int, index: int) -> int:
    """A 63-bit seed from the four integers (hash-chained, so nearby tuples give unrelated seeds)."""
    h = 0x9E3779B97F4A7C15
    for part in (seed, int(stream), counter, index):
        h = _mix((h + (part & _MASK) + 0x9E3779B97F4A7C15) & _MASK)
    return h >> 1  # torch.Generator.manual_seed takes values below 2**63 on every backend


def sample_generator(seed: int, stream: int, counter: int, index: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(sample_seed(seed, stream, counter, index))


def first_index(global_batch: int, rank: int, world: int) -> int:
    """Global index of this rank's first sample (rank ``r`` owns rows ``[r B/W, (r+1) B/W)``)."""
    return rank * (global_batch // world)


def per_sample(kind: str, seed: int, stream: int, counter: int, first: int, n: int, shape: tuple[int, ...],
               device="cpu") -> torch.Tensor:
    """``(n, *shape)`` draws (``kind`` "normal" or "uniform") for global samples ``first .. first + n - 1``,
    made on ``device`` with one generator per sample."""
    if kind not in ("normal", "uniform"):
        raise ValueError(f"unknown draw kind {kind!r}")
    draw = torch.randn if kind == "normal" else torch.rand
    rows = [draw(shape, generator=sample_generator(seed, stream, counter, first + i, device), device=device)
            for i in range(n)]
    return torch.stack(rows) if rows else torch.empty((0, *shape), device=device)
