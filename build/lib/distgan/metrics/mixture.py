"""The mode-collapse protocol on the 2D mixtures (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018).

Draw 2,500 samples; a sample is *high quality* when it lies within 3σ of its nearest mode; a mode is
*captured* when at least one high-quality sample is nearest to it; the *reverse KL* is
KL(generated mode histogram ‖ uniform), the histogram counting high-quality samples only. A generator
collapsed onto one of K modes scores 1 mode and log K.
"""

from __future__ import annotations

import math

import torch

from distgan.data import mixture_modes

PROTOCOL_SAMPLES = 2500


def mode_histogram(points: torch.Tensor, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts of high-quality samples per mode, boolean high-quality mask per sample)."""
    modes, sigma = mixture_modes(dataset)
    points = points.detach().double().cpu()
    dist, nearest = torch.cdist(points, modes.double()).min(1)
    high = dist <= 3 * sigma
    counts = torch.bincount(nearest[high], minlength=len(modes))
    return counts, high


def reverse_kl(counts: torch.Tensor) -> float:
    """KL(p ‖ uniform) of a histogram; empty bins contribute 0 (0 log 0). ``inf`` with no samples."""
    total = counts.sum().item()
    if total == 0:
        return math.inf
    p = counts.double() / total
    p = p[p > 0]
    return float((p * (p * len(counts)).log()).sum())


def mode_metrics(points: torch.Tensor, dataset: str) -> dict[str, float]:
    """The protocol's three numbers for generated ``points`` of shape (N, 2)."""
    counts, high = mode_histogram(points, dataset)
    return {
        "modes": int((counts > 0).sum()),
        "high_quality": float(high.double().mean()),
        "reverse_kl": reverse_kl(counts),
    }


def better(new: dict[str, float], old: dict[str, float] | None) -> bool:
    """More modes first, then lower reverse KL: the order used to keep the best 2D checkpoint."""
    if old is None:
        return True
    return (new["modes"], -new["reverse_kl"]) > (old["modes"], -old["reverse_kl"])
