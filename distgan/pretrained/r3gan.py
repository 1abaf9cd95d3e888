"""R3GAN's snapshot pickles (brownvc/R3GAN: ``network-snapshot-*.pkl`` and the released cifar10.pkl,
ffhq-256x256.pkl, ...) read through the safe unpickler and turned into ``model=r3gan``.

R3GAN pickles its networks as plain ``nn.Module`` objects (``pickle.dump(dict(G=..., D=..., G_ema=...,
training_set_kwargs=..., cur_nimg=...))``), not NVIDIA persistence records: importing this module registers
R3GAN's class names (and the torch containers and layers inside them) in
:data:`distgan.pretrained.unpickle.MODULE_CLASSES`, so the unpickler turns each into a
:class:`~distgan.pretrained.unpickle.ModuleRecord` without importing anything of R3GAN. :func:`convert` reads
the architecture from the tensors' shapes (stages, widths, cardinalities, blocks, expansion, z size, classes),
builds distgan's networks, checks every tensor against them and returns a
:class:`distgan.pretrained.Pretrained` in distgan's names (R3GAN's names without the wrappers' ``Model.``).

``detect(obj)`` tells an R3GAN snapshot from an NVIDIA one, for :func:`distgan.pretrained.load`.
"""

from __future__ import annotations

from typing import Any

import torch

from distgan.config import ModelConfig
from distgan.errors import UserError
from distgan.pretrained.unpickle import MODULE_CLASSES, ModuleRecord

NETWORKS = ("Convolution", "ResidualBlock", "UpsampleLayer", "DownsampleLayer", "GenerativeBasis",
            "DiscriminativeBasis", "GeneratorStage", "DiscriminatorStage", "Generator", "Discriminator")
CLASSES = {("training.networks", "Generator"), ("training.networks", "Discriminator"),
           *{("R3GAN.Networks", n) for n in NETWORKS},
           *{("R3GAN.FusedOperators", f"BiasedActivation{k}") for k in ("CUDA", "Reference")},
           *{("R3GAN.Resamplers", f"{a}{b}{k}") for a in ("Interpolative", "Inplace")
             for b in ("Upsampler", "Downsampler") for k in ("CUDA", "Reference")},
           ("torch.nn.modules.conv", "Conv2d"), ("torch.nn.modules.linear", "Linear"),
           ("torch.nn.modules.container", "ModuleList"), ("torch.nn.modules.activation", "LeakyReLU")}
for _key in CLASSES:
    MODULE_CLASSES.setdefault(_key, "r3gan")


def detect(obj: Any) -> bool:
    """Whether ``obj`` (the unpickled snapshot) holds R3GAN networks."""
    if isinstance(obj, ModuleRecord):
        obj = {"G_ema": obj}
    if not isinstance(obj, dict):
        return False
    rec = obj.get("G_ema") or obj.get("G")
    return isinstance(rec, ModuleRecord) and rec.origin in ("global:training.networks", "global:R3GAN.Networks")


def _state(rec: ModuleRecord) -> dict[str, torch.Tensor]:
    """distgan's names: R3GAN's, without the training.networks wrapper's ``Model.``."""
    sd = rec.state_dict()
    if "Model" in rec.children:
        sd = {k[len("Model."):]: v for k, v in sd.items() if k.startswith("Model.")}
    return sd


def bf16_stages(rec: ModuleRecord, high_first: bool, where: str) -> int:
    """How many of the highest-resolution stages compute in bfloat16 (R3GAN's ``FP16Stages``, kept by the
    unpickler as each stage's ``DataType``); one line when they are not R3GAN's pattern."""
    net = rec.children.get("Model", rec)
    stages = net.children.get("MainLayers")
    if stages is None:
        return 0
    kinds = [stages.children[k].attrs.get("DataType", torch.float32) for k in sorted(stages.children, key=int)]
    flags = [k == torch.bfloat16 for k in kinds]
    if any(k not in (torch.float32, torch.bfloat16) for k in kinds):
        raise UserError(f"{where}: a stage computes in {next(k for k in kinds if k != torch.float32)}; distgan "
                        "reads float32 and bfloat16 stages (R3GAN's)")
    n = sum(flags)
    high = flags[:n] if high_first else flags[len(flags) - n:]
    if not all(high) or (n and (flags[-1] if high_first else flags[0])):
        raise UserError(f"{where}: its bfloat16 stages {[i for i, f in enumerate(flags) if f]} are not the "
                        "highest-resolution ones above 4x4 (R3GAN's FP16Stages); distgan's model.bf16_stages "
                        "cannot express them")
    return n


def _stages(sd: dict, what: str) -> int:
    n = 1 + max((int(k.split(".")[1]) for k in sd if k.startswith("MainLayers.")), default=-1)
    if n == 0:
        raise UserError(f"{what} has no MainLayers: not an R3GAN network")
    return n


def generator_config(rec: ModuleRecord, source: str) -> tuple[ModelConfig, tuple[int, int, int], int]:
    """(model config, data shape, classes) from an R3GAN generator's tensors."""
    sd, where = _state(rec), f"{source}: the generator"
    try:
        n = _stages(sd, where)
        widths, cards, blocks, expansion = [], [], [], None
        for i in range(n):
            layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith(f"MainLayers.{i}.Layers.")})
            first = f"MainLayers.{i}.Layers.0."
            if i == 0:
                width = sd[first + "Basis"].shape[0]
                in_dim = sd[first + "LinearLayer.weight"].shape[1]
            elif first + "LinearLayer.Layer.weight" in sd:
                width = sd[first + "LinearLayer.Layer.weight"].shape[0]
            else:
                width = widths[-1]
            card = 1
            for j in layers[1:]:
                w1 = sd[f"MainLayers.{i}.Layers.{j}.LinearLayer1.Layer.weight"]
                w2 = sd[f"MainLayers.{i}.Layers.{j}.LinearLayer2.Layer.weight"]
                expansion = w1.shape[0] // w1.shape[1]
                card = w2.shape[0] // w2.shape[1]
            widths.append(int(width))
            cards.append(int(card))
            blocks.append(len(layers) - 1)
        channels = sd["AggregationLayer.Layer.weight"].shape[0]
    except KeyError as e:
        raise UserError(f"{where} lacks the tensor {e.args[0]}: not a network of R3GAN's Networks.py") from None
    embed = sd["EmbeddingLayer.weight"] if "EmbeddingLayer.weight" in sd else None
    classes = int(embed.shape[1]) if embed is not None else 0
    latent = int(in_dim - (embed.shape[0] if embed is not None else 0))
    if embed is not None and embed.shape[0] != latent:
        raise UserError(f"{where} embeds its labels in {embed.shape[0]} features for a {latent}-d z; distgan's "
                        "model=r3gan embeds them as wide as z (R3GAN's presets)")
    z_dim = rec.attrs.get("z_dim")
    if z_dim is not None and int(z_dim) != latent:
        raise UserError(f"{where} says z_dim={z_dim} but its first layer takes {latent} features")
    side = 4 * 2 ** (n - 1)
    cfg = ModelConfig(name="r3gan", latent_dim=latent, widths=widths, cardinalities=cards, blocks=blocks,
                      expansion=expansion or 2, conditional=classes > 0, norm_g="none", norm_d="none",
                      bf16_stages=bf16_stages(rec, high_first=False, where=where))
    return cfg, (int(channels), side, side), classes


def _check_filters(sd: dict, source: str, name: str) -> None:
    from distgan.models.r3gan import lowpass_kernel

    for key, k in sd.items():
        if key.endswith("Resampler.Kernel") and not torch.allclose(k.float(), lowpass_kernel()):
            raise UserError(f"{source}: {name} resamples with another filter than R3GAN's [1,2,1] ({key}); "
                            "distgan's model=r3gan has that one only")


def convert(obj: Any, source: str):
    """An unpickled R3GAN snapshot (or a bare network) -> :class:`distgan.pretrained.Pretrained`."""
    from distgan.models import build_models
    from distgan.pretrained import Pretrained

    if isinstance(obj, ModuleRecord):
        obj = {"G_ema": obj}
    if not detect(obj):
        raise UserError(f"{source} is not an R3GAN snapshot (no R3GAN G or G_ema)")
    recs = {k: obj.get(k) for k in ("G", "G_ema", "D")}
    for k, rec in recs.items():
        if rec is not None and not isinstance(rec, ModuleRecord):
            raise UserError(f"{source}: {k} is a {type(rec).__name__}, not a network")
    cfg, shape, classes = generator_config(recs["G_ema"] or recs["G"], source)
    net_G, net_D = build_models(cfg, shape, classes)
    states = {}
    for name, rec in recs.items():
        if rec is None:
            states[name] = None
            continue
        sd, net = _state(rec), net_D if name == "D" else net_G
        _check_filters(sd, source, name)
        d16 = bf16_stages(rec, True, f"{source}: D") if name == "D" else cfg.bf16_stages
        if d16 != cfg.bf16_stages:
            raise UserError(f"{source}: D computes {d16} stages in bfloat16, G {cfg.bf16_stages}; distgan's "
                            "model.bf16_stages is one number for both (R3GAN's presets)")
        mine = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in sd.items()}
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[:2]
            raise UserError(f"{source}: {name}'s tensors do not match the R3GAN architecture of its generator "
                            f"(first differences: {diff})")
        states[name] = {k: v.float().contiguous() for k, v in sd.items()}
    info = {"training_set_kwargs": dict(obj.get("training_set_kwargs") or {}), "cur_nimg": obj.get("cur_nimg")}
    return Pretrained(cfg_model=cfg, data_shape=shape, num_classes=classes, G_state=states["G"],
                      D_state=states["D"], G_ema_state=states["G_ema"], source=source, format="r3gan", info=info)
