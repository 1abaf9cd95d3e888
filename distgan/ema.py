"""G_ema: the per-step decay for a half-life in images (with StyleGAN2-ADA's ramp-up), and the update of
G_ema's parameters and buffers from G's, used by the training loop (distgan/train.py) after every step."""

from __future__ import annotations

import torch

from distgan.config import Config


def ema_beta(cfg: Config, batch: int, images_seen: int) -> float:
    """Per-step decay for a G_ema half-life of ``ema_kimg`` thousand images, ramped up over the first
    images (StyleGAN2-ADA: the half-life is at most 5 % of the images seen so far). In images, not
    steps, so the average does not change with the world size or the batch."""
    half_life = min(cfg.train.ema_kimg * 1000, max(images_seen, batch) * 0.05)
    return 0.5 ** (batch / max(half_life, 1e-8))


class EmaPairs:
    """G_ema's parameters and buffers beside G's, listed once (the Parameter objects stay the same when their
    data is moved or converted): G_ema moves every step, and walking both module trees each time costs ~1 %
    of a small model's step."""

    def __init__(self, G_ema: torch.nn.Module, G: torch.nn.Module):
        self.params = list(G_ema.parameters()), list(G.parameters())
        self.buffers = list(G_ema.buffers()), list(G.buffers())

    @torch.no_grad()
    def update(self, beta: float) -> None:
        """G_ema <- G + beta (G_ema - G), parameter by parameter; buffers copied."""
        if self.params[0]:
            torch._foreach_lerp_(*self.params, 1 - beta)
        for b_ema, b in zip(*self.buffers):
            b_ema.copy_(b)
