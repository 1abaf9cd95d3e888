"""GAN losses on D's raw logits. A loss computes; it never touches optimizers, process groups or logs.

Each loss maps logits to a scalar that is the MEAN over the local batch, so that DDP's gradient average
over equal-sized shards equals the gradient of the mean over the global batch.

The interface every loss implements: ``d_loss(real, fake)`` and ``g_loss(fake, real)``, where ``real`` in
the G loss is D's logits on a real batch (with D frozen) for losses that set ``g_needs_real`` (a
relativistic loss pairs each fake with a real), else None and unused. What a loss asks of the step is
declared as class attributes: ``needs_gradient_penalty`` (WGAN-GP's interpolates), ``g_needs_real``,
``fakes_penalty`` (it is made for R2 on fakes, ``train.r2_gamma``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distgan.config import LossConfig
from distgan.errors import UserError


class Loss:
    """Non-saturating BCE (Goodfellow et al. 2014), with logits: softplus is log(1 + e^x), stable."""

    needs_gradient_penalty = False  # WGAN-GP: the step adds gp_weight x the penalty on interpolates to D main
    g_needs_real = False  # g_loss pairs the fakes with D's logits on reals
    fakes_penalty = False  # meant to be used with R2 on fakes (train.r2_gamma)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> Loss:
        return cls()

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def g_loss(self, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        return F.softplus(-fake).mean()


class HingeLoss(Loss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018, SNGAN)."""

    def d_loss(self, real, fake):
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def g_loss(self, fake, real=None):
        return -fake.mean()


class LSGANLoss(Loss):
    """Least squares GAN (Mao et al. 2017), targets a=0 (fake), b=c=1 (real)."""

    def d_loss(self, real, fake):
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()

    def g_loss(self, fake, real=None):
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

    def g_loss(self, fake, real=None):
        return -fake.mean()


class RPGANLoss(Loss):
    """R3GAN's relativistic pairing loss (Huang et al., NeurIPS 2024, "The GAN is dead; long live the GAN!";
    RpGAN: Jolicoeur-Martineau 2019). Pairs are (x_i, G(z_i)) with the same index i of the batch, so under
    DDP a pair stays on one rank and the loss is world-size invariant like any per-sample mean:

        L_D = mean_i softplus(D(G(z_i)) - D(x_i)),   L_G = mean_i softplus(D(x_i) - D(G(z_i)))

    R3GAN adds zero-centred R1 on reals and R2 on fakes (``train.r1_gamma``, ``train.r2_gamma``), which the
    step's D reg phase applies (distgan/step.py)."""

    g_needs_real = True
    fakes_penalty = True

    def d_loss(self, real, fake):
        return F.softplus(fake - real).mean()

    def g_loss(self, fake, real=None):
        if real is None:
            raise ValueError("loss=rpgan pairs every fake with a real: g_loss needs D's logits on reals")
        return F.softplus(real - fake).mean()


LOSSES: dict[str, type[Loss]] = {"bce": Loss, "hinge": HingeLoss, "lsgan": LSGANLoss, "wgan_gp": WGANGPLoss,
                                 "rpgan": RPGANLoss}


def spec(name: str) -> type[Loss]:
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name]


def check(cfg) -> None:
    """The loss's rules against the rest of the config (run by the
    launcher's pre-flight, distgan/launcher/preflight.py)."""
    loss = spec(cfg.loss.name)
    if cfg.train.r2_gamma > 0 and not loss.fakes_penalty:
        fits = [n for n, cls in LOSSES.items() if cls.fakes_penalty]
        raise UserError(f"train.r2_gamma (R2 on fakes) is part of loss={' or loss='.join(fits)}; loss={cfg.loss.name} "
                        "has no fakes penalty: set train.r2_gamma=0 or choose that loss")


def build_loss(cfg: LossConfig) -> Loss:
    return spec(cfg.name).from_config(cfg)
