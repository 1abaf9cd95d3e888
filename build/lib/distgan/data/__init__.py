"""Datasets: the protocol every dataset follows and the registry of the ones distgan knows.

A dataset maps a global sample index to one sample; :class:`~distgan.data.sampler.ShardedSampler` maps
(seed, counter, rank, world) to this rank's indices; :func:`batch_source` turns those into tensors on
the device. The training loop only ever asks for "the batch of counter c", so a batch is a pure
function of (seed, global sample index) and 1 worker x B sees the same images as W workers x B/W.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from distgan.data import memory, mixture
from distgan.data.memory import MemoryDataset, default_root
from distgan.data.mixture import MIXTURES, mixture_modes, sample_mixture
from distgan.data.sampler import ShardedSampler
from distgan.errors import UserError

if TYPE_CHECKING:
    import torch

    from distgan.config import Config, DatasetConfig

__all__ = ["DATASETS", "Dataset", "DatasetSpec", "MIXTURES", "MemoryDataset", "ShardedSampler", "batch_source",
           "default_root", "load", "locate", "mixture_modes", "sample_mixture", "spec"]


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
    labelled: bool  # has class labels (model.conditional needs them)
    native_size: int | None = None  # image side before dataset.image_size; None: dataset.image_size decides
    default_size: int | None = None  # the side when dataset.image_size is null and there is no native one
    needs_root: str | None = None  # the message when dataset.root must be given
    check_readable: bool = False  # small in-memory sets: the driver decodes them once before workers start


DATASETS: dict[str, DatasetSpec] = {
    **{name: DatasetSpec("image", memory.locate_torchvision, memory.load_torchvision, True, size, check_readable=True)
       for name, size in (("fashion_mnist", 28), ("mnist", 28), ("cifar10", 32))},
    "image_folder": DatasetSpec("image", memory.locate_folder, memory.load_folder, True, default_size=64,
                                needs_root="dataset=image_folder needs dataset.root=/path/to/images "
                                           "(one subfolder per class)"),
    **{name: DatasetSpec("points", mixture.locate, mixture.load, False) for name in MIXTURES},
}


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def image_size(cfg: DatasetConfig) -> int | None:
    """The side of the images a run trains on (None for points)."""
    s = spec(cfg.name)
    return None if s.kind != "image" else cfg.image_size or s.native_size or s.default_size


def check(cfg: Config) -> None:
    """The dataset's own rules, run by :func:`distgan.config.validate`."""
    s = spec(cfg.dataset.name)
    if s.needs_root and not cfg.dataset.root:
        raise UserError(s.needs_root)
    if cfg.model.conditional and not s.labelled:
        raise UserError(f"model.conditional=true needs a labelled dataset; dataset={cfg.dataset.name} has no "
                        "labels (use " + ", ".join(n for n, d in DATASETS.items() if d.labelled)
                        + ", or model.conditional=false)")
    if cfg.dataset.image_size is not None and cfg.dataset.image_size <= 0:
        raise UserError(f"dataset.image_size must be positive, got {cfg.dataset.image_size}")


def locate(cfg: DatasetConfig) -> DatasetConfig:
    """The config with ``root`` resolved (the driver calls this once, before any worker starts)."""
    return spec(cfg.name).locate(cfg)


def load(cfg: DatasetConfig, seed: int = 0) -> Dataset:
    """The (already located) training set."""
    return spec(cfg.name).load(cfg, seed)


class _MemoryBatches:
    """``source(counter) -> (x, labels or None)`` on the device, for datasets held as tensors."""

    wait_ms = 0.0  # time the last batch kept the step waiting (indexing a tensor: nothing to wait for)

    def __init__(self, dataset: MemoryDataset, sampler: ShardedSampler, device: torch.device):
        self.dataset, self.sampler, self.device = dataset, sampler, device

    def __call__(self, counter: int):
        idx = self.sampler.indices(counter)
        return self.dataset.batch(idx, self.device), self.dataset.batch_labels(idx, self.device)

    def close(self) -> None:
        pass


def batch_source(dataset: Dataset, sampler: ShardedSampler, device: torch.device, first_counter: int = 0):
    """What the loop calls for the batch of counter c (c = first_counter, first_counter + 1, ...)."""
    if isinstance(dataset, MemoryDataset):
        return _MemoryBatches(dataset, sampler, device)
    raise TypeError(f"no batch source for {type(dataset).__name__}")
