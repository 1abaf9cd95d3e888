"""Regularisers beyond the loss: StyleGAN2's path-length penalty for G, zero-centred R1/R2 for D, and the
input-gradient norm that R1, R2 and WGAN-GP's penalty share.

Each returns a loss to add (already a mean over the local batch, so DDP's gradient average over equal
shards is the gradient of the global mean). The caller runs them in fp32 (outside bf16 autocast) and, when
lazy, multiplies by the interval and corrects Adam's lr/betas by c = k / (k + 1) (StyleGAN2, appendix B);
R1 / R2 at every D step (:func:`fused_d_reg`) are part of D main's loss instead, with no correction.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from distgan.rng import per_sample

_NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)


def wide(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 for sums and squares; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def input_gradient_sq(outputs: torch.Tensor, inputs: torch.Tensor, scaler=_NO_SCALING) -> torch.Tensor:
    """Per-sample ||dD(x)/dx||² with a graph for the double backward, correct under fp16 loss scaling:
    the scaled outputs are differentiated (no underflow), then the gradient is unscaled."""
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    (grad,) = torch.autograd.grad(wide(outputs).sum() * scale, inputs, create_graph=True)
    return (wide(grad) / scale).flatten(1).pow(2).sum(1)


def path_length_noise(shape: tuple[int, int, int], seed: int, stream: int, counter: int, first: int, n: int,
                      device="cpu") -> torch.Tensor:
    """The random image-space direction y ~ N(0, I) / sqrt(H W) for samples ``first .. first + n - 1``."""
    c, h, w = shape
    return per_sample("normal", seed, stream, counter, first, n, (c, h, w), device) / math.sqrt(h * w)


class PathLengthPenalty:
    """Path-length regularisation (Karras et al. 2020, section 3.2): for a random image-space direction y,
    J_w^T y should have the same length a for every w; a is the running mean of the lengths.

    lengths_i = sqrt(mean over the num_ws layers of ||d(sum img_i * y_i) / d w_il||^2),
    loss = weight * mean_i (lengths_i - pl_mean)^2, then at :meth:`flush`
    pl_mean <- pl_mean + decay * (mean of the lengths over the GLOBAL batch - pl_mean).

    Calls accumulate the lengths; ``flush`` (every rank, once per G-reg step, after its micro-batches)
    all-reduces them and moves pl_mean once. So every rank, world size and micro-batch split holds the same
    pl_mean; StyleGAN2-ADA instead moves it per GPU from the local batch, and its ranks drift apart.
    Two deliberate differences from StyleGAN2, both of relative size ``decay``: the penalty uses pl_mean as
    of the start of the step (the update needs every micro-batch's lengths, and a micro-batch's backward runs
    before the next one exists), and as a constant (no gradient through the running mean, which would need
    a differentiable all-reduce inside DDP's backward). ``state_dict`` carries pl_mean across a resume.
    """

    def __init__(self, decay: float = 0.01, weight: float = 2.0):
        self.decay, self.weight = decay, weight
        self.pl_mean = torch.zeros([], dtype=torch.float64)
        self._sum, self._count = None, 0  # lengths since the last flush

    def __call__(self, img: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``img`` = G.synthesis(ws, ...) (with ws in the graph), ``noise`` from :func:`path_length_noise`.
        The loss holds ``img * 0`` so that every G parameter (e.g. the last toRGB bias, which does not move
        J_w) is in the graph and every DDP bucket fires."""
        (grad,) = torch.autograd.grad((wide(img) * noise).sum(), ws, create_graph=True)
        lengths = wide(grad).square().sum(2).mean(1).sqrt()
        total = lengths.detach().double().sum()
        self._sum = total if self._sum is None else self._sum + total
        self._count += lengths.shape[0]
        self.pl_mean = self.pl_mean.to(lengths.device)
        penalty = (lengths - self.pl_mean.to(lengths.dtype)).square().mean()
        return penalty * self.weight + wide(img).sum() * 0

    def flush(self) -> None:
        """Move pl_mean once by the lengths accumulated since the last flush. A collective: every rank calls it."""
        total = self._sum if self._sum is not None else self.pl_mean.new_zeros(())
        stats = torch.stack([total.to(self.pl_mean.device), self.pl_mean.new_full((), self._count)])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        self._sum, self._count = None, 0
        moved = self.pl_mean + self.decay * (stats[0] / stats[1].clamp(min=1) - self.pl_mean)
        self.pl_mean = torch.where(stats[1] > 0, moved, self.pl_mean)  # no host sync

    def state_dict(self) -> dict:
        return {"pl_mean": float(self.pl_mean)}

    def load_state_dict(self, state: dict) -> None:
        self.pl_mean = torch.tensor(float(state["pl_mean"]), dtype=torch.float64)


def fused_d_reg(t) -> bool:
    """Whether R1 / R2 (``t``: a TrainConfig) are part of D main's loss, one backward and one Adam update per
    D step (R3GAN; StyleGAN2-ADA's "Dboth"): when they are on at every D step (``train.r1_interval=1``).
    Larger intervals keep the lazy D reg phase, a separate update scaled by the interval."""
    return t.r1_interval == 1 and (t.r1_gamma > 0 or t.r2_gamma > 0)


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, scaler=_NO_SCALING) -> torch.Tensor:
    """Mean ||dD(x)/dx||^2 on reals (Mescheder et al. 2018); ``real`` must require grad. Times gamma / 2."""
    return input_gradient_sq(real_logits, real, scaler).mean()


def r2_penalty(fake_logits: torch.Tensor, fake: torch.Tensor, scaler=_NO_SCALING) -> torch.Tensor:
    """Mean ||dD(G(z))/dG(z)||^2 on fakes, with the fakes detached from G and requiring grad (R3GAN's R2)."""
    return input_gradient_sq(fake_logits, fake, scaler).mean()
