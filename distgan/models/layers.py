"""Layers and helpers the models share."""

from __future__ import annotations

from torch import nn

from distgan.errors import UserError

# the conv models' image sides -> (G's starting size, number of 2x up/down-samplings)
IMAGE_LAYOUTS = {28: (7, 2), 32: (4, 3), 64: (4, 4)}


def image_layout(model: str, size: int) -> tuple[int, int]:
    if size not in IMAGE_LAYOUTS:
        raise UserError(f"model={model} supports {', '.join(map(str, IMAGE_LAYOUTS))} px images, got {size}; "
                        "set dataset.resolution")
    return IMAGE_LAYOUTS[size]


def norm2d(kind: str, channels: int) -> nn.Module:
    """``model.norm_g`` / ``model.norm_d``: BatchNorm or nothing."""
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


def apply_spectral_norm(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) on every conv, linear and embedding layer of ``module``."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear, nn.Embedding)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            apply_spectral_norm(child)
