"""One GAN step as phases: D main (n_critic times), D reg (lazy R1), G main.

Each phase trains one network through its DDP wrapper and calls the other network *unwrapped* with
its parameters frozen, so a G step never all-reduces D's gradients and vice versa (docs/design.md).
Penalties use ``autograd.grad`` on the inputs, then one ordinary backward, with ``output * 0`` added so
every DDP bucket fires. Every call of D passes through :meth:`GANStep.discriminate`. Every random draw
(z, fake labels, WGAN-GP's interpolation weights) is this rank's slice of a global batch derived from
(seed, stream, counter) (distgan/rng.py), so W workers x B/W take the same step as 1 worker x B.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from distgan import dist
from distgan.config import Config, TrainConfig
from distgan.losses import Loss
from distgan.rng import Stream, local_labels, local_noise

log = logging.getLogger("distgan")
RealBatch = Callable[[int], "tuple[torch.Tensor, torch.Tensor | None]"]  # counter -> (x, labels or None)


@dataclass
class PhaseStats:
    """Detached tensors; turned into numbers only at log ticks (no host sync per step)."""

    loss_d: torch.Tensor
    d_real: torch.Tensor
    d_fake: torch.Tensor


@dataclass
class StepStats:
    """What one generator step reports: the last D phase's numbers, G's loss, and the mean R1 penalty of
    the D steps that ran it (None when none did)."""

    d: PhaseStats
    loss_g: torch.Tensor
    r1: torch.Tensor | None = None


@dataclass
class Trainable:
    """One network as its phases train it: the DDP wrapper (the module itself in one process) and its
    optimizer."""

    ddp: nn.Module
    opt: torch.optim.Optimizer

    @property
    def net(self) -> nn.Module:
        return dist.unwrap(self.ddp)


@dataclass
class StepContext:
    device: torch.device
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    latent_dim: int
    num_classes: int = 0  # > 0: a conditional G and D trained on labelled data
    channels_last: bool = False  # real batches converted to channels_last (conv models on CUDA)


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def call(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``net(x)``, or ``net(x, y)`` for a conditional network."""
    return net(x) if y is None else net(x, y)


def input_gradient_sq(outputs: torch.Tensor, inputs: torch.Tensor, scaler) -> torch.Tensor:
    """Per-sample ||dD(x)/dx||² with a graph for the double backward, correct under fp16 loss scaling:
    the scaled outputs are differentiated (no underflow), then the gradient is unscaled."""
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    (grad,) = torch.autograd.grad(_wide(outputs).sum() * scale, inputs, create_graph=True)
    return (_wide(grad) / scale).flatten(1).pow(2).sum(1)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 for sums and squares; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def build_optimizers(G: nn.Module, D: nn.Module, t: TrainConfig):
    """Adam for G and D (separate learning rates: TTUR). Lazy R1 runs every ``r1_interval`` D steps with
    its loss multiplied by the interval; StyleGAN2's correction c = k/(k+1) of lr and betas keeps D's
    effective optimizer the same as with a penalty at every step (Karras et al. 2020, appendix B)."""
    c = t.r1_interval / (t.r1_interval + 1) if t.r1_gamma > 0 else 1.0
    opt_g = torch.optim.Adam(G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2), fused=_fusable(G))
    opt_d = torch.optim.Adam(D.parameters(), lr=t.lr_d * c, betas=(t.beta1**c, t.beta2**c), fused=_fusable(D))
    return opt_g, opt_d


def lr_factor(t: TrainConfig, step: int) -> float:
    """Multiplier of both learning rates for G step ``step`` (0-based): 1 until ``lr_decay_start`` x
    ``steps``, then a linear or half-cosine fall that would reach 0 at ``steps``. A pure function of the
    step, so it is the same on every rank and after a resume."""
    if t.lr_decay == "none":
        return 1.0
    start = t.lr_decay_start * t.steps
    frac = min(max((step - start) / max(t.steps - start, 1), 0.0), 1.0)
    return 1.0 - frac if t.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def build_schedulers(opt_g, opt_d, t: TrainConfig, first_step: int = 0) -> list:
    """torch's LambdaLR over :func:`lr_factor`, stepped once per G step (after the n_critic D steps).
    Built after a resume with ``first_step`` = the resumed step: the factor depends on the step alone,
    so nothing about the schedule needs saving (the optimizers' state keeps the base rates). None at all
    without a decay: the loop then leaves the rates alone."""
    if t.lr_decay == "none":
        return []
    return [torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(t, first_step + k)) for opt in (opt_g, opt_d)]


def _fusable(net: nn.Module) -> bool:
    """Fused Adam (one kernel per step instead of ~10 per tensor): same update to ~1e-8, ~4x cheaper on
    CPU, where the for-loop Adam was ~15 % of an MLP step (docs/benchmarks.md)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in net.parameters())


def accelerate(G: nn.Module, D: nn.Module, cfg: Config, device: torch.device, penalty: bool) -> bool:
    """On CUDA: channels_last for conv models and, with ``train.compile``, torch.compile in place (state
    dict keys unchanged). D is not compiled when a penalty needs double backward, which torch.compile
    does not support. Returns whether inputs should be channels_last."""
    from distgan.models import spec

    if device.type != "cuda":
        return False
    channels_last = spec(cfg.model.name).channels_last
    if channels_last:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        G.compile()
        if penalty:
            log.info("train.compile: D left uncompiled (its gradient penalty needs double backward)")
        else:
            D.compile()
    return channels_last


class GANStep:
    """``train_step(step, real_batch)``: n_critic D steps (each maybe followed by lazy R1), then one G step.

    ``guard`` (a :class:`distgan.nonfinite.NonFiniteGuard`) may veto an update before it lands."""

    def __init__(self, G: Trainable, D: Trainable, loss: Loss, cfg: TrainConfig, ctx: StepContext, guard=None):
        self.G_ddp, self.D_ddp, self.opt_g, self.opt_d = G.ddp, D.ddp, G.opt, D.opt
        self.G, self.D = G.net, D.net
        self.loss, self.cfg, self.ctx, self.guard = loss, cfg, ctx, guard
        self.device, self.scaler = ctx.device, ctx.scaler
        self.rank, self.world = dist.rank(), dist.world_size()

    # ---- world-size-invariant draws: this rank's slice of the global batch
    def noise(self, stream: Stream, counter: int, dim: int | None = None, uniform: bool = False) -> torch.Tensor:
        return local_noise(self.cfg.seed, stream, counter, self.cfg.batch_size, dim or self.ctx.latent_dim,
                           self.rank, self.world, self.device, uniform)

    def fake_labels(self, stream: Stream, counter: int) -> torch.Tensor | None:
        if not self.ctx.num_classes:
            return None
        return local_labels(self.cfg.seed, stream, counter, self.cfg.batch_size, self.ctx.num_classes,
                            self.rank, self.world, self.device)

    def train_step(self, step: int, real_batch: RealBatch) -> StepStats:
        """Generator step ``step`` (0-based). D step ``counter`` indexes the data, the D draws and the R1
        schedule, so a resumed run continues them exactly."""
        t, r1 = self.cfg, []
        for k in range(t.n_critic):
            counter = step * t.n_critic + k
            real, y_real = real_batch(counter)
            if self.ctx.channels_last:
                real = real.contiguous(memory_format=torch.channels_last)
            if self.ctx.num_classes and y_real is None:
                raise ValueError("a conditional model needs labels for the real data")
            y_real = y_real if self.ctx.num_classes else None
            alpha = self.noise(Stream.ALPHA, counter, 1, uniform=True) if self.loss.needs_gradient_penalty else None
            d = self.d_main(real, y_real, self.noise(Stream.Z_D, counter), self.fake_labels(Stream.Y_D, counter), alpha)
            if t.r1_gamma > 0 and counter % t.r1_interval == 0:
                r1.append(self.d_r1(real, y_real))
        loss_g = self.g_main(self.noise(Stream.Z_G, step), self.fake_labels(Stream.Y_G, step))
        return StepStats(d, loss_g, torch.stack(r1).mean() if r1 else None)

    # ---- the one funnel of D calls
    def discriminate(self, x: torch.Tensor, y: torch.Tensor | None, training_d: bool) -> torch.Tensor:
        """D's logits for ``x``: through the DDP wrapper in D's phases (``training_d``), the bare module
        in G's (no DDP hooks, no gradient sync). Every D call of a step passes here."""
        return call(self.D_ddp if training_d else self.D, x, y)

    # ---- phases
    def _optimize(self, opt, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        if self.guard is None or self.guard.ok("D" if opt is self.opt_d else "G", opt, loss):
            self.scaler.step(opt)
            self.scaler.update()
        opt.zero_grad(set_to_none=True)

    def d_main(self, real: torch.Tensor, y_real: torch.Tensor | None, z: torch.Tensor,
               y_fake: torch.Tensor | None, alpha: torch.Tensor | None = None) -> PhaseStats:
        """``alpha``: WGAN-GP interpolation weights, one per sample (drawn per global sample index)."""
        with torch.no_grad(), autocast(self.cfg.precision, self.device):
            fake = call(self.G, z, y_fake)  # unwrapped G: no DDP hooks, no gradient
        self.D.requires_grad_(True)
        with autocast(self.cfg.precision, self.device):
            real_logits = self.discriminate(real, y_real, training_d=True)
            fake_logits = self.discriminate(fake, y_fake, training_d=True)
            loss = self.loss.d_loss(real_logits.float(), fake_logits.float())
        if self.loss.needs_gradient_penalty:
            loss = loss + self.loss.gp_weight * self._gradient_penalty(real, fake, alpha, y_real)
        self._optimize(self.opt_d, loss)
        return PhaseStats(loss.detach(), real_logits.detach().float().mean(),
                          fake_logits.detach().float().mean())

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor,
                          y: torch.Tensor | None) -> torch.Tensor:
        """WGAN-GP: (||∇D(x̂)|| - 1)² on random interpolates x̂ (Gulrajani et al. 2017); conditional
        models score x̂ with the real labels."""
        alpha = alpha.view(real.shape[0], *([1] * (real.dim() - 1))).to(real.device)
        x_hat = (alpha * real + (1 - alpha) * fake.to(real.dtype)).detach().requires_grad_(True)
        with autocast(self.cfg.precision, self.device):
            out = self.discriminate(x_hat, y, training_d=True)
        grad_sq = input_gradient_sq(out, x_hat, self.scaler)
        # the epsilon keeps sqrt differentiable at a zero gradient
        return (grad_sq.add(1e-12).sqrt() - 1).pow(2).mean() + out.float().mean() * 0

    def d_r1(self, real: torch.Tensor, y_real: torch.Tensor | None) -> torch.Tensor:
        """Lazy R1 on real data (Mescheder et al. 2018): γ/2 E||∇D(x)||², times the interval (StyleGAN2)."""
        self.D.requires_grad_(True)
        real = real.detach().requires_grad_(True)
        with autocast(self.cfg.precision, self.device):
            logits = self.discriminate(real, y_real, training_d=True)
        penalty = input_gradient_sq(logits, real, self.scaler).mean() * (self.cfg.r1_gamma / 2)
        # `logits * 0` puts every D parameter in the graph so each DDP bucket fires (pytorch #63812)
        self._optimize(self.opt_d, penalty * self.cfg.r1_interval + logits.float().mean() * 0)
        return penalty.detach()

    def g_main(self, z: torch.Tensor, y_fake: torch.Tensor | None) -> torch.Tensor:
        self.D.requires_grad_(False)  # frozen: no D gradients computed, none all-reduced
        with autocast(self.cfg.precision, self.device):
            fake = call(self.G_ddp, z, y_fake)
            loss = self.loss.g_loss(self.discriminate(fake, y_fake, training_d=False).float())
        self._optimize(self.opt_g, loss)
        self.D.requires_grad_(True)
        return loss.detach()
