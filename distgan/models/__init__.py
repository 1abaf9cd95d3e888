"""Model registry: ``MODELS[name]`` declares what a model trains on and builds ``(G, D)``.

``shape`` is the data shape without the batch dimension: ``(C, H, W)`` for images, ``(2,)`` for the
2D mixtures. Every D returns raw logits of shape ``(N,)``; every G maps ``(N, latent_dim)`` to data.
Conditional models (``model.conditional=true``) take class labels too: ``G(z, y)`` and ``D(x, y)``.
A ``style`` model (stylegan2) has a mapping network: in training its G also takes per-sample noise maps
and style mixing, and returns its w's for the path-length penalty; at sampling it takes a truncation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from distgan.config import Config, ModelConfig
from distgan.errors import UserError
from distgan.models.conditional import ConditionalGenerator, ProjectionDiscriminator
from distgan.models.dcgan import SIZES as DCGAN_SIZES
from distgan.models.dcgan import build_dcgan
from distgan.models.layers import apply_spectral_norm
from distgan.models.mlp import build_mlp
from distgan.models.r3gan import build_r3gan, check_r3gan
from distgan.models.resnet import SIZES as RESNET_SIZES
from distgan.models.resnet import build_resnet
from distgan.models.stylegan2 import SIZES as STYLEGAN2_SIZES
from distgan.models.stylegan2 import build_stylegan2, check_stylegan2


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[ModelConfig, tuple[int, ...]], tuple[nn.Module, nn.Module]]
    data: tuple[str, ...]  # dataset kinds it trains on ("image", "points"; distgan.data.DATASETS)
    sizes: tuple[int, ...] | None = None  # square image sides it supports; None: any
    channels_last: bool = False  # a conv model: channels_last memory format on CUDA
    check: Callable[[Config], None] | None = None  # the model's own settings rules
    style: bool = False  # a mapping network: noise maps, style mixing, path length, truncation (stylegan2)
    own_conditioning: bool = False  # builds its conditional G and D itself: build(cfg, shape, num_classes)
    batch_multiple: Callable[[ModelConfig], int] | None = None  # micro-batches must be multiples of it (mbstd)


def _leaky_relu_only(cfg: Config) -> None:
    if cfg.model.activation_g != "leaky_relu":
        raise UserError(f"model.activation_g applies to model=mlp; the {cfg.model.name} generator always uses ReLU")


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(build_mlp, data=("image", "points")),
    "dcgan": ModelSpec(build_dcgan, data=("image",), sizes=DCGAN_SIZES, channels_last=True, check=_leaky_relu_only),
    "resnet": ModelSpec(build_resnet, data=("image",), sizes=RESNET_SIZES, channels_last=True,
                        check=_leaky_relu_only),
    "stylegan2": ModelSpec(build_stylegan2, data=("image",), sizes=STYLEGAN2_SIZES, check=check_stylegan2, style=True,
                           own_conditioning=True, batch_multiple=lambda m: m.mbstd_span or m.mbstd_group),
    "r3gan": ModelSpec(build_r3gan, data=("image",), channels_last=True, check=check_r3gan, own_conditioning=True),
}


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def check(cfg: Config) -> None:
    """The model's rules against the data it is given (run by the
    launcher's pre-flight, distgan/launcher/preflight.py)."""
    from distgan import data

    model, kind = spec(cfg.model.name), data.spec(cfg.dataset.name).kind
    if kind not in model.data:
        fits = [n for n, m in MODELS.items() if kind in m.data]
        raise UserError(f"dataset={cfg.dataset.name} is {'2D points' if kind == 'points' else kind + 's'}: "
                        f"use model={' or model='.join(fits)}")
    size = data.resolution(cfg.dataset)
    if model.sizes and size is not None and size not in model.sizes:  # None: a folder/zip not yet indexed
        raise UserError(f"model={cfg.model.name} supports {', '.join(map(str, model.sizes))} px images, got {size}; "
                        "set dataset.resolution")
    if model.check:
        model.check(cfg)
    t = cfg.train
    if not model.style and (t.style_mixing > 0 or t.pl_weight > 0):
        fits = [n for n, m in MODELS.items() if m.style]
        raise UserError("train.style_mixing and train.pl_weight need a mapping network "
                        f"(model={' or model='.join(fits)}); model={cfg.model.name} has none: set them to 0")


def check_micro_batch(cfg: Config, micro: int) -> None:
    """Every micro-batch a worker runs must suit the model (StyleGAN2's D: whole minibatch-std groups)."""
    rule = spec(cfg.model.name).batch_multiple
    multiple = rule(cfg.model) if rule else 1
    if micro % multiple:
        raise UserError(f"model={cfg.model.name} needs a per-worker micro-batch that is a multiple of {multiple} "
                        f"(model.mbstd_span, else model.mbstd_group: D's minibatch-std groups), got {micro}: change "
                        "train.batch_size, train.batch_per_gpu, model.mbstd_span or model.mbstd_group")


def build_models(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """``num_classes``: classes of the (labelled) dataset; needed when ``cfg.conditional``."""
    model = spec(cfg.name)
    build = model.build
    if cfg.conditional and num_classes < 2:
        raise UserError("model.conditional=true needs a labelled dataset with at least 2 classes "
                        "(fashion_mnist, mnist, cifar10, or an image_folder/zip with labels); "
                        "set model.conditional=false")
    if model.own_conditioning:
        G, D = build(cfg, tuple(shape), num_classes if cfg.conditional else 0)
    elif not cfg.conditional:
        G, D = build(cfg, tuple(shape))
    else:
        embed_dim = cfg.latent_dim  # class code as wide as z
        G, D = build(replace(cfg, latent_dim=cfg.latent_dim + embed_dim), tuple(shape))
        G, D = ConditionalGenerator(G, num_classes, embed_dim), ProjectionDiscriminator(D, num_classes)
    if cfg.spectral_norm:
        apply_spectral_norm(D)
    return G, D
