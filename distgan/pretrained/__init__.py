"""Networks the field already has: NVIDIA's StyleGAN2-ADA-pytorch / StyleGAN3 pickles, read without running
the code they carry (:mod:`distgan.pretrained.unpickle`) and turned into distgan's networks.

The stable API (``init=PATH``, ``launch/sample.py checkpoint=X.pkl``, ``launch/evaluate.py``)::

    p = distgan.pretrained.load("ffhq256.pkl")      # -> Pretrained (one UserError line for anything else)
    G, D = distgan.models.build_models(p.cfg_model, p.data_shape, p.num_classes)
    G.load_state_dict(p.G_ema_state)                # distgan's names; D_state / G_state when the pickle has them

Layering: this package imports distgan.config, errors, models (and checkpoint, state); never launcher,
commands, train, cli or metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distgan.config import ModelConfig
from distgan.errors import UserError

PICKLE_SUFFIXES = (".pkl", ".pickle")


@dataclass
class Pretrained:
    cfg_model: ModelConfig  # model=stylegan2 with the pickle's architecture
    data_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 0: unconditional
    G_state: dict[str, torch.Tensor] | None  # distgan state-dict names; None when the pickle lacks the network
    D_state: dict[str, torch.Tensor] | None
    G_ema_state: dict[str, torch.Tensor] | None
    source: str  # the path read
    format: str = "nvidia"  # which converter read it
    info: dict[str, Any] = field(default_factory=dict)  # training_set_kwargs, module source hash, ...

    @property
    def generator_state(self) -> dict[str, torch.Tensor]:
        """G_ema when the pickle has it, else G."""
        return self.G_ema_state if self.G_ema_state is not None else self.G_state


def is_pickle(path: str | Path) -> bool:
    """Whether ``path`` names a network pickle (a file ending in .pkl/.pickle) rather than a distgan checkpoint."""
    p = Path(str(path)).expanduser()
    return p.suffix.lower() in PICKLE_SUFFIXES and not p.is_dir()


def _nvidia_detect(obj: Any) -> bool:
    from distgan.pretrained.unpickle import ModuleRecord

    def persistent(r):
        return isinstance(r, ModuleRecord) and r.origin.startswith("persistent:")

    return persistent(obj) or isinstance(obj, dict) and any(persistent(obj.get(k)) for k in ("G", "G_ema"))


def _nvidia_convert(obj: Any, source: str) -> Pretrained:
    from distgan.pretrained import nvidia

    return nvidia.convert(obj, source)


# name -> (detect(obj), convert(obj, source) -> Pretrained). A new format (R3GAN's plain module pickles)
# registers its classes in unpickle.MODULE_CLASSES and adds a row here; the first row that detects wins.
def _r3gan_detect(obj: Any) -> bool:
    from distgan.pretrained import r3gan

    return r3gan.detect(obj)


def _r3gan_convert(obj: Any, source: str) -> Pretrained:
    from distgan.pretrained import r3gan

    return r3gan.convert(obj, source)


CONVERTERS: dict[str, tuple[Callable[[Any], bool], Callable[[Any, str], Pretrained]]] = {
    "nvidia": (_nvidia_detect, _nvidia_convert),
    "r3gan": (_r3gan_detect, _r3gan_convert),
}


def load(path: str | Path) -> Pretrained:
    """Read a network pickle safely and convert it; anything unreadable or unsupported is one UserError line."""
    from distgan.pretrained import nvidia, r3gan  # noqa: F401 - register their class names with the unpickler
    from distgan.pretrained.unpickle import load as unpickle_load

    source = str(path)
    obj = unpickle_load(str(Path(source).expanduser()))
    for name, (detect, convert) in CONVERTERS.items():
        if detect(obj):
            p = convert(obj, source)
            p.format = name
            return p
    held = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
    raise UserError(f"{source} is not a network pickle distgan can read (no StyleGAN2-ADA/StyleGAN3 G or G_ema, "
                    f"nor R3GAN's; it holds {held})")
