"""GAN losses on D's raw logits. A loss computes; it never touches optimizers, process groups or logs.

Each loss maps logits to a scalar that is the MEAN over the local batch, so that DDP's gradient average
over equal-sized shards equals the gradient of the mean over the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distgan.config import LossConfig
from distgan.errors import UserError


class Loss:
    """Non-saturating BCE (Goodfellow et al. 2014), with logits: softplus is log(1 + e^x), stable."""

    needs_gradient_penalty = False

    @classmethod
    def from_config(cls, cfg: LossConfig) -> Loss:
        return cls()

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-fake).mean()


class HingeLoss(Loss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018, SNGAN)."""

    def d_loss(self, real, fake):
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def g_loss(self, fake):
        return -fake.mean()


class LSGANLoss(Loss):
    """Least squares GAN (Mao et al. 2017), targets a=0 (fake), b=c=1 (real)."""

    def d_loss(self, real, fake):
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()

    def g_loss(self, fake):
        return 0.5 * ((fake - 1) ** 2).mean()


class WGANGPLoss(Loss):
    """Wasserstein loss with gradient penalty (Gulrajani et al. 2017). The penalty needs D's input
    gradient on interpolates, so :class:`distgan.step.GANStep` computes it; ``gp_weight`` scales it."""

    needs_gradient_penalty = True

    def __init__(self, gp_weight: float):
        self.gp_weight = gp_weight

    @classmethod
    def from_config(cls, cfg: LossConfig) -> Loss:
        return cls(cfg.gp_weight)

    def d_loss(self, real, fake):
        return fake.mean() - real.mean()

    def g_loss(self, fake):
        return -fake.mean()


LOSSES: dict[str, type[Loss]] = {"bce": Loss, "hinge": HingeLoss, "lsgan": LSGANLoss, "wgan_gp": WGANGPLoss}


def spec(name: str) -> type[Loss]:
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name]


def build_loss(cfg: LossConfig) -> Loss:
    return spec(cfg.name).from_config(cfg)
