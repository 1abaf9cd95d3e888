"""Model registry: ``MODELS[name](cfg, shape) -> (G, D)``.

``shape`` is the data shape without the batch dimension: ``(C, H, W)`` for images, ``(2,)`` for the
2D mixtures. Every D returns raw logits of shape ``(N,)``; every G maps ``(N, latent_dim)`` to data.
"""

from __future__ import annotations

from torch import nn

from distgan.config import ModelConfig
from distgan.errors import UserError
from distgan.models.dcgan import build_dcgan
from distgan.models.mlp import build_mlp

MODELS = {"mlp": build_mlp, "dcgan": build_dcgan}



def build_models(cfg: ModelConfig, shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    if cfg.name not in MODELS:
        raise UserError(f"unknown model {cfg.name!r}; choose one of: {', '.join(MODELS)}")
    G, D = MODELS[cfg.name](cfg, tuple(shape))
    if cfg.spectral_norm:
        apply_spectral_norm(D)
    return G, D


def apply_spectral_norm(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) on every conv and linear layer of ``module``."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear, nn.Embedding)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            apply_spectral_norm(child)
