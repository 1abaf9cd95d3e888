"""Training from trained networks: ``init=PATH`` (a new run starting from the weights of a network pickle or
of another distgan checkpoint), ``train.freeze_d`` (D's highest-resolution layers frozen, StyleGAN2-ADA's
``--freezed``), and the fake-label distribution of NVIDIA's loop (the training set's labels).

``init=`` is StyleGAN2-ADA's ``--resume``: G, D and G_ema take the init's weights; the optimizers are new,
and the step, the images seen and ADA's p start from zero. The model's settings are the init's (a pickle's
constructor arguments, a checkpoint's recorded model config); only the settings no weight depends on
(:data:`MAY_OVERRIDE`) may be set for the new run. Once the run has checkpoints of its own, ``resume=auto``
continues those and the init gives the model settings only.

The driver checks everything here once (distgan/launcher/preflight.py); every worker applies it
(distgan/train.py): :func:`configure` before the networks are built, :func:`freeze` before the
optimizers, :func:`start_from` in the resume step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from distgan import checkpoint
from distgan.config import Config, ModelConfig, from_dict
from distgan.errors import UserError
from distgan.state import TrainState

log = logging.getLogger("distgan")

# model keys that no weight's shape or value depends on: the new run may set them (NVIDIA's --resume builds
# the networks from the new run's options too, so a smaller per-GPU batch may take a smaller mbstd group)
MAY_OVERRIDE = ("fused_modconv", "mbstd_group", "mbstd_span")
# the settings a network pickle (model=stylegan2) decides; other model keys do not apply to it
PICKLE_KEYS = ("name", "latent_dim", "conditional", "resolution", "channel_base", "channel_max", "mapping_layers",
               "w_dim", "conv_clamp")
# NVIDIA's layers of a DiscriminatorBlock, in the order its freeze_layers counts them
D_LAYERS = ("fromrgb", "conv0", "conv1", "skip")


@dataclass(frozen=True)
class Init:
    """What a run starts from: the model settings, the data they are for, the three networks' weights."""

    model: ModelConfig
    data_shape: tuple[int, ...]
    num_classes: int  # 0: unconditional
    G: dict[str, torch.Tensor] | None
    D: dict[str, torch.Tensor] | None
    G_ema: dict[str, torch.Tensor] | None
    source: str
    kind: str  # "pickle" | "checkpoint"


_CACHE: dict[tuple, Init] = {}  # a worker reads the init for its settings and for its weights: once


def read(path: str) -> Init:
    """The init at ``path`` (a network pickle, a distgan checkpoint or a run folder); one UserError line
    for anything unreadable."""
    from distgan import pretrained

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"init={path}: no such file or folder; give a network pickle (.pkl) or a distgan "
                        "checkpoint (a run folder or checkpoints/step_*)")
    stat = p.stat()
    key = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _CACHE:
        return _CACHE[key]
    if pretrained.is_pickle(p):
        pk = pretrained.load(p)
        init = Init(pk.cfg_model, tuple(pk.data_shape), int(pk.num_classes), pk.G_state, pk.D_state,
                    pk.G_ema_state, str(path), "pickle")
    else:
        state = TrainState.from_dict(checkpoint.load(p), str(path))
        if not state.config or not state.data_shape:
            raise UserError(f"init={path} is a checkpoint without its run's config or data shape (made by an "
                            "older distgan); start from a newer checkpoint")
        model = from_dict(state.config).model
        init = Init(model, tuple(state.data_shape), int(state.num_classes or 0), state.G, state.D, state.G_ema,
                    str(path), "checkpoint")
    _CACHE.clear()
    _CACHE[key] = init
    return init


def forget() -> None:
    """Drop the cached weights (a worker, once its networks hold them)."""
    _CACHE.clear()


def configure(cfg: Config, typed: set[str] | None = None) -> Config:
    """``cfg`` with the init's model settings (unchanged without ``init``). ``typed`` (the driver: the model
    keys on the command line): one of them whose value contradicts the init is a UserError (for a pickle, among
    :data:`PICKLE_KEYS`, the settings it decides; for a checkpoint, any model key); the keys of
    :data:`MAY_OVERRIDE` keep the typed value, else the init's. ``typed`` None (a worker, given the driver's
    resolved config): the :data:`MAY_OVERRIDE` keys of ``cfg`` are kept."""
    if not cfg.init:
        return cfg
    init = read(cfg.init)
    mine = cfg.model
    if typed is not None:
        decided = PICKLE_KEYS if init.kind == "pickle" else {f.name for f in fields(ModelConfig)}
        for key in sorted(typed):
            if key in MAY_OVERRIDE or key not in decided:
                continue
            theirs, value = getattr(init.model, key), getattr(mine, key)
            if key == "name" and value != theirs:
                raise UserError(f"model={value} contradicts init={cfg.init}, a {theirs} network; drop model= "
                                f"(or write model={theirs}): the model's settings come from the init")
            if value != theirs:
                raise UserError(f"model.{key}={value} contradicts init={cfg.init}, whose {key} is {theirs}; drop "
                                f"model.{key}: the model's settings come from the init")
    keep = {k: getattr(mine, k) for k in MAY_OVERRIDE if typed is None or k in typed}
    return replace(cfg, model=replace(init.model, **keep))


def check_data(cfg: Config, shape: tuple[int, ...] | None = None, classes: int | None = None,
               resolution: int | None = None) -> None:
    """The training set fits the init: its resolution (``resolution``, known before the data is read, or
    ``shape``), channels and, for a conditional init, its classes."""
    if not cfg.init:
        return
    init = read(cfg.init)
    want_c, want_res = init.data_shape[0], init.data_shape[-1]
    res = shape[-1] if shape is not None else resolution
    streamed = cfg.dataset.name in ("zip", "image_folder")
    root = cfg.dataset.root or "IMAGES"
    if res is not None and res != want_res:
        fix = (f"pack it at that size (launch/prepare_dataset.py source={root} dest={Path(root).stem}{want_res}.zip "
               f"resolution={want_res}) or set dataset.resolution={want_res}" if streamed
               else f"set dataset.resolution={want_res}")
        raise UserError(f"dataset {cfg.dataset.name} is {res} px but init={cfg.init} is a {want_res} px network: "
                        f"{fix}")
    if shape is not None and shape[0] != want_c:
        fix = (f"set dataset.channels={want_c}" if streamed
               else f"use a {want_c}-channel data set (dataset=zip or image_folder, dataset.channels={want_c})")
        raise UserError(f"dataset {cfg.dataset.name} has {shape[0]} channel(s) but init={cfg.init} is a "
                        f"{want_c}-channel network: {fix}")
    if classes is not None and init.num_classes and classes != init.num_classes:
        raise UserError(f"dataset {cfg.dataset.name} has {classes} classes but init={cfg.init} is a conditional "
                        f"network of {init.num_classes}: give a data set labelled with {init.num_classes} classes "
                        "(dataset.json), or start from an unconditional network")


def start_from(init: Init, G: nn.Module, D: nn.Module, G_ema: nn.Module | None) -> str:
    """Load the init's weights (G falls back on G_ema and back, as NVIDIA's --resume copies whatever the pickle
    has; a D it lacks keeps its fresh initialisation). Returns the line that says what was loaded."""
    g = init.G if init.G is not None else init.G_ema
    ema = init.G_ema if init.G_ema is not None else init.G
    if g is None:
        raise UserError(f"init={init.source} holds no generator")
    checkpoint.check_architecture(G, g, "generator", init.source)
    G.load_state_dict(g)
    loaded = ["G"]
    if init.D is not None:
        checkpoint.check_architecture(D, init.D, "discriminator", init.source)
        D.load_state_dict(init.D)
        loaded.append("D")
    if G_ema is not None:
        G_ema.load_state_dict(ema)
        loaded.append("G_ema")
    missing = "" if init.D is not None else "; it has no D, so D starts from scratch"
    return (f"starting from init={init.source} ({', '.join(loaded)}; step 0, new optimizers, ADA p from its "
            f"start{missing})")


# ------------------------------------------------------------------------------------------ Freeze-D
def d_layers(D: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """D's layers in the order StyleGAN2-ADA's ``freeze_layers`` counts them (from the highest resolution:
    fromrgb, conv0, conv1, skip of the first block, then conv0, conv1, skip of each next one), as
    (distgan name, NVIDIA name, module). Empty for a D without StyleGAN2 blocks."""
    from distgan.models.stylegan2 import StyleGAN2Discriminator

    if not isinstance(D, StyleGAN2Discriminator):
        return []
    out = []
    for i, block in enumerate(D.blocks):
        res = D.resolution >> i
        for name in D_LAYERS:
            layer = getattr(block, name, None)
            if layer is not None:
                out.append((f"blocks.{i}.{name}", f"b{res}.{name}", layer))
    return out


def check_freeze(cfg: Config, D: nn.Module) -> None:
    """``train.freeze_d`` needs a D of StyleGAN2 blocks with at least that many layers."""
    n = cfg.train.freeze_d
    if not n:
        return
    layers = d_layers(D)
    if not layers:
        raise UserError(f"train.freeze_d={n} freezes layers of StyleGAN2's D blocks; model={cfg.model.name} has "
                        "none: set train.freeze_d=0 or use model=stylegan2")
    if n > len(layers):
        raise UserError(f"train.freeze_d={n}, but this D has {len(layers)} block layers (the 4x4 epilogue is "
                        f"never frozen): use at most {len(layers)}")


def freeze(D: nn.Module, n: int) -> list[str]:
    """Freeze D's first ``n`` layers (:func:`d_layers`) as StyleGAN2-ADA does: their weights and biases become
    buffers, so no optimizer, gradient or DDP bucket holds them, their values travel in the state dict under
    the same names, and no ``requires_grad_`` of the training phases can thaw them. Call before the optimizers
    and the DDP wrapper are built. Returns the frozen layers as "distgan name (NVIDIA name)"."""
    if n <= 0:
        return []
    frozen = []
    for name, nvidia, layer in d_layers(D)[:n]:
        for attr in ("weight", "bias"):
            p = getattr(layer, attr, None)
            if isinstance(p, nn.Parameter):
                delattr(layer, attr)
                layer.register_buffer(attr, p.detach())
        frozen.append(f"{name} ({nvidia})")
    return frozen


def describe_frozen(frozen: list[str]) -> str:
    return f"train.freeze_d={len(frozen)}: D layers frozen: {', '.join(frozen)}"


# ------------------------------------------------------------------------------------------ fake labels
def label_weights(data) -> torch.Tensor | None:
    """Class frequencies of the training set (NVIDIA draws a fake's label as the label of a random training
    image), or None when the set is unlabelled or balanced (the uniform draw)."""
    classes = int(getattr(data, "num_classes", 0) or 0)
    if not classes:
        return None
    labels = getattr(data, "labels", None)
    if labels is None and getattr(data, "index", None) is not None:
        labels = getattr(data.index, "label", None)
    if labels is None:
        return None
    counts = torch.bincount(torch.as_tensor(labels).long().flatten(), minlength=classes).double()
    return None if bool((counts == counts[0]).all()) else counts
