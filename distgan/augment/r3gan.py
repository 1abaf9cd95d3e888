"""R3GAN's augmentation (brownvc/R3GAN train.py, ``--aug=1``): StyleGAN2-ADA's pipeline with geometric
transforms at multiplier 1 (x-flip, 90-degree rotations, integer translation, scaling, rotation, anisotropy,
fractional translation), colour transforms at 0.5 (brightness, contrast, luma flip, hue, saturation) and
cutout at 1 (a zeroed square of half the image side at a uniform centre), with a p that is fixed or
scheduled (``train.augment_p``, ``train.augment_p_final``), never adaptive.

The geometric and colour parts are distgan's ADA pipeline (ada.py) with these multipliers; cutout's three
uniforms per sample (fire, centre x, centre y) come from the same per-sample generator, after ADA's draws,
so a sample is augmented the same on 1 or W workers.
"""

from __future__ import annotations

import torch

from distgan.augment.ada import NORMALS, UNIFORMS, ADASpec, ada_augment
from distgan.rng import sample_generator

R3GAN_SPEC = ADASpec(brightness=0.5, contrast=0.5, lumaflip=0.5, hue=0.5, saturation=0.5)
CUTOUT = 1.0  # cutout's probability multiplier
CUTOUT_SIZE = 0.5  # side of the square, a fraction of the image


def cutout_draws(seed: int, stream: int, counter: int, first: int, n: int) -> torch.Tensor:
    """(n, 3) uniforms (fire, centre x, centre y) per sample: the per-sample generator after ADA's draws."""
    out = torch.empty(n, 3)
    for i in range(n):
        gen = sample_generator(seed, stream, counter, first + i)
        torch.rand(len(UNIFORMS), generator=gen)
        torch.randn(len(NORMALS), generator=gen)
        out[i] = torch.rand(3, generator=gen)
    return out


def cutout_mask(u: torch.Tensor, p: float, height: int, width: int) -> torch.Tensor:
    """(n, 1, H, W) float mask: 0 inside each firing sample's square (ADA's cutout), 1 elsewhere."""
    size = torch.where(u[:, 0] < CUTOUT * p, CUTOUT_SIZE, 0.0).view(-1, 1, 1, 1)
    cx, cy = u[:, 1].view(-1, 1, 1, 1), u[:, 2].view(-1, 1, 1, 1)
    xs = (torch.arange(width).view(1, 1, 1, -1) + 0.5) / width
    ys = (torch.arange(height).view(1, 1, -1, 1) + 0.5) / height
    return (((xs - cx).abs() >= size / 2) | ((ys - cy).abs() >= size / 2)).float()


def r3gan_augment(x: torch.Tensor, p: float, seed: int, stream: int, counter: int, first_index: int) -> torch.Tensor:
    """Augment the (n, C, H, W) batch whose first row is global sample ``first_index``. p = 0: x itself."""
    if p == 0:
        return x
    y = ada_augment(x, p, seed, stream, counter, first_index, spec=R3GAN_SPEC)
    u = cutout_draws(seed, stream, counter, first_index, x.shape[0])
    mask = cutout_mask(u, p, x.shape[2], x.shape[3])
    if bool((mask == 1).all()):
        return y
    return y * mask.to(y.device, y.dtype)
