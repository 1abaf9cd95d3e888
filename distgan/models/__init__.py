"""Model registry: ``MODELS[name](cfg, shape) -> (G, D)``.

``shape`` is the data shape without the batch dimension: ``(C, H, W)`` for images, ``(2,)`` for the
2D mixtures. Every D returns raw logits of shape ``(N,)``; every G maps ``(N, latent_dim)`` to data.
Conditional models (``model.conditional=true``) take class labels too: ``G(z, y)`` and ``D(x, y)``.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from distgan.config import ModelConfig
from distgan.errors import UserError
from distgan.models.conditional import ConditionalGenerator, ProjectionDiscriminator
from distgan.models.dcgan import build_dcgan
from distgan.models.mlp import build_mlp
from distgan.models.resnet import build_resnet

MODELS = {"mlp": build_mlp, "dcgan": build_dcgan, "resnet": build_resnet}


def build_models(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """``num_classes``: classes of the (labelled) dataset; needed when ``cfg.conditional``."""
    if cfg.name not in MODELS:
        raise UserError(f"unknown model {cfg.name!r}; choose one of: {', '.join(MODELS)}")
    if not cfg.conditional:
        G, D = MODELS[cfg.name](cfg, tuple(shape))
    else:
        if num_classes < 2:
            raise UserError("model.conditional=true needs a labelled dataset with at least 2 classes "
                            "(fashion_mnist, mnist, cifar10, image_folder); set model.conditional=false")
        embed_dim = cfg.latent_dim  # class code as wide as z
        G, D = MODELS[cfg.name](replace(cfg, latent_dim=cfg.latent_dim + embed_dim), tuple(shape))
        G, D = ConditionalGenerator(G, num_classes, embed_dim), ProjectionDiscriminator(D, num_classes)
    if cfg.spectral_norm:
        apply_spectral_norm(D)
    return G, D


def apply_spectral_norm(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) on every conv, linear and embedding layer of ``module``."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear, nn.Embedding)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            apply_spectral_norm(child)
