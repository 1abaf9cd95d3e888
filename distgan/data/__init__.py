"""Datasets: the protocol every dataset follows and the registry of the ones distgan knows.

A dataset maps a global sample index to one sample; :class:`~distgan.data.sampler.ShardedSampler` maps
(seed, counter, rank, world) to this rank's indices; :func:`batch_source` turns those into tensors on
the device. The training loop only ever asks for "the batch of counter c", so a batch is a pure
function of (seed, global sample index) and 1 worker x B sees the same images as W workers x B/W.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

from distgan.data import image_files, images, loader, memory, mixture
from distgan.data.image_files import FolderDataset, ImageDataset, ZipDataset
from distgan.data.memory import MemoryDataset, default_root
from distgan.data.mixture import MIXTURES, mixture_modes, sample_mixture
from distgan.data.sampler import ShardedSampler
from distgan.errors import UserError

if TYPE_CHECKING:
    import torch

    from distgan.config import Config, DatasetConfig

__all__ = ["DATASETS", "Dataset", "DatasetSpec", "MIXTURES", "MemoryDataset", "ShardedSampler", "batch_source",
           "check_loaded", "default_root", "load", "locate", "mixture_modes", "read_batches", "resolution",
           "sample_mixture", "spec"]


class Dataset(Protocol):
    shape: tuple[int, ...]  # one sample: (C, H, W) images, (2,) points
    num_classes: int  # 0: unlabelled

    def __len__(self) -> int: ...

    def item(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample ``i``: a uint8 (C, H, W) image (or a float point) and its label (-1 when unlabelled)."""


@dataclass(frozen=True)
class DatasetSpec:
    kind: str  # "image" | "points": which models can train on it (models declare the kinds they take)
    locate: Callable[[DatasetConfig], DatasetConfig]  # in the driver, once: resolve root, unpack; UserError
    load: Callable[[DatasetConfig, int], Dataset]  # in every worker: (config, seed) -> the training set
    labelled: bool | None  # has class labels (model.conditional needs them); None: the data decides (its index)
    native_size: int | None = None  # image side when dataset.resolution is null; None: the data decides
    needs_root: str | None = None  # the message when dataset.root must be given
    check_readable: bool = False  # small in-memory sets: the driver decodes them once before workers start
    streamed: bool = False  # decoded per batch by DataLoader workers; the driver reads only the index
    pow2_resolution: bool = False  # dataset.resolution must be a power of two from 16 to 1024
    stageable: bool = False  # dataset.stage_dir copies it to node-local storage first


_STREAMED = {"streamed": True, "pow2_resolution": True}
DATASETS: dict[str, DatasetSpec] = {
    **{name: DatasetSpec("image", memory.locate_torchvision, memory.load_torchvision, True, size, check_readable=True)
       for name, size in (("fashion_mnist", 28), ("mnist", 28), ("cifar10", 32))},
    "image_folder": DatasetSpec("image", partial(image_files.locate_images, FolderDataset),
                                partial(image_files.load_images, FolderDataset), None,
                                needs_root="dataset=image_folder needs dataset.root=/path/to/images (flat, "
                                           "or one subfolder per class)", **_STREAMED),
    "zip": DatasetSpec("image", partial(image_files.locate_images, ZipDataset),
                       partial(image_files.load_images, ZipDataset), None,
                       needs_root="dataset=zip needs dataset.root=/path/to/data.zip (made by "
                                  "launch/prepare_dataset.py or StyleGAN's dataset_tool.py)",
                       stageable=True, **_STREAMED),
    **{name: DatasetSpec("points", mixture.locate, mixture.load, False) for name in MIXTURES},
}


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def resolution(cfg: DatasetConfig) -> int | None:
    """The side of the images a run trains on; None for points, and for a folder or zip whose own size
    decides until :func:`locate` has read it."""
    s = spec(cfg.name)
    return None if s.kind != "image" else cfg.resolution or s.native_size


def check(cfg: Config) -> None:
    """The dataset's own rules, checked before the launch (nothing is read here)."""
    d, s = cfg.dataset, spec(cfg.dataset.name)
    if s.needs_root and not d.root:
        raise UserError(s.needs_root)
    if cfg.model.conditional and s.labelled is False:
        raise UserError(f"model.conditional=true needs a labelled dataset; dataset={d.name} has no "
                        "labels (use " + ", ".join(n for n, x in DATASETS.items() if x.labelled is not False)
                        + ", or model.conditional=false)")
    size = d.resolution
    if size is not None and size <= 0:
        raise UserError(f"dataset.resolution must be positive, got {size}")
    if size is not None and s.pow2_resolution:
        images.check_resolution(size)
    if d.channels not in (None, 1, 3):
        raise UserError(f"dataset.channels={d.channels}: use 1 (grayscale), 3 (RGB) or null (from the images)")
    if d.loader_workers is not None and d.loader_workers < 0:
        raise UserError(f"dataset.loader_workers must be >= 0 (0: decode in the training process), "
                        f"got {d.loader_workers}")
    if not s.streamed:  # the folder/zip keys would be silently ignored by an in-memory set
        for key, default in (("channels", None), ("xflip", False), ("loader_workers", None), ("skip_bad", False)):
            if getattr(d, key) != default:
                raise UserError(f"dataset.{key} applies to dataset=image_folder and dataset=zip (streamed); "
                                f"dataset={d.name} is held in memory: drop dataset.{key}")
    if d.stage_dir and not s.stageable:
        raise UserError(f"dataset.stage_dir copies a zip to node-local storage; dataset={d.name} is read in place "
                        "(pack a folder with launch/prepare_dataset.py and use dataset=zip, or unset stage_dir)")


def check_loaded(cfg: Config, dataset: Dataset) -> None:
    """The rules that need the data itself (the pre-flight calls this with the driver's view of it)."""
    if cfg.model.conditional and dataset.num_classes < 2:
        raise UserError(f"model.conditional=true needs class labels, and dataset.root={cfg.dataset.root} has "
                        f"{dataset.num_classes or 'no'} classes: put the images in one subfolder per class (or "
                        "give a dataset.json with labels), or set model.conditional=false")
    if cfg.train.batch_size > len(dataset):
        raise UserError(f"train.batch_size={cfg.train.batch_size} is larger than {cfg.dataset.name} "
                        f"({len(dataset)} images)")


def locate(cfg: DatasetConfig) -> DatasetConfig:
    """The config with ``root`` resolved (the driver calls this once, before any worker starts; for a
    folder or zip it builds the index and pins the images' resolution and channels)."""
    return spec(cfg.name).locate(cfg)


def load(cfg: DatasetConfig, seed: int = 0) -> Dataset:
    """The (already located) training set."""
    return spec(cfg.name).load(cfg, seed)


class _MemoryBatches:
    """``source(counter) -> (x, labels or None)`` on the device, for datasets held as tensors; the same
    ``take_wait_ms``/``skipped``/``close`` as a folder's or zip's :class:`~distgan.data.loader.BatchLoader`."""

    skipped = 0  # nothing to skip: the data was decoded before training

    def __init__(self, dataset: MemoryDataset, sampler: ShardedSampler, device: torch.device):
        self.dataset, self.sampler, self.device = dataset, sampler, device
        self._wait_sum, self._wait_n = 0.0, 0

    def __call__(self, counter: int):
        t0 = time.perf_counter()
        idx = self.sampler.indices(counter)
        out = self.dataset.batch(idx, self.device), self.dataset.batch_labels(idx, self.device)
        self._wait_sum, self._wait_n = self._wait_sum + (time.perf_counter() - t0) * 1e3, self._wait_n + 1
        return out

    def take_wait_ms(self) -> float:
        mean = self._wait_sum / self._wait_n if self._wait_n else 0.0
        self._wait_sum, self._wait_n = 0.0, 0
        return mean

    def close(self) -> None:
        pass


def batch_source(dataset: Dataset, sampler: ShardedSampler, device: torch.device, first_counter: int = 0,
                 cfg: Config | None = None, where: Callable[[], str] | None = None):
    """What the loop calls for the batch of counter c (c = first_counter, first_counter + 1, ...). A streamed
    dataset gets ``cfg``'s loader workers and ``dataset.skip_bad``; ``where()`` is added to the message of a
    file that fails to decode (the last good checkpoint)."""
    if isinstance(dataset, MemoryDataset):
        return _MemoryBatches(dataset, sampler, device)
    if isinstance(dataset, ImageDataset):
        workers = loader.loader_workers(cfg) if cfg is not None else 0
        return loader.BatchLoader(dataset, sampler, device, first=first_counter, num_workers=workers,
                                  skip_bad=cfg is not None and cfg.dataset.skip_bad, where=where)
    raise TypeError(f"no batch source for {type(dataset).__name__}")


def read_batches(dataset: Dataset, indices: torch.Tensor, batch_size: int = 256, num_workers: int = 0
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Samples ``indices`` of any image Dataset, ``batch_size`` at a time, as (float (n, C, H, W) in
    [-1, 1] on the CPU, int64 labels or None): a MemoryDataset is indexed, a folder or zip decoded (in
    ``num_workers`` DataLoader workers), so the whole set is never in memory. A bad file raises
    :class:`~distgan.data.images.BadImageError` naming it."""
    import torch

    cpu = torch.device("cpu")
    chunks = indices.split(batch_size)
    if isinstance(dataset, MemoryDataset):
        for idx in chunks:
            yield dataset.batch(idx, cpu), dataset.batch_labels(idx, cpu)
        return
    yield from loader.read_chunks(dataset, chunks, num_workers)
