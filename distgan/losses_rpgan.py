"""R3GAN's loss (Huang et al., NeurIPS 2024, "The GAN is dead; long live the GAN!"): relativistic pairing
(RpGAN, Jolicoeur-Martineau 2019) with zero-centred gradient penalties on reals (R1) and on fakes (R2).

Pairs are (x_i, G(z_i)) with the same index i in the batch, so under DDP a pair stays on one rank and the
loss is world-size invariant like any per-sample mean:

    L_D = mean_i softplus(-(D(x_i) - D(G(z_i)))) + gamma / 2 * (E||grad_x D(x)||^2 + E||grad_x D(G(z))||^2)
    L_G = mean_i softplus(-(D(G(z_i)) - D(x_i)))

Unlike the other losses, the G loss needs D's logits on the reals as well (the G phase scores a real batch
with D frozen). R3GAN applies both penalties at every D step (not lazily).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distgan.regularizers import _NO_SCALING, r1_penalty, r2_penalty


def rpgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(fake_logits - real_logits).mean()


def rpgan_g_loss(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(real_logits - fake_logits).mean()


def rpgan_d_penalty(real_logits: torch.Tensor, real: torch.Tensor, fake_logits: torch.Tensor, fake: torch.Tensor,
                    gamma: float, scaler=_NO_SCALING) -> torch.Tensor:
    """gamma / 2 * (R1 + R2); ``real`` and ``fake`` are D's inputs, detached and requiring grad."""
    return gamma / 2 * (r1_penalty(real_logits, real, scaler) + r2_penalty(fake_logits, fake, scaler))


class RPGANLoss:
    """The loss object the registry will hold: ``d_loss(real, fake)`` and ``g_loss(fake, real)`` on logits;
    ``gamma`` is the R1 = R2 weight (``train.r2_gamma``)."""

    needs_gradient_penalty = False  # not WGAN-GP's interpolates
    needs_real_logits_in_g = True

    def __init__(self, gamma: float):
        self.gamma = gamma

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return rpgan_d_loss(real, fake)

    def g_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return rpgan_g_loss(fake, real)

    def d_penalty(self, real_logits, real, fake_logits, fake, scaler=_NO_SCALING) -> torch.Tensor:
        return rpgan_d_penalty(real_logits, real, fake_logits, fake, self.gamma, scaler)
