"""The 2D mixtures of the mode-collapse protocol (PacGAN, Lin et al. 2018; VEEGAN, Srivastava et al. 2017):
a ring of 8 Gaussians (radius 1, σ = 0.01) and a grid of 25 ({-4, -2, 0, 2, 4}², σ = 0.05), generated
from the seed."""

from __future__ import annotations

import math

import torch

from distgan.config import DatasetConfig
from distgan.data.memory import MemoryDataset

MIXTURES = ("ring", "grid")


def mixture_modes(name: str) -> tuple[torch.Tensor, float]:
    """Mode centres and σ of the protocol."""
    if name == "ring":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return torch.stack([angles.cos(), angles.sin()], 1).float(), 0.01
    if name == "grid":
        axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        return torch.cartesian_prod(axis, axis), 0.05
    raise ValueError(name)


def sample_mixture(name: str, n: int, seed: int) -> torch.Tensor:
    modes, sigma = mixture_modes(name)
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(modes), (n,), generator=g)
    return modes[which] + sigma * torch.randn(n, 2, generator=g)


def locate(cfg: DatasetConfig) -> DatasetConfig:
    return cfg  # generated: nothing to find


def load(cfg: DatasetConfig, seed: int = 0) -> MemoryDataset:
    return MemoryDataset(sample_mixture(cfg.name, cfg.num_samples, seed), None, 0)
