"""Small image sets decoded once into memory: Fashion-MNIST, MNIST, CIFAR-10 (torchvision's formats).

Images are kept as one uint8 ``(N, C, H, W)`` tensor per worker; a batch is indexed and scaled to
[-1, 1] on the fly (no per-sample PIL work in the loop). Fashion-MNIST is found in ``dataset.root``,
else in the Debian package ``dataset-fashion-mnist`` (unpacked once into ``dataset.root``), else
downloaded by torchvision with ``dataset.download=true``.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import struct
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from distgan.config import DatasetConfig
from distgan.errors import UserError, first_line
from distgan.files import write_atomic

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FOLDER = "cifar-10-batches-py"
TORCHVISION_CLASSES = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}
_NOT_FOUND_HINTS = {
    "fashion_mnist": ("put the idx files in {root}/FashionMNIST/raw, install the Debian package "
                      "(apt-get install dataset-fashion-mnist), or set dataset.download=true"),
    "mnist": "put the idx files in {root}/MNIST/raw or set dataset.download=true",
    "cifar10": "put cifar-10-batches-py in {root} or set dataset.download=true",
}


def default_root() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "distgan", "data")


class MemoryDataset:
    """The Dataset protocol over tensors: ``x`` uint8 (N, C, H, W) images or float (N, 2) points."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None, num_classes: int):
        self.x, self.labels, self.num_classes = x, labels, num_classes

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    def __len__(self) -> int:
        return self.x.shape[0]

    def item(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.labels[i]) if self.labels is not None else -1

    def batch(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = self.x[idx]
        if self.is_image:
            return x.to(device, non_blocking=True).float().div_(127.5).sub_(1.0).contiguous()
        return x.to(device, non_blocking=True)

    def batch_labels(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        return None if self.labels is None else self.labels[idx].to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------- locating
def _root(cfg: DatasetConfig) -> Path:
    return Path(os.path.expanduser(cfg.root or default_root())).resolve()


def _has_raw(root: Path, folder: str) -> bool:
    raw = root / folder / "raw"
    return all((raw / f).exists() for f in _IDX_FILES)


def _unpack_debian(root: Path) -> bool:
    """Decompress the Debian package's idx files into ``root/FashionMNIST/raw`` (torchvision's layout)."""
    if not all((DEBIAN_FASHION_MNIST / f"{f}.gz").exists() for f in _IDX_FILES):
        return False
    raw = root / "FashionMNIST" / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for name in _IDX_FILES:
            if (raw / name).exists():
                continue
            with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz") as src:  # a concurrent reader never sees half a file
                write_atomic(raw / name, partial(shutil.copyfileobj, src))
    except OSError as e:
        raise UserError(f"cannot unpack Fashion-MNIST into {raw}: {e.strerror}; set dataset.root to a "
                        "writable folder") from None
    return True


def locate_torchvision(cfg: DatasetConfig) -> DatasetConfig:
    """``dataset.root`` resolved to an absolute folder that holds the set, or a one-line UserError. Runs
    in the launcher before any worker starts, so workers never race to unpack or download."""
    root, name = _root(cfg), cfg.name
    found = (_has_raw(root, TORCHVISION_CLASSES[name]) if name in ("fashion_mnist", "mnist")
             else (root / CIFAR_FOLDER / "data_batch_1").exists())
    if found or (name == "fashion_mnist" and _unpack_debian(root)) or cfg.download:
        return replace(cfg, root=str(root))  # with download=true torchvision fetches in load(), called once first
    raise UserError(f"{name} not found in dataset.root={root}: {_NOT_FOUND_HINTS[name].format(root=root)}")


# ------------------------------------------------------------------------------------------ loading
def load_torchvision(cfg: DatasetConfig, seed: int = 0, train: bool = True) -> MemoryDataset:
    """The (already located) training set, or with ``train=False`` its test split."""
    root = Path(cfg.root or default_root())
    folder = TORCHVISION_CLASSES[cfg.name]
    if cfg.name in ("fashion_mnist", "mnist") and _has_raw(root, folder):
        raw, prefix = root / folder / "raw", "train" if train else "t10k"
        try:
            x = _read_idx(raw / f"{prefix}-images-idx3-ubyte").unsqueeze(1)
            labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte").long()
            if len(labels) != len(x):
                raise ValueError(f"{len(x)} images but {len(labels)} labels")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {cfg.name} from {root}: {e}") from None
        return MemoryDataset(_resized(x, cfg.resolution), labels, 10)
    if cfg.name == "cifar10" and (root / CIFAR_FOLDER / "data_batch_1").exists():
        try:
            x, labels, classes = _read_cifar(root / CIFAR_FOLDER, train)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
            raise UserError(f"cannot read cifar10 from {root / CIFAR_FOLDER}: {first_line(e, 200)}; "
                            "the files look truncated or corrupt: copy them again") from None
        return MemoryDataset(_resized(x, cfg.resolution), labels, classes)
    import torchvision  # dataset.download=true: torchvision fetches (and checks) the files

    try:
        ds = getattr(torchvision.datasets, folder)(str(root), train=train, download=cfg.download)
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"cannot read {cfg.name} from {root}: {str(e).splitlines()[0]}") from None
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    return MemoryDataset(_resized(x, cfg.resolution), labels, len(ds.classes))


def _resized(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size and size != x.shape[-1]:
        import torchvision.transforms.v2.functional as TF

        x = TF.resize(x, [size, size], antialias=True)
    return x.contiguous()


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's python batches are pickles: only the globals a dict of numpy arrays needs may load, so a
    crafted file cannot run code (torchvision unpickles them unrestricted)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR-10 batch)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        entry = _ArraysOnly(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} is not a CIFAR-10 batch")
    return entry


def _read_cifar(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(uint8 (N, 3, 32, 32), labels, classes) from ``cifar-10-batches-py`` (data_batch_1..5 or test_batch,
    batches.meta), the layout torchvision reads; read here for the same reason as :func:`_read_idx`."""
    import numpy as np

    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]:
        entry = _unpickle(folder / name)
        try:
            data, labels = np.asarray(entry["data"], dtype=np.uint8), entry.get("labels", entry.get("fine_labels"))
        except KeyError:
            raise ValueError(f"{name} has no 'data'") from None
        if labels is None or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise ValueError(f"{name} is not a CIFAR-10 batch (data {data.shape}, labels of another length)")
        xs.append(data)
        ys.extend(labels)
    meta = folder / "batches.meta"
    classes = len(_unpickle(meta).get("label_names", range(10))) if meta.exists() else 10
    x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32).copy())
    return x, torch.as_tensor(ys, dtype=torch.long), classes


def _read_idx(path: Path) -> torch.Tensor:
    """An idx file of bytes (MNIST's format: 0, 0, 0x08, ndim, big-endian sizes, data), as torchvision
    reads it. Read here because importing torchvision costs ~1.4 CPU-s (it pulls in torch._dynamo), which
    the launcher's pre-flight read of the data would spend before Ray starts (docs/benchmarks.md)."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path.name} is not an idx file of bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path.name} is truncated")
    sizes = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = memoryview(raw)[4 + 4 * ndim:]
    if len(body) != math.prod(sizes):
        raise ValueError(f"{path.name} holds {len(body)} data bytes where its header says {math.prod(sizes)}: "
                         "the file is truncated or corrupt")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*sizes)
