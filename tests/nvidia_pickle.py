"""A writer of network pickles in NVIDIA's persistence format, for the tests (distgan itself only reads them).

NVIDIA's ``torch_utils.persistence`` pickles each network object as a call of
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, ``meta`` = {type: "class", version: 6,
module_src: the source of the class's module, class_name, state: the module's ``__dict__``}; the object's
constructor arguments ride in the state as ``_init_args`` / ``_init_kwargs``; a snapshot is a plain dict
``{G, D, G_ema, augment_pipe, training_set_kwargs}``. This writer produces the same byte stream from
distgan networks: it builds the nested records from NVIDIA-named state dicts (names by
:func:`distgan.pretrained.nvidia.to_nvidia`) and lets ``pickle`` write the calls through stand-in modules
registered in ``sys.modules`` only while writing.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import sys
import types
from collections import OrderedDict

import torch

SOURCE = '''"""stand-in for training/networks.py"""
from torch_utils import persistence

@persistence.persistent_class
class FullyConnectedLayer: pass
@persistence.persistent_class
class Conv2dLayer: pass
@persistence.persistent_class
class MappingNetwork: pass
@persistence.persistent_class
class SynthesisLayer: pass
@persistence.persistent_class
class ToRGBLayer: pass
@persistence.persistent_class
class SynthesisBlock: pass
@persistence.persistent_class
class SynthesisNetwork: pass
@persistence.persistent_class
class Generator: pass
@persistence.persistent_class
class DiscriminatorBlock: pass
@persistence.persistent_class
class MinibatchStdLayer: pass
@persistence.persistent_class
class DiscriminatorEpilogue: pass
@persistence.persistent_class
class Discriminator: pass
'''
STYLEGAN3_SOURCE = SOURCE + "class SynthesisInput: pass\n"


def _reconstruct_persistent_obj(meta):  # never called: only its name is written
    raise AssertionError("the writer's stand-in was called")


class EasyDict(dict):
    pass


class Persistent:
    """Pickles as NVIDIA's persistent objects do."""

    def __init__(self, meta: dict, reconstruct=None):
        self.meta, self.reconstruct = meta, reconstruct

    def __reduce__(self):
        return (self.reconstruct or _persistence_module()._reconstruct_persistent_obj, (self.meta,))


def _persistence_module():
    return sys.modules["torch_utils.persistence"]


@contextlib.contextmanager
def stand_in_modules():
    """``torch_utils.persistence`` and ``dnnlib.util`` in sys.modules while pickling (pickle checks that a
    global it writes can be found); removed afterwards so no reader can import them."""
    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    saved = {n: sys.modules.get(n) for n in names}
    pers = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    EasyDict.__module__ = "dnnlib.util"
    util.EasyDict = EasyDict
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": pers,
                        "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util})
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def module_state(tensors: dict, children: dict, init_kwargs: dict | None = None, params=None) -> dict:
    """An nn.Module ``__dict__`` as pickled (parameters vs buffers by ``params``: names that are parameters)."""
    params = params if params is not None else {k for k in tensors if k not in ("resample_filter", "noise_const",
                                                                                 "w_avg")}
    return {"training": False,
            "_parameters": OrderedDict((k, torch.nn.Parameter(v.clone(), requires_grad=True))
                                       for k, v in tensors.items() if k in params),
            "_buffers": OrderedDict((k, v.clone()) for k, v in tensors.items() if k not in params),
            "_non_persistent_buffers_set": set(), "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(), "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(), "_modules": OrderedDict(children),
            "_init_args": (), "_init_kwargs": EasyDict(init_kwargs or {})}


def _class_of(path: str, net: str) -> str:
    last = path.rsplit(".", 1)[-1]
    if last == "mapping":
        return "MappingNetwork"
    if last in ("fc", "out", "embed", "affine") or re.fullmatch(r"fc\d+", last):
        return "FullyConnectedLayer"
    if last == "synthesis":
        return "SynthesisNetwork"
    if last == "torgb":
        return "ToRGBLayer"
    if last == "mbstd":
        return "MinibatchStdLayer"
    if re.fullmatch(r"b\d+", last):
        if net == "G":
            return "SynthesisBlock"
        return "DiscriminatorEpilogue" if last == "b4" else "DiscriminatorBlock"
    if net == "G" and last in ("conv0", "conv1"):
        return "SynthesisLayer"
    return "Conv2dLayer"


def records(sd: dict, net: str, init_kwargs: dict, source: str = SOURCE, top_class: str | None = None,
            reconstruct=None) -> Persistent:
    """A Persistent tree from a flat NVIDIA-named state dict."""
    tree: dict = {}
    for key, value in sd.items():
        *path, name = key.split(".")
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[name] = value
    if net == "D" and "b4" in tree:
        tree["b4"]["mbstd"] = {}

    def build(node: dict, path: str, kwargs: dict | None, cls: str) -> Persistent:
        tensors = {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}
        children = {k: build(v, f"{path}.{k}" if path else k, None, _class_of(k, net))
                    for k, v in node.items() if isinstance(v, dict)}
        meta = {"type": "class", "version": 6, "module_src": source, "class_name": cls,
                "state": module_state(tensors, children, kwargs)}
        return Persistent(meta, reconstruct)

    return build(tree, "", init_kwargs, top_class or ("Generator" if net == "G" else "Discriminator"))


def d_kwargs(res: int, channels: int, classes: int, channel_base: int, channel_max: int, conv_clamp, mbstd: int):
    return EasyDict(c_dim=classes, img_resolution=res, img_channels=channels, channel_base=channel_base,
                    channel_max=channel_max, num_fp16_res=4, conv_clamp=conv_clamp, block_kwargs=EasyDict(),
                    mapping_kwargs=EasyDict(), epilogue_kwargs=EasyDict(mbstd_group_size=mbstd))


def g_kwargs(z_dim, w_dim, res, channels, classes, mapping_layers, channel_base, channel_max, conv_clamp):
    return EasyDict(z_dim=z_dim, c_dim=classes, w_dim=w_dim, img_resolution=res, img_channels=channels,
                    mapping_kwargs=EasyDict(num_layers=mapping_layers),
                    synthesis_kwargs=EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=4,
                                              conv_clamp=conv_clamp))


def write_snapshot(path, G_sd: dict, D_sd: dict | None, gk: dict, dk: dict | None, G_ema_sd: dict | None = None,
                   source: str = SOURCE, extra: dict | None = None) -> None:
    """A StyleGAN2-ADA ``network-snapshot`` pickle from NVIDIA-named state dicts and constructor kwargs."""
    with stand_in_modules():
        snap = {"G": records(G_sd, "G", gk, source), "D": records(D_sd, "D", dk, source) if D_sd else None,
                "G_ema": records(G_ema_sd if G_ema_sd is not None else G_sd, "G", gk, source),
                "augment_pipe": None, "training_set_kwargs": EasyDict(path="/data/train.zip", xflip=False),
                **(extra or {})}
        with open(path, "wb") as f:
            pickle.dump(snap, f, protocol=4)
