"""R3GAN's schedules (brownvc/R3GAN, training/training_loop.py), for every model: the learning rates, Adam's
beta2, the R1/R2 weight gamma, the G_ema half-life and the augmentation probability each follow a cosine from
a base value to a final value over ``train.schedule_kimg`` thousand images, optionally after a linear
warm-up of the learning rate (``train.schedule_warmup_kimg``, from 0) and a hold at the base values
(``train.schedule_hold_kimg``); after the schedule every value stays at its final one.

The clock is the images the generator has been trained on before the step, ``step x train.batch_size``,
not the step, so a schedule means the same on any world size; and it is a pure function of the step, so a
resumed run continues it exactly (nothing is saved). A ``*_final`` left null keeps that value constant.

Base values are the ordinary settings: ``train.lr_g`` / ``train.lr_d`` (D's final rate keeps the ratio:
``lr_final x lr_d / lr_g``), ``train.beta2``, ``train.r1_gamma`` / ``train.r2_gamma`` (R2 keeps the ratio
too), ``train.ema_kimg`` (a scheduled EMA has no ramp-up, as R3GAN) and ``train.augment_p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distgan.config import TrainConfig


def cosine_decay(nimg: float, base: float, final: float, total_nimg: float, warmup_value: float = 0.0,
                 warmup_nimg: float = 0.0, hold_nimg: float = 0.0) -> float:
    """R3GAN's ``cosine_decay_with_warmup``: ``warmup_value`` -> ``base`` linearly over ``warmup_nimg``,
    ``base`` held for ``hold_nimg`` more, then half a cosine to ``final`` at ``total_nimg``, then ``final``."""
    if nimg > total_nimg:
        return float(final)
    if warmup_nimg > 0 and nimg < warmup_nimg:
        return float(warmup_value + (base - warmup_value) * nimg / warmup_nimg)
    start = warmup_nimg + hold_nimg
    if hold_nimg > 0 and nimg <= start:
        return float(base)
    decay = 0.5 * (1 + math.cos(math.pi * (nimg - start) / (total_nimg - start)))
    return float(base + (1 - decay) * (final - base))


@dataclass(frozen=True)
class Values:
    """The scheduled settings of one step (None: not scheduled, the setting applies as configured)."""

    lr_g: float
    lr_d: float
    beta2: float
    r1_gamma: float
    r2_gamma: float
    ema_nimg: float | None  # G_ema half-life in images (no ramp-up)
    aug_p: float | None

    def scalars(self) -> dict[str, float]:
        """For TensorBoard: ``sched/lr`` (G's), ``sched/beta2``, ``sched/gamma`` (R1's, else R2's),
        ``sched/ema_kimg``, ``sched/aug_p``."""
        out = {"sched/lr": self.lr_g, "sched/beta2": self.beta2,
               "sched/gamma": self.r1_gamma if self.r1_gamma > 0 else self.r2_gamma}
        if self.ema_nimg is not None:
            out["sched/ema_kimg"] = self.ema_nimg / 1000
        if self.aug_p is not None:
            out["sched/aug_p"] = self.aug_p
        return out

    def ema_beta(self, batch: int) -> float | None:
        """R3GAN's per-step G_ema decay 0.5 ** (batch / half-life); None when the EMA is not scheduled."""
        return None if self.ema_nimg is None else 0.5 ** (batch / max(self.ema_nimg, 1e-8))


def enabled(t: TrainConfig) -> bool:
    return t.schedule_kimg is not None


def at(t: TrainConfig, step: int) -> Values | None:
    """The settings of generator step ``step`` (0-based: the images seen before it), or None without a
    schedule (``train.schedule_kimg`` null)."""
    if not enabled(t):
        return None
    nimg, total = step * t.batch_size, t.schedule_kimg * 1000
    warm, hold = t.schedule_warmup_kimg * 1000, t.schedule_hold_kimg * 1000

    def cos(base: float, final: float | None) -> float:  # held at base during the warm-up and the hold
        return float(base) if final is None else cosine_decay(nimg, base, final, total, 0.0, 0.0, warm + hold)

    def lr(base: float) -> float:  # warmed up from 0, then held, then decayed by the same factor for G and D
        if t.lr_final is None and not warm:
            return float(base)
        final = base if t.lr_final is None else base * t.lr_final / t.lr_g
        return cosine_decay(nimg, base, final, total, 0.0, warm, hold)

    g1, g2 = t.r1_gamma, t.r2_gamma
    ratio = None if t.gamma_final is None else t.gamma_final / (g1 if g1 > 0 else g2)
    return Values(
        lr_g=lr(t.lr_g), lr_d=lr(t.lr_d), beta2=cos(t.beta2, t.beta2_final),
        r1_gamma=cos(g1, None if ratio is None else g1 * ratio),
        r2_gamma=cos(g2, None if ratio is None else g2 * ratio),
        ema_nimg=None if t.ema_final_kimg is None else cos(t.ema_kimg * 1000, t.ema_final_kimg * 1000),
        aug_p=None if t.augment_p_final is None else cos(_aug_base(t), t.augment_p_final))


def _aug_base(t: TrainConfig) -> float:
    """The augmentation p a schedule starts from: ``train.augment_p``, else the augmentation's default."""
    if t.augment_p is not None:
        return float(t.augment_p)
    return 1.0 if t.augment == "diffaugment" else 0.0
