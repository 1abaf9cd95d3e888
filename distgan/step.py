"""One GAN step as phases: D main (n_critic times), D reg (lazy R1 / R2), G main, G reg (lazy path length).

With ``train.r1_interval=1`` there is no D reg phase: R1 / R2 are part of D main's loss on the same D
forward (R3GAN's D loss; StyleGAN2-ADA's "Dboth"), one backward and one Adam update (:meth:`GANStep.d_main`).

Each phase trains one network through its DDP wrapper and calls the other network *unwrapped* with
its parameters frozen, so a G step never all-reduces D's gradients and vice versa (docs/design.md).
Penalties use ``autograd.grad`` on the inputs, then one ordinary backward, with ``output * 0`` added so
every DDP bucket fires. Every call of D passes through :meth:`GANStep.discriminate`, which applies the
augmentation (``train.augment``). Every random draw (z, fake labels, WGAN-GP's interpolation weights,
StyleGAN2's noise maps and style mixing, augmentations, path-length directions) is a function of (seed,
stream, global sample index) (distgan/rng.py), so W workers x B/W take the same step as 1 worker x B.

Gradient accumulation (``train.batch_per_gpu``): each phase runs the worker's batch as equal micro-batches,
each loss weighted by micro / local, under DDP's ``no_sync`` for all but the last, so the one all-reduce
and the one update give the un-accumulated step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from distgan import dist
from distgan.augment import Augmenter
from distgan.config import TrainConfig
from distgan.losses import Loss
from distgan.models.stylegan2_draws import mixing, noise_maps
from distgan.optim import autocast, call
from distgan.regularizers import (
    PathLengthPenalty,
    fused_d_reg,
    input_gradient_sq,
    path_length_noise,
    r1_penalty,
    r2_penalty,
    wide,
)
from distgan.rng import Stream, first_index, local_labels, local_noise

RealBatch = Callable[[int], "tuple[torch.Tensor, torch.Tensor | None]"]  # counter -> (x, labels or None)


@dataclass
class PhaseStats:
    """Detached tensors; turned into numbers only at log ticks (no host sync per step)."""

    loss_d: torch.Tensor  # the adversarial loss (+ WGAN-GP's penalty), without R1 / R2
    d_real: torch.Tensor
    d_fake: torch.Tensor
    r1: torch.Tensor | None = None  # γ1/2 E||∇D(x)||² when D main carried R1 (train.r1_interval=1)
    r2: torch.Tensor | None = None  # γ2/2 E||∇D(G(z))||² when D main carried R2


@dataclass
class StepStats:
    """What one generator step reports: the last D phase's numbers, G's loss, and the mean R1 / R2 penalty
    of the D reg phases and the path-length loss of the G reg phase that ran in it (None when none did)."""

    d: PhaseStats
    loss_g: torch.Tensor
    r1: torch.Tensor | None = None
    r2: torch.Tensor | None = None
    pl: torch.Tensor | None = None


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
    style: bool = False  # G has a mapping network: noise maps, style mixing, path length (stylegan2)
    label_weights: torch.Tensor | None = None  # fake labels' class frequencies (the data's); None: uniform


def _mean(xs: list[torch.Tensor]) -> torch.Tensor | None:
    """The mean of per-micro-batch scalars (the one itself for one; None for none)."""
    return None if not xs else xs[0] if len(xs) == 1 else torch.stack(xs).mean()


def _rows(x: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if x is None else x[sl]


class GANStep:
    """``train_step(step, real_batch)``: n_critic D steps (each maybe followed by lazy R1/R2), one G step,
    maybe followed by the lazy path-length penalty.

    ``guard`` (a :class:`distgan.nonfinite.NonFiniteGuard`) may veto an update before it lands."""

    def __init__(self, G: Trainable, D: Trainable, loss: Loss, cfg: TrainConfig, ctx: StepContext, guard=None):
        self.G_ddp, self.D_ddp, self.opt_g, self.opt_d = G.ddp, D.ddp, G.opt, D.opt
        self.G, self.D = G.net, D.net
        self.loss, self.cfg, self.ctx, self.guard = loss, cfg, ctx, guard
        self.device, self.scaler = ctx.device, ctx.scaler
        self.rank, self.world = dist.rank(), dist.world_size()
        self.micro = cfg.batch_per_gpu  # None: the whole batch at once; validated: divides the worker's batch
        self.first = first_index(cfg.batch_size, self.rank, self.world)  # global index of this rank's row 0
        self.augment = Augmenter.from_config(cfg, self.device)
        self.pl = PathLengthPenalty(cfg.pl_decay, cfg.pl_weight) if cfg.pl_weight > 0 else None
        self.d_reg_on = cfg.r1_gamma > 0 or cfg.r2_gamma > 0
        self.fused_reg = fused_d_reg(cfg)  # R1 / R2 in D main's loss (interval 1), no D reg phase
        self.gammas = (cfg.r1_gamma, cfg.r2_gamma)  # this step's R1 / R2 weights (train.gamma_final schedules them)
        self._fakes: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # D main's, for R2 in D reg
        # D's parameters, listed once (what D.requires_grad_ walks): D is frozen and thawed up to four times a
        # step, and walking the module tree each time costs ~3 % of a small model's step (docs/benchmarks.md)
        self._d_params = list(self.D.parameters())

    def _train_d(self, on: bool) -> None:
        """D's parameters require grad (its own phases) or not (G's: no D gradients computed or all-reduced)."""
        for p in self._d_params:
            p.requires_grad_(on)

    # ---- world-size-invariant draws: this rank's slice of the global batch
    def noise(self, stream: Stream, counter: int, dim: int | None = None, uniform: bool = False) -> torch.Tensor:
        return local_noise(self.cfg.seed, stream, counter, self.cfg.batch_size, dim or self.ctx.latent_dim,
                           self.rank, self.world, self.device, uniform)

    def fake_labels(self, stream: Stream, counter: int) -> torch.Tensor | None:
        if not self.ctx.num_classes:
            return None
        return local_labels(self.cfg.seed, stream, counter, self.cfg.batch_size, self.ctx.num_classes,
                            self.rank, self.world, self.device, weights=self.ctx.label_weights)

    def generate(self, net: nn.Module, z: torch.Tensor, y: torch.Tensor | None, counter: int, first: int,
                 noise_stream: Stream | None = None, mix_stream: Stream | None = None, **style) -> torch.Tensor:
        """G's output for latents whose first row is global sample ``first``. A style G also gets its
        per-sample noise maps and style mixing (probability ``train.style_mixing``) from the two streams,
        and ``style`` (``update_w_avg``, ``return_ws``)."""
        if not self.ctx.style:
            return call(net, z, y)
        seed, n = self.cfg.seed, z.shape[0]
        noise = noise_maps(self.G.noise_resolutions, seed, noise_stream, counter, first, n, self.device)
        mix = (mixing(self.G.num_ws, z.shape[1], seed, mix_stream, counter, first, n, self.cfg.style_mixing,
                      self.device) if self.cfg.style_mixing > 0 else None)
        return net(z, y, noise=noise, mixing=mix, **style)

    def train_step(self, step: int, real_batch: RealBatch) -> StepStats:
        """Generator step ``step`` (0-based). D step ``counter`` indexes the data, the D draws and the R1
        schedule, so a resumed run continues them exactly."""
        t, r1, r2 = self.cfg, [], []
        for k in range(t.n_critic):
            counter = step * t.n_critic + k
            real, y_real = real_batch(counter)
            if self.ctx.channels_last:
                real = real.contiguous(memory_format=torch.channels_last)
            if self.ctx.num_classes and y_real is None:
                raise ValueError("a conditional model needs labels for the real data")
            y_real = y_real if self.ctx.num_classes else None
            alpha = self.noise(Stream.ALPHA, counter, 1, uniform=True) if self.loss.needs_gradient_penalty else None
            d = self.d_main(real, y_real, self.noise(Stream.Z_D, counter), self.fake_labels(Stream.Y_D, counter),
                            alpha, counter, penalize=self.fused_reg)
            if self.fused_reg:
                p1, p2 = d.r1, d.r2
            elif self.d_reg_on and counter % t.r1_interval == 0:
                p1, p2 = self.d_reg(real, y_real, counter)
            else:
                p1 = p2 = None
            r1 += [p1] if p1 is not None else []
            r2 += [p2] if p2 is not None else []
            self.augment.step(counter)  # ADA: p moves every ada_interval D steps (all-reduced)
        loss_g = self.g_main(self.noise(Stream.Z_G, step), self.fake_labels(Stream.Y_G, step), step, real, y_real)
        pl = self.g_reg(step) if self.pl is not None and step % t.pl_interval == 0 else None
        return StepStats(d, loss_g, _mean(r1), _mean(r2), pl)

    # ---- the one funnel of D calls
    def discriminate(self, x: torch.Tensor, y: torch.Tensor | None, training_d: bool, counter: int = 0,
                     first: int = 0, aug_stream: Stream | None = None) -> torch.Tensor:
        """D's logits for ``x`` after the augmentation (``train.augment``; drawn per global sample index
        from ``aug_stream``, ``counter`` and ``first``, the global index of x's first row): through the DDP
        wrapper in D's phases (``training_d``), the bare module in G's (no DDP hooks, no gradient sync).
        Every D call of a step passes here."""
        if aug_stream is not None:
            x = self.augment(x, aug_stream, counter, first)
        elif self.augment.kind != "none":
            raise ValueError("an augmented run needs the augmentation stream of every D call")
        return call(self.D_ddp if training_d else self.D, x, y)

    # ---- accumulation and updates
    def _rounds(self, n: int, micro: int | None):
        """(slice, loss weight, last) of each micro-batch of a worker's batch of ``n`` rows (one: ``micro``
        None)."""
        micro = micro or n
        if n % micro:
            raise ValueError(f"train.batch_per_gpu={micro} does not divide the per-worker batch {n}")
        k = n // micro
        for i in range(k):
            yield slice(i * micro, (i + 1) * micro), (1.0 if k == 1 else micro / n), i == k - 1

    @staticmethod
    def _sync(ddp: nn.Module, last: bool):
        """DDP's gradient all-reduce on the last micro-batch only (forward and backward inside)."""
        if last or not isinstance(ddp, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return ddp.no_sync()

    def _backward(self, loss: torch.Tensor, weight: float) -> None:
        self.scaler.scale(loss if weight == 1.0 else loss * weight).backward()

    def _update(self, opt, loss: torch.Tensor) -> None:
        if self.guard is None or self.guard.ok("D" if opt is self.opt_d else "G", opt, loss):
            self.scaler.step(opt)
            self.scaler.update()
        opt.zero_grad(set_to_none=True)

    # ---- phases
    def d_main(self, real: torch.Tensor, y_real: torch.Tensor | None, z: torch.Tensor,
               y_fake: torch.Tensor | None, alpha: torch.Tensor | None = None, counter: int = 0,
               penalize: bool = False) -> PhaseStats:
        """``alpha``: WGAN-GP interpolation weights, one per sample (drawn per global sample index).

        ``penalize`` (``train.r1_interval=1``, :func:`distgan.regularizers.fused_d_reg`): R1 / R2 are part
        of this loss, as in R3GAN's ``AccumulateDiscriminatorGradients``: the reals (R1) and the detached
        fakes (R2) require grad, D runs once on each, and adversarial loss + γ1/2 E||∇D(x)||² +
        γ2/2 E||∇D(G(z))||² has one backward (through DDP: one all-reduce) and one Adam update. That D
        forward runs in fp32, as the lazy D reg phase does (the penalties' squared input gradients lose too
        much in bf16 / fp16); G's fakes still follow ``train.precision``. Without ``penalize``, the fakes
        are kept for R2 (``train.r2_gamma``) in the D reg phase of the same D step."""
        t, self._fakes = self.cfg, []
        losses, totals, reals, fakes, r1s, r2s = [], [], [], [], [], []
        pen1, pen2 = penalize and t.r1_gamma > 0, penalize and t.r2_gamma > 0
        d_precision = "fp32" if penalize else t.precision
        self._train_d(True)
        for sl, weight, last in self._rounds(real.shape[0], self.micro):
            first, yf, yr = self.first + sl.start, _rows(y_fake, sl), _rows(y_real, sl)
            with torch.no_grad(), autocast(t.precision, self.device):  # unwrapped G: no DDP hooks, no gradient
                fake = self.generate(self.G, z[sl], yf, counter, first, noise_stream=Stream.NOISE_D,
                                     mix_stream=Stream.MIX_D, update_w_avg=True)
            x_real = real[sl].detach().requires_grad_(True) if pen1 else real[sl]
            x_fake = wide(fake.detach()).requires_grad_(True) if pen2 else wide(fake) if penalize else fake
            with self._sync(self.D_ddp, last):
                with autocast(d_precision, self.device):
                    real_logits = self.discriminate(x_real, yr, True, counter, first, aug_stream=Stream.AUG_REAL)
                    fake_logits = self.discriminate(x_fake, yf, True, counter, first, aug_stream=Stream.AUG_FAKE)
                    loss = self.loss.d_loss(real_logits.float(), fake_logits.float())
                if self.loss.needs_gradient_penalty:
                    loss = loss + self.loss.gp_weight * self._gradient_penalty(real[sl], fake, alpha[sl], yr,
                                                                                 counter, first)
                total = loss  # both logits are in it: every D parameter is in the graph, every DDP bucket fires
                if pen1:
                    r1s.append(r1_penalty(real_logits, x_real, self.scaler) * (self.gammas[0] / 2))
                    total = total + r1s[-1]
                if pen2:
                    r2s.append(r2_penalty(fake_logits, x_fake, self.scaler) * (self.gammas[1] / 2))
                    total = total + r2s[-1]
                self._backward(total, weight)
            self.augment.observe(real_logits)
            if t.r2_gamma > 0 and not penalize:
                self._fakes.append((fake, yf))
            losses.append(loss.detach())
            totals.append(total.detach())
            reals.append(real_logits.detach().float().mean())
            fakes.append(fake_logits.detach().float().mean())
        if self.ctx.style:
            self.G.flush_w_avg()  # once per D step, all-reduced: the same w_avg on every rank
        loss = _mean(losses)
        self._update(self.opt_d, _mean(totals))  # the guard judges the loss that was backpropagated
        return PhaseStats(loss, _mean(reals), _mean(fakes),
                          *(x.detach() if x is not None else None for x in (_mean(r1s), _mean(r2s))))

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor,
                          y: torch.Tensor | None, counter: int = 0, first: int = 0) -> torch.Tensor:
        """WGAN-GP: (||∇D(x̂)|| - 1)² on random interpolates x̂ (Gulrajani et al. 2017); conditional
        models score x̂ with the real labels."""
        alpha = alpha.view(real.shape[0], *([1] * (real.dim() - 1))).to(real.device)
        x_hat = (alpha * real + (1 - alpha) * fake.to(real.dtype)).detach().requires_grad_(True)
        with autocast(self.cfg.precision, self.device):
            out = self.discriminate(x_hat, y, True, counter, first, aug_stream=Stream.AUG_GP)
        grad_sq = input_gradient_sq(out, x_hat, self.scaler)
        # the epsilon keeps sqrt differentiable at a zero gradient
        return (grad_sq.add(1e-12).sqrt() - 1).pow(2).mean() + out.float().mean() * 0

    def d_reg(self, real: torch.Tensor, y_real: torch.Tensor | None, counter: int = 0):
        """Lazy R1 on reals (Mescheder et al. 2018) and R2 on D main's fakes (R3GAN): γ/2 E||∇D(x)||² each,
        times the interval (StyleGAN2), in fp32, as a second update after D main's. Returns the two
        penalties (None for one that is off). ``train_step`` runs it for intervals > 1 only (interval 1:
        D main carries the penalties); called directly it needs D main's fakes for R2."""
        t = self.cfg
        self._train_d(True)
        r1s, r2s, totals = [], [], []
        for i, (sl, weight, last) in enumerate(self._rounds(real.shape[0], self.micro)):
            first, loss, anchor = self.first + sl.start, 0.0, 0.0
            with self._sync(self.D_ddp, last):
                if t.r1_gamma > 0:
                    x = real[sl].detach().requires_grad_(True)
                    logits = self.discriminate(x, _rows(y_real, sl), True, counter, first,
                                               aug_stream=Stream.AUG_REAL_REG)
                    r1s.append(r1_penalty(logits, x, self.scaler) * (self.gammas[0] / 2))
                    loss, anchor = r1s[-1], logits.float().mean() * 0
                if t.r2_gamma > 0:
                    fake, yf = self._fakes[i]  # D main's, of this micro-batch
                    x = wide(fake.detach()).requires_grad_(True)  # bf16/fp16 fakes become fp32 here
                    logits = self.discriminate(x, yf, True, counter, first, aug_stream=Stream.AUG_FAKE_REG)
                    r2s.append(r2_penalty(logits, x, self.scaler) * (self.gammas[1] / 2))
                    loss, anchor = loss + r2s[-1], anchor + logits.float().mean() * 0
                # `logits * 0` puts every D parameter in the graph so each DDP bucket fires (pytorch #63812)
                total = loss * t.r1_interval + anchor
                self._backward(total, weight)
            totals.append(total.detach())
        self._fakes = []
        self._update(self.opt_d, _mean(totals))
        return tuple(x.detach() if x is not None else None for x in (_mean(r1s), _mean(r2s)))

    def d_r1(self, real: torch.Tensor, y_real: torch.Tensor | None, counter: int = 0) -> torch.Tensor:
        """The D reg phase with R1 alone (the loss's penalty γ/2 E||∇D(x)||², before the interval factor)."""
        return self.d_reg(real, y_real, counter)[0]

    def g_main(self, z: torch.Tensor, y_fake: torch.Tensor | None, step: int = 0, real: torch.Tensor | None = None,
               y_real: torch.Tensor | None = None) -> torch.Tensor:
        """G through DDP, D frozen. A loss that pairs fakes with reals (``g_needs_real``) also scores
        ``real`` (the last D step's batch) with D, without gradient."""
        t, losses = self.cfg, []
        self._train_d(False)  # frozen: no D gradients computed, none all-reduced
        for sl, weight, last in self._rounds(z.shape[0], self.micro):
            first, yf = self.first + sl.start, _rows(y_fake, sl)
            with self._sync(self.G_ddp, last):
                with autocast(t.precision, self.device):
                    fake = self.generate(self.G_ddp, z[sl], yf, step, first, noise_stream=Stream.NOISE_G,
                                         mix_stream=Stream.MIX_G)
                    fake_logits = self.discriminate(fake, yf, False, step, first, aug_stream=Stream.AUG_FAKE_G)
                    real_logits = None
                    if self.loss.g_needs_real:
                        with torch.no_grad():
                            real_logits = self.discriminate(real[sl], _rows(y_real, sl), False, step, first,
                                                            aug_stream=Stream.AUG_REAL_G).float()
                    loss = self.loss.g_loss(fake_logits.float(), real_logits)
                self._backward(loss, weight)
            losses.append(loss.detach())
        loss = _mean(losses)
        self._update(self.opt_g, loss)
        self._train_d(True)
        return loss

    def g_reg(self, step: int) -> torch.Tensor:
        """Lazy path-length regularisation (StyleGAN2, section 3.2) on its own global batch of
        ``batch_size / pl_batch_shrink`` fakes, in fp32, times ``pl_interval``; pl_mean moves once per phase
        from the lengths of the whole global batch (all-reduced). Returns the penalty (before the interval)."""
        t = self.cfg
        batch = t.batch_size // t.pl_batch_shrink
        first0 = first_index(batch, self.rank, self.world)
        z = local_noise(t.seed, Stream.Z_PL, step, batch, self.ctx.latent_dim, self.rank, self.world, self.device)
        y = (local_labels(t.seed, Stream.Y_PL, step, batch, self.ctx.num_classes, self.rank, self.world, self.device,
                          weights=self.ctx.label_weights) if self.ctx.num_classes else None)
        losses = []
        micro = self.micro // t.pl_batch_shrink if self.micro else None  # validated: pl_batch_shrink divides it
        for sl, weight, last in self._rounds(z.shape[0], micro):
            first = first0 + sl.start
            with self._sync(self.G_ddp, last):
                img, ws = self.generate(self.G_ddp, z[sl], _rows(y, sl), step, first, noise_stream=Stream.NOISE_PL,
                                        mix_stream=Stream.MIX_PL, return_ws=True)
                direction = path_length_noise(tuple(img.shape[1:]), t.seed, Stream.PL_DIR, step, first, img.shape[0],
                                              self.device)
                loss = self.pl(img, ws, direction)
                self._backward(loss * t.pl_interval, weight)
            losses.append(loss.detach())
        self.pl.flush()  # a collective, once per phase
        loss = _mean(losses)
        self._update(self.opt_g, loss)
        return loss

    # ---- what a checkpoint keeps of the step
    def state_dict(self) -> dict:
        return {"augment": self.augment.state_dict(), "pl": self.pl.state_dict() if self.pl is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.augment.load_state_dict(state.get("augment"))
        if self.pl is not None and state.get("pl") is not None:
            self.pl.load_state_dict(state["pl"])
