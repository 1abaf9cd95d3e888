"""Latents the looking-at commands share: seed lists, NVIDIA's seed -> z convention, and walks between
latents (spherical in z, linear in w).

``seeds=0-7`` / ``seeds=1,5,9-11`` is :func:`parse_seeds`; seed ``s`` means the z of NVIDIA's scripts
(generate.py, style_mixing.py, gen_video.py): ``np.random.RandomState(s).randn(z_dim)``, so a seed picked
from a figure made with their tools names the same latent here (for the same network). Latents of
evaluation and of ``launch/sample.py``'s grids come from :func:`distgan.rng.eval_latents` instead.

This module imports only torch, numpy and ``distgan.errors`` (a test enforces the layering).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from distgan.errors import UserError

MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32)
_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(text, name: str = "seeds", allow_empty: bool = False) -> list[int]:
    """``"0-7"``, ``"1,5,9-11"``, an int or a list of ints (what OmegaConf hands over) -> the seeds in
    order; a UserError naming ``name`` for anything else (negative, reversed range, not a number)."""
    if isinstance(text, bool):
        raise UserError(f"{name}={text}: give seeds as 0-7 or 1,5,9")
    if isinstance(text, int):
        parts = [str(text)]
    elif isinstance(text, (list, tuple)):
        parts = [str(p) for p in text]
    elif text is None:
        parts = []
    else:
        parts = [p for p in str(text).split(",")]
        if parts == [""]:
            parts = []
    seeds: list[int] = []
    for part in parts:
        m = _PART.match(part)
        if not m:
            raise UserError(f"{name}={text}: {part.strip()!r} is not a seed or a range; give seeds as 0-7 or 1,5,9")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise UserError(f"{name}={text}: the range {lo}-{hi} runs backwards; write {hi}-{lo}")
        if hi > MAX_SEED:
            raise UserError(f"{name}={text}: seeds go up to {MAX_SEED}")
        seeds.extend(range(lo, hi + 1))
    if not seeds and not allow_empty:
        raise UserError(f"{name}= is empty; give seeds as 0-7 or 1,5,9")
    return seeds


def parse_floats(text, name: str) -> list[float]:
    """``"1,0.7,0.5"`` (or a float, or a list) -> floats; a UserError naming ``name`` otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return [float(text)]
    parts = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"{name}={text}: give numbers separated by commas, e.g. 1,0.7,0.5") from None
    if not values:
        raise UserError(f"{name}= is empty")
    return values


def seed_z(seeds: list[int], z_dim: int) -> torch.Tensor:
    """(len(seeds), z_dim) float32: seed s -> ``RandomState(s).randn(z_dim)`` (NVIDIA's convention)."""
    rows = [np.random.RandomState(s).randn(z_dim) for s in seeds]
    return torch.from_numpy(np.stack(rows)).float() if rows else torch.zeros(0, z_dim)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation between rows of ``a`` and ``b`` (…, D), magnitude interpolated linearly:
    Gaussian latents stay at a typical norm all the way (a straight line would pass near the origin)."""
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(cos)
    so = torch.sin(omega)
    near = so.abs() < 1e-6  # (anti)parallel: fall back to a straight line between the directions
    wa = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / torch.where(near, torch.ones_like(so), so))
    wb = torch.where(near, t.expand_as(so), torch.sin(t * omega) / torch.where(near, torch.ones_like(so), so))
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return direction * torch.lerp(na, nb, t)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Linear interpolation (for w: the mapping network has already made the space flat enough)."""
    return torch.lerp(a, b, torch.as_tensor(t, dtype=a.dtype, device=a.device))


def loop_walk(keys: torch.Tensor, frames_per_key: int, spherical: bool) -> torch.Tensor:
    """A closed walk through ``keys`` (K, …): ``frames_per_key`` frames from each key towards the next,
    the last key back to the first, so the video loops without a jump. Returns (K * frames_per_key, …);
    frame ``k * frames_per_key`` is key ``k`` exactly."""
    if frames_per_key < 1:
        raise UserError(f"frames={frames_per_key}: need at least 1 frame per seed")
    k = keys.shape[0]
    out = []
    for i in range(k):
        a, b = keys[i], keys[(i + 1) % k]
        for f in range(frames_per_key):
            t = f / frames_per_key
            out.append(a.clone() if f == 0 else (slerp(a, b, t) if spherical else lerp(a, b, t)))
    return torch.stack(out)


def walk_strip(z: torch.Tensor, y: torch.Tensor | None = None, frames: int = 8):
    """(z, y) of a short walk for TensorBoard's sample tick: ``frames`` latents from ``z[0]`` to ``z[1]``
    (spherical, both ends included), the label of the first sample throughout. The fixed latents of the
    run make it the same walk at every tick."""
    t = torch.linspace(0, 1, frames, dtype=z.dtype, device=z.device)[:, None]
    a, b = z[0:1], z[1:2] if len(z) > 1 else -z[0:1]
    walk = slerp(a.expand(frames, -1), b.expand(frames, -1), t)
    return walk, (None if y is None else y[:1].expand(frames))
