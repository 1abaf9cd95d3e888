"""One GAN step as phases: D main (n_critic times), D reg (lazy R1), G main.

Each phase trains one network through its DDP wrapper and calls the other network *unwrapped* with
its parameters frozen, so a G step never all-reduces D's gradients and vice versa (DESIGN.md §4.3).
Penalties use ``autograd.grad`` on the inputs, then one ordinary backward (DESIGN.md §4.4).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from distgan.config import TrainConfig
from distgan.dist import unwrap
from distgan.losses import Loss


@dataclass
class PhaseStats:
    """Detached tensors; turned into numbers only at log ticks (no host sync per step)."""

    loss_d: torch.Tensor
    d_real: torch.Tensor
    d_fake: torch.Tensor


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def input_gradient_sq(outputs: torch.Tensor, inputs: torch.Tensor, scaler) -> torch.Tensor:
    """Per-sample ||dD(x)/dx||² with a graph for the double backward, correct under fp16 loss scaling:
    the scaled outputs are differentiated (no underflow), then the gradient is unscaled."""
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    (grad,) = torch.autograd.grad(outputs.float().sum() * scale, inputs, create_graph=True)
    grad = grad.float() / scale
    return grad.flatten(1).pow(2).sum(1)


class GANStep:
    def __init__(self, G_ddp: nn.Module, D_ddp: nn.Module, opt_g, opt_d, loss: Loss,
                 cfg: TrainConfig, scaler, device: torch.device):
        self.G_ddp, self.D_ddp = G_ddp, D_ddp
        self.G, self.D = unwrap(G_ddp), unwrap(D_ddp)
        self.opt_g, self.opt_d, self.loss, self.cfg = opt_g, opt_d, loss, cfg
        self.scaler, self.device = scaler, device

    def _optimize(self, opt, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)

    def d_main(self, real: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor | None = None) -> PhaseStats:
        """``alpha``: WGAN-GP interpolation weights, one per sample (drawn per global sample index)."""
        with torch.no_grad(), autocast(self.cfg.precision, self.device):
            fake = self.G(z)  # unwrapped G: no DDP hooks, no gradient
        self.D.requires_grad_(True)
        with autocast(self.cfg.precision, self.device):
            real_logits = self.D_ddp(real)
            fake_logits = self.D_ddp(fake)
            loss = self.loss.d_loss(real_logits.float(), fake_logits.float())
        if self.loss.needs_gradient_penalty:
            loss = loss + self.loss.gp_weight * self._gradient_penalty(real, fake, alpha)
        self._optimize(self.opt_d, loss)
        return PhaseStats(loss.detach(), real_logits.detach().float().mean(),
                          fake_logits.detach().float().mean())

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """WGAN-GP: (||∇D(x̂)|| - 1)² on random interpolates x̂ (Gulrajani et al. 2017)."""
        alpha = alpha.view(real.shape[0], *([1] * (real.dim() - 1))).to(real.device)
        x_hat = (alpha * real + (1 - alpha) * fake.to(real.dtype)).requires_grad_(True)
        with autocast(self.cfg.precision, self.device):
            out = self.D_ddp(x_hat)
        grad_sq = input_gradient_sq(out, x_hat, self.scaler)
        return (grad_sq.add(1e-12).sqrt() - 1).pow(2).mean() + out.float().mean() * 0

    def d_r1(self, real: torch.Tensor) -> torch.Tensor:
        """Lazy R1 on real data (Mescheder et al. 2018), scaled by the interval (StyleGAN2)."""
        self.D.requires_grad_(True)
        real = real.detach().requires_grad_(True)
        with autocast(self.cfg.precision, self.device):
            logits = self.D_ddp(real)
        penalty = input_gradient_sq(logits, real, self.scaler).mean() * (self.cfg.r1_gamma / 2)
        # `logits * 0` puts every D parameter in the graph so each DDP bucket fires (pytorch #63812)
        self._optimize(self.opt_d, penalty * self.cfg.r1_interval + logits.float().mean() * 0)
        return penalty.detach()

    def g_main(self, z: torch.Tensor) -> torch.Tensor:
        self.D.requires_grad_(False)  # frozen: no D gradients computed, none all-reduced
        with autocast(self.cfg.precision, self.device):
            fake = self.G_ddp(z)
            loss = self.loss.g_loss(self.D(fake).float())  # unwrapped D: no DDP hooks
        self._optimize(self.opt_g, loss)
        self.D.requires_grad_(True)
        return loss.detach()
