"""Datasets, decoded once into memory as tensors, and the world-size-invariant sharded sampler.

Images come from torchvision (FashionMNIST, MNIST, CIFAR10, ImageFolder) and are kept as uint8
``(N, C, H, W)``; a batch is indexed and scaled to [-1, 1] on the fly (no per-sample PIL work in the
loop). The 2D mixtures (ring of 8, grid of 25) are generated from the seed (DESIGN.md §6).
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from distgan.config import DatasetConfig
from distgan.errors import UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_TV_CLASSES = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}


def default_root() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "distgan", "data")


@dataclass
class Data:
    x: torch.Tensor  # uint8 (N, C, H, W) images, or float (N, 2) points
    labels: torch.Tensor | None  # int64 (N,) or None
    num_classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    def batch(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = self.x[idx]
        if self.is_image:
            x = x.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
            return x.contiguous()
        return x.to(device, non_blocking=True)

    def batch_labels(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        return None if self.labels is None else self.labels[idx].to(device, non_blocking=True)

    def __len__(self) -> int:
        return self.x.shape[0]


# ----------------------------------------------------------------------------------------- locating
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
            tmp = raw / f".{name}.{os.getpid()}.tmp"
            with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, raw / name)  # atomic: a concurrent reader never sees half a file
    except OSError as e:
        raise UserError(f"cannot unpack Fashion-MNIST into {raw}: {e.strerror}; set dataset.root to a "
                        "writable folder") from None
    return True


def locate(cfg: DatasetConfig) -> DatasetConfig:
    """Resolve ``cfg.root`` to an absolute folder that holds the data, or raise a one-line UserError.

    Runs in the launcher before any worker starts, so workers never race to unpack or download.
    """
    root = Path(os.path.expanduser(cfg.root or default_root())).resolve()
    name = cfg.name
    if name in ("ring", "grid"):
        return cfg
    if name == "image_folder":
        if not root.is_dir():
            raise UserError(f"dataset.root={root} is not a folder; point it at a folder of class subfolders")
        return _with_root(cfg, root)
    folder = _TV_CLASSES[name]
    if name in ("fashion_mnist", "mnist") and _has_raw(root, folder):
        return _with_root(cfg, root)
    if name == "cifar10" and (root / "cifar-10-batches-py" / "data_batch_1").exists():
        return _with_root(cfg, root)
    if name == "fashion_mnist" and _unpack_debian(root):
        return _with_root(cfg, root)
    if cfg.download:
        return _with_root(cfg, root)  # torchvision downloads in load(); the launcher calls it once first
    hint = {
        "fashion_mnist": (f"put the idx files in {root}/FashionMNIST/raw, install the Debian package "
                          "(apt-get install dataset-fashion-mnist), or set dataset.download=true"),
        "mnist": f"put the idx files in {root}/MNIST/raw or set dataset.download=true",
        "cifar10": f"put cifar-10-batches-py in {root} or set dataset.download=true",
    }[name]
    raise UserError(f"{name} not found in dataset.root={root}: {hint}")


def _with_root(cfg: DatasetConfig, root: Path) -> DatasetConfig:
    from dataclasses import replace

    return replace(cfg, root=str(root))


# ------------------------------------------------------------------------------------------ loading
def load(cfg: DatasetConfig, seed: int = 0) -> Data:
    """Load the (already located) training set into memory."""
    if cfg.name in ("ring", "grid"):
        return Data(sample_mixture(cfg.name, cfg.num_samples, seed), None, 0)
    root = cfg.root or default_root()
    if cfg.name in ("fashion_mnist", "mnist") and _has_raw(Path(root), _TV_CLASSES[cfg.name]):
        raw = Path(root) / _TV_CLASSES[cfg.name] / "raw"
        try:
            x = _read_idx(raw / "train-images-idx3-ubyte").unsqueeze(1)
            labels = _read_idx(raw / "train-labels-idx1-ubyte").long()
            if len(labels) != len(x):
                raise ValueError(f"{len(x)} images but {len(labels)} labels")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {cfg.name} from {root}: {e}") from None
        return Data(_resized(x, cfg.image_size), labels, 10)
    import torchvision

    try:
        if cfg.name == "image_folder":
            ds = torchvision.datasets.ImageFolder(root)
            if len(ds) == 0:
                raise UserError(f"no images found under dataset.root={root}")
            size = cfg.image_size or 64
            tf = torchvision.transforms.v2
            to_tensor = tf.Compose([tf.PILToTensor(), tf.Resize(size), tf.CenterCrop(size)])
            x = torch.stack([to_tensor(ds.loader(p)) for p, _ in ds.samples])
            if x.shape[1] == 4:
                x = x[:, :3]
            return Data(x, torch.tensor(ds.targets), len(ds.classes))
        cls = getattr(torchvision.datasets, _TV_CLASSES[cfg.name])
        ds = cls(root, train=True, download=cfg.download)
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"cannot read {cfg.name} from {root}: {str(e).splitlines()[0]}") from None
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    return Data(_resized(x, cfg.image_size), labels, len(ds.classes))


def _resized(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size and size != x.shape[-1]:
        import torchvision.transforms.v2.functional as TF

        x = TF.resize(x, [size, size], antialias=True)
    return x.contiguous()


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


# ------------------------------------------------------------------------------------- 2D mixtures
def mixture_modes(name: str) -> tuple[torch.Tensor, float]:
    """Mode centres and σ of the PacGAN protocol: ring radius 1, σ=0.01; grid {-4..4}², σ=0.05."""
    if name == "ring":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return torch.stack([angles.cos(), angles.sin()], 1).float(), 0.01
    if name == "grid":
        axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        return torch.cartesian_prod(axis, axis), 0.05
    raise ValueError(name)


def sample_mixture(name: str, n: int, seed: int) -> torch.Tensor:
    modes, sigma = mixture_modes(name)
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(modes), (n,), generator=g)
    return modes[which] + sigma * torch.randn(n, 2, generator=g)


# -------------------------------------------------------------------------------------- sampling
def counter_generator(seed: int, stream: int, counter: int) -> torch.Generator:
    """A generator determined by (seed, stream, counter) alone: the same on every rank and world size."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) * 1_000_000_007 + counter)


class ShardedSampler:
    """Global batch ``b`` of a run, as index tensors; rank ``r`` of ``W`` takes the r-th contiguous slice.

    The global batch is a slice of a per-epoch permutation seeded by (seed, epoch), so the union of
    the ranks' shards is the same whatever the world size, and a batch is located by its counter
    alone (resume needs no sampler state beyond the step).
    """

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int):
        if global_batch > n:
            raise UserError(f"train.batch_size={global_batch} is larger than the dataset ({n} samples)")
        self.n, self.b, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.local = global_batch // world
        self.per_epoch = n // global_batch  # drop the last partial batch of an epoch
        self._epoch, self._perm = -1, None

    def indices(self, counter: int) -> torch.Tensor:
        epoch, k = divmod(counter, self.per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=counter_generator(self.seed, 0, epoch))
            self._epoch = epoch
        start = k * self.b + self.rank * self.local
        return self._perm[start:start + self.local]


def local_noise(seed: int, stream: int, counter: int, global_batch: int, dim: int,
                rank: int, world: int, device: torch.device, uniform: bool = False) -> torch.Tensor:
    """This rank's slice of a global batch of N(0, 1) (or U[0, 1)) rows for one phase of one step."""
    draw = torch.rand if uniform else torch.randn
    z = draw(global_batch, dim, generator=counter_generator(seed, stream, counter))
    local = global_batch // world
    return z[rank * local:(rank + 1) * local].to(device, non_blocking=True)


def local_labels(seed: int, stream: int, counter: int, global_batch: int, num_classes: int,
                 rank: int, world: int, device: torch.device) -> torch.Tensor:
    """This rank's slice of a global batch of uniform class labels for fakes (drawn like z)."""
    y = torch.randint(num_classes, (global_batch,), generator=counter_generator(seed, stream, counter))
    local = global_batch // world
    return y[rank * local:(rank + 1) * local].to(device, non_blocking=True)
