"""Differentiable augmentations applied to every image D sees, real and fake (``train.augment``).

Every entry of :data:`AUGMENTS` has the signature ``augment(x, p, seed, stream, counter, first_index) -> x'``:
``x`` is this rank's (micro-)batch, ``first_index`` the global index of its first sample; each sample's
random draws depend on (seed, stream, counter, its global index) only, so 1 worker and W workers augment
sample i identically. ``p`` = 0 returns ``x`` itself.

- ``none``: the identity.
- ``ada``: ADA's ``bgc`` pipeline (:mod:`distgan.augment.ada`) with p from :class:`AdaptiveP`.
- ``diffaugment``: DiffAugment's colour, translation and cutout (:mod:`distgan.augment.diffaugment`), p = 1.
- ``r3gan``: R3GAN's pipeline (:mod:`distgan.augment.r3gan`: ADA's geometric x 1, colour x 0.5, cutout x 1) at a
  fixed or scheduled p (``train.augment_p``, default 0; ``train.augment_p_final``).

:class:`Augmenter` is what the GAN step's D funnel (``distgan.step.GANStep.discriminate``) holds: the
chosen augmentation and its p, adapted for ADA.
"""

from __future__ import annotations

import torch

from distgan.augment.ada import ADASpec, ada_augment
from distgan.augment.adaptive import AdaptiveP
from distgan.augment.diffaugment import diffaugment as _diffaugment  # keeps the name for the submodule
from distgan.augment.r3gan import r3gan_augment
from distgan.errors import UserError


def no_augment(x: torch.Tensor, p: float, seed: int, stream: int, counter: int, first_index: int) -> torch.Tensor:
    return x


AUGMENTS = {"none": no_augment, "ada": ada_augment, "diffaugment": _diffaugment, "r3gan": r3gan_augment}


class Augmenter:
    """``augmenter(x, stream, counter, first)``: ``train.augment`` at the current p.

    ``ada``: p starts at ``train.augment_p`` (default 0) and moves with :class:`AdaptiveP` from D's logits
    on reals (:meth:`observe` per micro-batch, :meth:`step` after every D step: a collective every
    ``train.ada_interval`` D steps, so every rank holds the same p). ``diffaugment``: a fixed p
    (``train.augment_p``, default 1). ``none``: the identity."""

    def __init__(self, kind: str, seed: int, p: float | None = None, adaptive: AdaptiveP | None = None):
        self.kind, self.fn, self.seed = kind, AUGMENTS[kind], seed
        self.adaptive = adaptive
        self.fixed_p = 0.0 if kind == "none" else (default_p(kind) if p is None else float(p))

    @classmethod
    def from_config(cls, t, device) -> Augmenter:
        if t.augment == "ada":
            return cls("ada", t.seed, adaptive=AdaptiveP(t.ada_target, t.ada_interval, t.ada_kimg,
                                                         p=t.augment_p or 0.0, device=device))
        return cls(t.augment, t.seed, p=t.augment_p)

    @property
    def p(self) -> float:
        return self.adaptive.p if self.adaptive is not None else self.fixed_p

    def __call__(self, x: torch.Tensor, stream: int, counter: int, first: int) -> torch.Tensor:
        return self.fn(x, self.p, self.seed, stream, counter, first) if self.p > 0 else x

    def observe(self, real_logits: torch.Tensor) -> None:
        if self.adaptive is not None:
            self.adaptive.observe(real_logits)

    def step(self, counter: int) -> None:
        """After D step ``counter``, on every rank (ADA: a collective every ``ada_interval`` D steps)."""
        if self.adaptive is not None:
            self.adaptive.step(counter)

    def scalars(self) -> dict[str, float]:
        """``aug/p`` and ``aug/rt`` for TensorBoard (ADA only; rt is NaN before the first update)."""
        return self.adaptive.scalars() if self.adaptive is not None else {}

    def state_dict(self) -> dict | None:
        return self.adaptive.state_dict() if self.adaptive is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.adaptive is not None and state is not None:
            self.adaptive.load_state_dict(state)


def default_p(kind: str) -> float:
    """p when ``train.augment_p`` is null: 0 for r3gan (its schedules start at 0), 1 for diffaugment."""
    return 0.0 if kind in ("none", "ada", "r3gan") else 1.0


def check(cfg, data_kind: str) -> None:
    """``train.augment`` is one of :data:`AUGMENTS` and fits the data (``data_kind``: the dataset's kind,
    ``image`` or ``points``); run by the launcher's pre-flight."""
    if cfg.train.augment not in AUGMENTS:
        raise UserError(f"unknown train.augment {cfg.train.augment!r}; choose one of: {', '.join(AUGMENTS)}")
    t = cfg.train
    if t.augment == "r3gan" and not t.augment_p and t.augment_p_final is None:
        raise UserError("train.augment=r3gan has a fixed or scheduled p that starts at 0: set train.augment_p "
                        "and/or train.augment_p_final (R3GAN: 0 -> 0.3 .. 0.55 with train.schedule_kimg)")
    if cfg.train.augment != "none" and data_kind != "image":
        raise UserError(f"train.augment={cfg.train.augment} augments images; dataset={cfg.dataset.name} is 2D "
                        "points: set train.augment=none")


__all__ = ["AUGMENTS", "ADASpec", "AdaptiveP", "Augmenter", "ada_augment", "check", "default_p", "no_augment",
           "r3gan_augment"]
