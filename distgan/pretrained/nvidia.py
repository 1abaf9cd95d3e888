"""NVIDIA's StyleGAN2-ADA-pytorch / StyleGAN3 snapshot pickles -> distgan's ``model=stylegan2`` networks.

A snapshot (``network-snapshot-*.pkl``, NVIDIA's released ``ffhq.pkl``, ...) is a dict ``{G, D, G_ema,
augment_pipe, training_set_kwargs}`` of persistence records (:mod:`distgan.pretrained.unpickle`). The
architecture is read from the records' ``init_kwargs`` (the constructor arguments NVIDIA's train.py passed);
the tensors are renamed to distgan's state-dict names (:func:`from_nvidia`; :func:`to_nvidia` is the way
back, for ``distgan-export``). What distgan cannot build — a StyleGAN3-T/R generator, the ``orig``/``resnet``
generator or ``orig``/``skip`` discriminator architectures, other filters or activations — is one
UserError line naming it.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from distgan.config import ModelConfig
from distgan.errors import UserError
from distgan.pretrained import unpickle
from distgan.pretrained.unpickle import ModuleRecord

# Every persistent class of NVIDIA's networks.py / networks_stylegan2.py / networks_stylegan3.py and
# augment.py that a snapshot holds. Accepting a name only makes its record readable as data.
unpickle.PERSISTENT_CLASSES.update({
    "Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer", "ToRGBLayer",
    "FullyConnectedLayer", "Conv2dLayer", "Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue",
    "MinibatchStdLayer", "SynthesisInput", "AugmentPipe",
})

RESAMPLE_FILTER = [1, 3, 3, 1]
G_KEYS = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}
# synthesis kwargs distgan reproduces (value checked below) or may ignore (fp16 and memory layout only)
SYNTHESIS_OK = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture", "resample_filter",
                "use_noise", "activation", "fp16_channels_last", "fused_modconv_default", "kernel_size"}
MAPPING_OK = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
D_KEYS = {"c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
          "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs"}
D_BLOCK_OK = {"activation", "resample_filter", "fp16_channels_last", "freeze_layers"}
EPILOGUE_OK = {"mbstd_group_size", "mbstd_num_channels", "activation"}


def resample_filter() -> torch.Tensor:
    """NVIDIA's ``resample_filter`` buffer: the [1,3,3,1] outer product, normalised to sum 1."""
    f = torch.tensor(RESAMPLE_FILTER, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _unsupported(source: str, what: str) -> UserError:
    return UserError(f"{source}: {what}, which distgan cannot build (model=stylegan2 is StyleGAN2 config F: "
                     "skip generator, resnet discriminator, [1,3,3,1] filters, leaky ReLU)")


def _expect(source: str, where: str, kwargs: dict, key: str, wanted: tuple) -> None:
    if key in kwargs and kwargs[key] not in wanted:
        raise _unsupported(source, f"{where} {key}={kwargs[key]!r}")


def _unknown_keys(source: str, where: str, kwargs: dict, known: set) -> None:
    extra = sorted(set(kwargs) - known)
    if extra:
        raise _unsupported(source, f"{where} has the setting(s) {', '.join(extra)}")


def _record(obj: dict, key: str, source: str) -> ModuleRecord | None:
    rec = obj.get(key)
    if rec is None:
        return None
    if not isinstance(rec, ModuleRecord) or not rec.origin.startswith("persistent:"):
        raise UserError(f"{source}: {key} is a {type(rec).__name__}, not an NVIDIA network")
    return rec


def check_not_stylegan3(rec: ModuleRecord, source: str) -> None:
    """A StyleGAN3 generator (networks_stylegan3.py: a Fourier-feature input and filtered layers)."""
    if "SynthesisInput" in rec.module_classes or any(r.class_name == "SynthesisInput" for r in rec.walk()):
        kw = dict(rec.init_kwargs)
        kind = "R" if kw.get("use_radial_filters") or kw.get("conv_kernel") == 1 else "T"
        raise UserError(f"{source} holds a StyleGAN3-{kind} generator (networks_stylegan3.Generator), which "
                        "distgan cannot build: model=stylegan2 reads StyleGAN2 networks (StyleGAN2-ADA-pytorch "
                        "pickles, or StyleGAN3 pickles trained with --cfg=stylegan2)")


def generator_config(G: ModuleRecord, source: str) -> tuple[ModelConfig, tuple[int, int, int], int]:
    """(model config, data shape, classes) from a Generator record's init_kwargs."""
    check_not_stylegan3(G, source)
    if G.class_name != "Generator" or G.init_args:
        raise _unsupported(source, f"G is a {G.class_name} with positional arguments" if G.init_args
                           else f"G is a {G.class_name}")
    kw = dict(G.init_kwargs)
    missing = sorted({"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"} - set(kw))
    if missing:
        raise UserError(f"{source}: G's constructor arguments lack {', '.join(missing)} (not a StyleGAN2-ADA "
                        "or StyleGAN3 network pickle)")
    syn = dict(kw.get("synthesis_kwargs") or {})
    syn.update({k: v for k, v in kw.items() if k not in G_KEYS})  # StyleGAN3 passes them flat
    _unknown_keys(source, "G's synthesis network", syn, SYNTHESIS_OK)
    _expect(source, "G", syn, "architecture", ("skip",))
    _expect(source, "G", syn, "resample_filter", (RESAMPLE_FILTER,))
    _expect(source, "G", syn, "activation", ("lrelu",))
    _expect(source, "G", syn, "use_noise", (True,))
    _expect(source, "G", syn, "kernel_size", (3,))
    mapping = dict(kw.get("mapping_kwargs") or {})
    _unknown_keys(source, "G's mapping network", mapping, MAPPING_OK)
    _expect(source, "G's mapping", mapping, "embed_features", (None, kw["w_dim"]))
    _expect(source, "G's mapping", mapping, "layer_features", (None, kw["w_dim"]))
    _expect(source, "G's mapping", mapping, "activation", ("lrelu",))
    _expect(source, "G's mapping", mapping, "lr_multiplier", (0.01,))
    res, channels, classes = int(kw["img_resolution"]), int(kw["img_channels"]), int(kw["c_dim"])
    if res < 32 or res > 1024 or res & (res - 1) or channels not in (1, 3):
        raise UserError(f"{source} holds a {res} px, {channels}-channel generator; distgan's stylegan2 builds "
                        "1- or 3-channel networks of 32 to 1024 px")
    cfg = ModelConfig(name="stylegan2", latent_dim=int(kw["z_dim"]), w_dim=int(kw["w_dim"]), resolution=res,
                      channel_base=int(syn.get("channel_base", 32768)), channel_max=int(syn.get("channel_max", 512)),
                      mapping_layers=int(mapping.get("num_layers", 8)), conv_clamp=syn.get("conv_clamp"),
                      norm_g="none", norm_d="none", conditional=classes > 0)
    return cfg, (channels, res, res), classes


def discriminator_settings(D: ModuleRecord, cfg: ModelConfig, shape, classes: int, source: str) -> ModelConfig:
    """Check D's init_kwargs against G's settings; the config with D's minibatch-std group."""
    if D.class_name != "Discriminator" or D.init_args:
        raise _unsupported(source, f"D is a {D.class_name}")
    kw = dict(D.init_kwargs)
    _unknown_keys(source, "D", kw, D_KEYS)
    _expect(source, "D", kw, "architecture", ("resnet",))
    if (kw.get("img_resolution"), kw.get("img_channels"), kw.get("c_dim")) != (shape[1], shape[0], classes):
        raise UserError(f"{source}: D is for {kw.get('img_resolution')} px, {kw.get('img_channels')} channels, "
                        f"{kw.get('c_dim')} classes but G for {shape[1]}, {shape[0]}, {classes}")
    for key, default in (("channel_base", 32768), ("channel_max", 512), ("conv_clamp", None)):
        mine = getattr(cfg, key)
        if kw.get(key, default) != mine:
            raise _unsupported(source, f"D {key}={kw.get(key, default)!r} differing from G's {mine!r}")
    block = dict(kw.get("block_kwargs") or {})
    _unknown_keys(source, "D's blocks", block, D_BLOCK_OK)
    _expect(source, "D's blocks", block, "activation", ("lrelu",))
    _expect(source, "D's blocks", block, "resample_filter", (RESAMPLE_FILTER,))
    mapping = dict(kw.get("mapping_kwargs") or {})
    _unknown_keys(source, "D's mapping network", mapping, MAPPING_OK)
    _expect(source, "D's mapping", mapping, "num_layers", (8,))
    _expect(source, "D's mapping", mapping, "lr_multiplier", (0.01,))
    _expect(source, "D's mapping", mapping, "activation", ("lrelu",))
    epilogue = dict(kw.get("epilogue_kwargs") or {})
    _unknown_keys(source, "D's epilogue", epilogue, EPILOGUE_OK)
    _expect(source, "D's epilogue", epilogue, "mbstd_num_channels", (1,))
    _expect(source, "D's epilogue", epilogue, "activation", ("lrelu",))
    group = epilogue.get("mbstd_group_size", 4)
    if group is None:
        raise _unsupported(source, "D mbstd_group_size=None (the whole batch as one group)")
    c4 = min(cfg.channel_base // 4, cfg.channel_max)
    if kw.get("cmap_dim") not in (None, c4):
        raise _unsupported(source, f"D cmap_dim={kw['cmap_dim']} (distgan: the 4x4 channels, {c4})")
    from dataclasses import replace

    return replace(cfg, mbstd_group=int(group))


# --- state-dict names --------------------------------------------------------------------------------

def _log2(r: str | int) -> int:
    return int(math.log2(int(r)))


def from_nvidia(sd: dict[str, torch.Tensor], net: str, resolution: int, source: str = "") -> dict[str, torch.Tensor]:
    """NVIDIA's state-dict names of G (``net="G"``) or D -> distgan's. The [1,3,3,1] ``resample_filter``
    buffers (distgan's filters are constants) are checked and dropped."""
    out, want = {}, resample_filter()
    top = _log2(resolution)
    for key, value in sd.items():
        if key.endswith("resample_filter"):
            if value.shape != want.shape or not torch.allclose(value.float(), want):
                raise _unsupported(source, f"{net}'s {key} is not the [1,3,3,1] filter")
            continue
        k = re.sub(r"^mapping\.fc(\d+)\.", r"mapping.layers.\1.", key)
        if net == "G":
            k = re.sub(r"^synthesis\.b(\d+)\.", lambda m: f"synthesis.blocks.{_log2(m[1]) - 2}.", k)
            if k.endswith("noise_const"):
                value = value.reshape(value.shape[-2:])
        else:
            k = re.sub(r"^b4\.(conv|fc|out)\.", r"\1.", k)
            k = re.sub(r"^b(\d+)\.", lambda m: f"blocks.{top - _log2(m[1])}.", k)
        out[k] = value
    return out


def to_nvidia(sd: dict[str, torch.Tensor], net: str, resolution: int) -> dict[str, torch.Tensor]:
    """distgan's state-dict names of G or D -> NVIDIA's, with the ``resample_filter`` buffers NVIDIA's
    modules hold (so ``load_state_dict`` of NVIDIA's networks.py takes it strictly)."""
    out, filters = {}, set()
    top = _log2(resolution)
    for key, value in sd.items():
        k = re.sub(r"^mapping\.layers\.(\d+)\.", r"mapping.fc\1.", key)
        if net == "G":
            m = re.match(r"^synthesis\.blocks\.(\d+)\.", k)
            if m:
                block = f"synthesis.b{4 << int(m[1])}"
                k = block + k[m.end() - 1:]
                filters.add(block)
                layer = re.match(r"^(synthesis\.b\d+\.conv[01])\.", k)
                if layer:
                    filters.add(layer[1])
        else:
            m = re.match(r"^blocks\.(\d+)\.", k)
            if m:
                block = f"b{1 << (top - int(m[1]))}"
                k = block + k[m.end() - 1:]
                filters.add(block)
                filters.add(k.rsplit(".", 1)[0])
            elif re.match(r"^(conv|fc|out)\.", k):
                k = "b4." + k
                if k.startswith("b4.conv."):
                    filters.add("b4.conv")
        out[k] = value.detach().clone()
    for prefix in sorted(filters):
        out[f"{prefix}.resample_filter"] = resample_filter()
    return out


def nvidia_generator_kwargs(cfg: ModelConfig, shape, classes: int) -> dict[str, Any]:
    """The constructor arguments of NVIDIA's ``training.networks.Generator`` for distgan's G."""
    from distgan.models.stylegan2 import auto_channel_base

    res = shape[1]
    return dict(z_dim=cfg.latent_dim, c_dim=classes, w_dim=cfg.w_dim, img_resolution=res, img_channels=shape[0],
                mapping_kwargs=dict(num_layers=cfg.mapping_layers),
                synthesis_kwargs=dict(channel_base=cfg.channel_base or auto_channel_base(res),
                                      channel_max=cfg.channel_max, num_fp16_res=0, conv_clamp=cfg.conv_clamp,
                                      architecture="skip"))


# --- the whole snapshot --------------------------------------------------------------------------------

def convert(obj: Any, source: str):
    """A snapshot dict of records -> :class:`distgan.pretrained.Pretrained`."""
    from distgan.models import build_models
    from distgan.pretrained import Pretrained

    if isinstance(obj, ModuleRecord):
        obj = {"G_ema": obj}  # a bare network pickle
    if not isinstance(obj, dict) or not any(k in obj for k in ("G", "G_ema")):
        what = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{source} is not a StyleGAN2-ADA/StyleGAN3 network pickle (no G or G_ema; it holds "
                        f"{what})")
    G, G_ema, D = (_record(obj, k, source) for k in ("G", "G_ema", "D"))
    main = G_ema or G
    cfg, shape, classes = generator_config(main, source)
    if D is not None:
        cfg = discriminator_settings(D, cfg, shape, classes, source)
    net_G, net_D = build_models(cfg, shape, classes)
    states = {}
    for name, rec, net in (("G", G, net_G), ("G_ema", G_ema, net_G), ("D", D, net_D)):
        if rec is None:
            states[name] = None
            continue
        if name != "D" and generator_config(rec, source)[0] != generator_config(main, source)[0]:
            raise UserError(f"{source}: G and G_ema have different architectures")
        sd = from_nvidia(rec.state_dict(), "D" if name == "D" else "G", shape[1], source)
        mine = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in sd.items()}
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[:2]
            raise UserError(f"{source}: {name}'s tensors do not match the architecture its settings describe "
                            f"(first differences: {diff})")
        states[name] = {k: v.float().contiguous() for k, v in sd.items()}
    info = {"training_set_kwargs": dict(obj.get("training_set_kwargs") or {}),
            "module_source": main.origin.split(":", 1)[1],
            "num_fp16_res": (dict(main.init_kwargs.get("synthesis_kwargs") or {}) or main.init_kwargs).get(
                "num_fp16_res")}
    return Pretrained(cfg_model=cfg, data_shape=shape, num_classes=classes, G_state=states["G"],
                      D_state=states["D"], G_ema_state=states["G_ema"], source=source, format="nvidia", info=info)
