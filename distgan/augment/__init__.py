"""Differentiable augmentations applied to every image D sees, real and fake (``train.augment``).

Every entry of :data:`AUGMENTS` has the signature ``augment(x, p, seed, stream, counter, first_index) -> x'``:
``x`` is this rank's (micro-)batch, ``first_index`` the global index of its first sample; each sample's
random draws depend on (seed, stream, counter, its global index) only, so 1 worker and W workers augment
sample i identically. ``p`` = 0 returns ``x`` itself.

- ``none``: the identity.
- ``ada``: ADA's ``bgc`` pipeline (:mod:`distgan.augment.ada`) with p from :class:`AdaptiveP`.
- ``diffaugment``: DiffAugment's colour, translation and cutout (:mod:`distgan.augment.diffaugment`), p = 1.
"""

from __future__ import annotations

import torch

from distgan.augment.ada import ADASpec, ada_augment
from distgan.augment.adaptive import AdaptiveP
from distgan.augment.diffaugment import diffaugment as _diffaugment  # keeps the name for the submodule


def no_augment(x: torch.Tensor, p: float, seed: int, stream: int, counter: int, first_index: int) -> torch.Tensor:
    return x


AUGMENTS = {"none": no_augment, "ada": ada_augment, "diffaugment": _diffaugment}

__all__ = ["AUGMENTS", "ADASpec", "AdaptiveP", "ada_augment", "no_augment"]
