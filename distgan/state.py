"""What a checkpoint holds, written and read in one place.

:class:`TrainState` is the full training state (DDP GAN training loses work when a resume drops the
optimizers' moments or the step): the networks, G_ema, both optimizers, the fp16 scaler, the step, the
CPU RNG, the config, the data shape, the fixed sample latents, the skip counters, ADA's augmentation
probability with its partial statistic and the path-length running mean (StyleGAN2-ADA saves neither).
``checkpoint.py`` writes it atomically with a sha256; here it becomes a plain dict of tensors and numbers
(so ``torch.load(weights_only=True)`` can read it) and back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from distgan.errors import UserError


@dataclass
class TrainState:
    G: dict[str, torch.Tensor]
    D: dict[str, torch.Tensor]
    step: int = 0
    G_ema: dict[str, torch.Tensor] | None = None
    opt_G: dict[str, Any] | None = None
    opt_D: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    images_seen: int = 0
    rng_cpu: torch.Tensor | None = None
    config: dict[str, Any] | None = None  # distgan.config.to_dict of the run's config
    data_shape: list[int] | None = None  # (C, H, W) or (2,)
    num_classes: int = 0  # > 0: a class-conditional model of this many classes
    fixed_z: torch.Tensor | None = None  # the sample grid's latents
    fixed_y: torch.Tensor | None = None  # and labels (conditional models)
    skipped_steps: int = 0  # updates skipped for non-finite gradients (train.skip_nonfinite)
    skipped_images: int = 0  # images that failed to decode and were replaced (dataset.skip_bad)
    augment: dict[str, Any] | None = None  # train.augment=ada: p, r_t and the sums since the last update of p
    path_length: dict[str, Any] | None = None  # train.pl_weight > 0: the running mean of the path lengths

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: it deep-copies tensors

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> TrainState:
        """A state read from ``source``; a file that is not a distgan checkpoint is one UserError line."""
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or "G" not in d or "D" not in d:
            raise UserError(f"checkpoint {source} is not a distgan checkpoint (no generator and discriminator)")
        return cls(**{k: v for k, v in d.items() if k in known})

    def require(self, *names: str, source: str, purpose: str) -> None:
        """Raise a UserError if any of ``names`` is missing (an older or partial checkpoint)."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise UserError(f"checkpoint {source} cannot be used to {purpose}: it lacks {', '.join(missing)}")
