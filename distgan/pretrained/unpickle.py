"""A restricted unpickler for network pickles: it rebuilds tensors, storages and module state, and never runs
code the pickle carries.

A pickle names Python callables (``module.qualname``) and asks the loader to call them; ``pickle.load`` imports
and calls whatever it is told. :class:`SafeUnpickler` resolves every name through :data:`GLOBALS` instead — a
table of data-only rebuilders (tensors, storages, ordered dicts, numpy scalars) — and refuses any other name
with one :class:`UserError` line naming it. Network classes never become live objects:

- **NVIDIA persistence records** (StyleGAN2-ADA-pytorch, StyleGAN3): each ``@persistent_class`` instance is
  pickled as a call of ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` whose ``meta`` carries
  the class's whole module SOURCE, the class name and the instance's ``__dict__``. NVIDIA's loader execs that
  source; here the call becomes a :class:`ModuleRecord` (class name, the source's sha256, the class names the
  source defines — found by a regular expression, never executed —, init_kwargs and the tensors), and only
  the class names in :data:`PERSISTENT_CLASSES` are accepted.
- **Plain module pickles** (``pickle.dump(nn.Module)``; e.g. R3GAN's classes, to come): a format registers
  the ``(module, qualname)`` of its classes in :data:`MODULE_CLASSES`; such a name becomes a stub whose
  instances only record their ``__dict__`` as a :class:`ModuleRecord` (nothing of the real class is imported).

Converters (:mod:`distgan.pretrained.nvidia`, ...) turn records into distgan networks.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from distgan.errors import UserError, first_line

REFUSAL = "distgan reads tensors and module state only and never runs code a pickle carries"


@dataclass
class ModuleRecord:
    """An ``nn.Module`` of a pickle as plain data."""

    class_name: str  # the class's name (qualname for plain module pickles)
    origin: str  # "persistent:<sha256 of the module source>" or "global:<python module>"
    module_classes: tuple[str, ...] = ()  # persistent: classes the carried source defines (read, not run)
    init_args: tuple = ()
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # own parameters and persistent buffers
    children: dict[str, ModuleRecord] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)  # the other plain attributes

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and persistent buffers of this module and its children, as ``nn.Module.state_dict``."""
        out = {prefix + k: v for k, v in self.tensors.items()}
        for name, child in self.children.items():
            out.update(child.state_dict(f"{prefix}{name}."))
        return out

    def walk(self):
        """This record and every descendant."""
        yield self
        for child in self.children.values():
            yield from child.walk()


def _shown(text: Any, limit: int = 80) -> str:
    """A name from the file, safe to print on one line (the file chooses it)."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit] + "..."


def _module_state(class_name: str, origin: str, state: Any, where: str) -> ModuleRecord:
    """A module's ``__dict__`` (as pickled) -> ModuleRecord."""
    if not isinstance(state, dict) or not {"_parameters", "_buffers", "_modules"} <= state.keys():
        raise UserError(f"{where}: the object {class_name} carries no module state (not an nn.Module); {REFUSAL}")
    skip = set(state.get("_non_persistent_buffers_set") or ())
    tensors = {}
    for kind in ("_parameters", "_buffers"):
        for name, t in (state[kind] or {}).items():
            if t is None or name in skip:
                continue
            if not isinstance(t, torch.Tensor):
                raise UserError(f"{where}: {class_name}.{_shown(name)} is a {type(t).__name__}, not a tensor")
            tensors[name] = t
    children = {}
    for name, child in (state["_modules"] or {}).items():
        if child is None:
            continue
        child = getattr(child, "record", child)  # a plain module pickle's stand-in, already built
        if not isinstance(child, ModuleRecord):
            raise UserError(f"{where}: submodule {class_name}.{_shown(name)} is a {type(child).__name__}; {REFUSAL}")
        children[name] = child
    attrs = {k: v for k, v in state.items() if not k.startswith("_") and k != "training"}
    return ModuleRecord(class_name, origin, (), tuple(state.get("_init_args") or ()),
                        dict(state.get("_init_kwargs") or {}), tensors, children, attrs)


# --- NVIDIA's persistence records ------------------------------------------------------------------

PERSISTENT_CLASSES: set[str] = set()  # class names a format accepts in persistence records (nvidia.py fills it)
_CLASS_DEF = re.compile(r"^class\s+([A-Za-z_]\w*)", re.MULTILINE)


class PlainDict(dict):
    """``dnnlib.EasyDict`` (a dict with attribute access in NVIDIA's code) read back as a plain dict."""

    def __setstate__(self, state):
        if state:
            raise pickle.UnpicklingError("an EasyDict with instance attributes")


class _PersistentLoader:
    """Stands in for ``torch_utils.persistence._reconstruct_persistent_obj``: the record, never the class."""

    def __init__(self, where: str):
        self.where = where

    def __call__(self, meta: Any) -> ModuleRecord:
        if not isinstance(meta, dict) or meta.get("type") != "class":
            kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
            raise UserError(f"{self.where}: a persistent object of type {_shown(kind)!r}; {REFUSAL}")
        name, src = meta.get("class_name"), meta.get("module_src")
        if not isinstance(name, str) or not isinstance(src, str):
            raise UserError(f"{self.where}: a persistent object without a class name and module source")
        if name not in PERSISTENT_CLASSES:
            raise UserError(f"{self.where}: refused persistent class {_shown(name)!r} (not a StyleGAN2/StyleGAN3 "
                            f"network class distgan knows); {REFUSAL}")
        digest = hashlib.sha256(src.encode()).hexdigest()[:16]
        record = _module_state(name, f"persistent:{digest}", meta.get("state"), self.where)
        record.module_classes = tuple(_CLASS_DEF.findall(src))
        if name not in record.module_classes:
            raise UserError(f"{self.where}: the persistent class {_shown(name)!r} is not defined in the source "
                            "it carries")
        return record


# --- plain nn.Module pickles (registered per format) ------------------------------------------------

MODULE_CLASSES: dict[tuple[str, str], str] = {}  # (module, qualname) -> a short format name, e.g. "r3gan"


def _module_stub(module: str, qualname: str) -> type:
    """A class standing in for ``module.qualname``: NEWOBJ makes an instance, BUILD records its state."""

    class Stub:
        def __setstate__(self, state):
            if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
                state = state[0]
            self.record = _module_state(qualname, f"global:{module}", state, "network pickle")

    Stub.__qualname__ = Stub.__name__ = qualname
    return Stub


# --- the tensor rebuilders ---------------------------------------------------------------------------

def _storage_from_bytes(b: Any):
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError("a storage that is not bytes")
    buffer = io.BytesIO(b)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def _is_storage(s: Any) -> bool:
    return isinstance(s, (torch.UntypedStorage, torch.storage.TypedStorage))


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` without autograd hooks."""
    if not _is_storage(storage):
        raise pickle.UnpicklingError("a tensor whose storage is not a storage")
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored) -> torch.Tensor:
    """A parameter read back as a plain tensor (its hooks and requires_grad dropped)."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter without tensor data")
    return data.detach()


class _TensorType:
    """``torch.Tensor`` / ``torch.nn.Parameter`` as names in ``_rebuild_from_type_v2`` (never instantiated)."""


def _rebuild_from_type(func, new_type, args, state) -> torch.Tensor:
    if func not in (_rebuild_tensor, _rebuild_parameter) or new_type is not _TensorType:
        raise pickle.UnpicklingError("a tensor subclass")
    return func(*args)


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 objects): only the dict and module stand-ins."""
    if base is not object or not (cls is PlainDict or hasattr(cls, "__setstate__") and cls.__module__ == __name__):
        raise pickle.UnpicklingError("copyreg._reconstructor of an unknown class")
    return cls.__new__(cls)


def _numpy(name: str):
    """numpy's array and scalar rebuilders (data only: a dtype and bytes)."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return {"scalar": multiarray.scalar, "_reconstruct": multiarray._reconstruct, "dtype": np.dtype,
            "ndarray": np.ndarray}[name]


class _TFNetwork:
    """``dnnlib.tflib.network.Network``: a TF-era pickle (StyleGAN/StyleGAN2 in TensorFlow)."""


TF_ERA = ("a TF-era StyleGAN/StyleGAN2 pickle (dnnlib.tflib.network.Network), which distgan cannot read; "
          "convert it first with NVIDIA's stylegan2-ada-pytorch legacy.py (python legacy.py --source=IN.pkl "
          "--dest=OUT.pkl) and pass OUT.pkl")

# (module, name) -> what it resolves to. Everything else is refused.
GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("dnnlib.util", "EasyDict"): PlainDict,
    ("dnnlib", "EasyDict"): PlainDict,
}
NUMPY = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray"}


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in GLOBALS:
            return GLOBALS[(module, name)]
        if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
            return _PersistentLoader(self.where)
        if (module, name) in MODULE_CLASSES:
            return _module_stub(module, name)
        if module in NUMPY and name in ("scalar", "_reconstruct", "dtype", "ndarray"):
            return _numpy(name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("dnnlib.tflib"):
            raise UserError(f"{self.where} is {TF_ERA}")
        raise UserError(f"{self.where}: refused {_shown(f'{module}.{name}')}: not a tensor, module state or a "
                        f"network class distgan knows; {REFUSAL}")

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"{self.where}: refused a persistent id {str(pid)[:40]!r} (a torch.save file, not a "
                        "network pickle; distgan checkpoints are folders with state.pt)")


def _unwrap(obj: Any) -> Any:
    """Module stubs -> their records, recursively through dicts, lists and tuples."""
    if hasattr(obj, "record") and isinstance(obj.record, ModuleRecord):
        return obj.record
    if isinstance(obj, dict):
        return type(obj)((k, _unwrap(v)) for k, v in obj.items()) if not isinstance(obj, PlainDict) else \
            PlainDict((k, _unwrap(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(v) for v in obj)
    return obj


def load(path: str) -> Any:
    """Read ``path`` with :class:`SafeUnpickler`: plain data, tensors and :class:`ModuleRecord` trees. Anything
    else, or a damaged file, is one UserError line."""
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, f"network pickle {path}").load()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"network pickle {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a network pickle") from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure means an unusable file
        raise UserError(f"network pickle {path} is unreadable: {type(e).__name__}: {first_line(e, 160)}") from None
    return _unwrap(obj)
