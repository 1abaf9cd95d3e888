"""Streamed feature statistics: what FID, KID and precision/recall need of a set of N samples, in memory
bounded by the batch and a fixed-size subset, never by N.

:class:`FeatureStats` keeps the count, Σx and Σxxᵀ in float64 on the device (StyleGAN3's FeatureStats
does the same), plus the features of ``keep`` samples for KID and precision/recall: global index j is
kept as row j / stride when j % stride == 0 (stride 1: the first ``keep``). Ranks accumulate their
shares and :meth:`FeatureStats.all_reduce` sums them once: the subset rows sit at their global
position, so the sum is also the re-interleaving into global order.
Reference statistics of a dataset are cached as ``<key>.pt`` files (:func:`save`, :func:`load`).
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import torch
import torch.distributed as tdist

from distgan import dist
from distgan.files import write_atomic
from distgan.metrics.distances import frechet_distance


class FeatureStats:
    def __init__(self, dim: int, device: str | torch.device = "cpu", keep: int = 0, stride: int = 1):
        self.dim, self.keep, self.stride, self.device = dim, keep, stride, torch.device(device)
        self.count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)
        self.subset = torch.zeros(keep, dim, dtype=torch.float32, device=self.device)
        self.filled = torch.zeros(keep, dtype=torch.float64, device=self.device)  # 1 where a row arrived

    def update(self, features: torch.Tensor, indices: torch.Tensor) -> None:
        """Add the ``features`` of the samples with these global ``indices`` (each sample once, on one rank)."""
        f = features.to(self.device, torch.float64)
        self.count += len(f)
        self.sum += f.sum(0)
        self.sum_outer += f.T @ f
        j = indices.to(self.device)
        mine = (j % self.stride == 0) & (j // self.stride < self.keep)
        rows = j[mine] // self.stride
        self.subset[rows] = features[mine.to(features.device)].to(self.device, torch.float32)
        self.filled[rows] += 1

    def all_reduce(self) -> FeatureStats:
        """Sum over ranks (in place) when a process group is up; nothing to do in a single process."""
        if dist.world_size() > 1:
            for t in (self.count, self.sum, self.sum_outer, self.subset, self.filled):
                tdist.all_reduce(t)
        return self

    @property
    def n(self) -> int:
        return int(self.count.item())

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased covariance (N − 1, as numpy's ``cov`` and pytorch-fid), float64 on the CPU."""
        n = self.count.cpu()
        if n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {int(n)}")
        mean = self.sum.cpu() / n
        cov = (self.sum_outer.cpu() - n * torch.outer(mean, mean)) / (n - 1)
        return mean, (cov + cov.T) / 2  # exact symmetry for eigh

    def kept(self) -> torch.Tensor:
        """The kept features in global order, float32 on the CPU."""
        rows = min(self.keep, math.ceil(self.n / self.stride))
        if not bool((self.filled[:rows] == 1).all()):
            raise RuntimeError("feature subset incomplete or duplicated: a sample was scored on no rank or twice")
        return self.subset[:rows].cpu()


class Reference:
    """Statistics loaded from a file: the mean, covariance and subset, without the running sums."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, count: int, subset: torch.Tensor, meta: dict):
        self.mean, self.cov, self.count, self.subset, self.meta = mean, cov, count, subset, meta

    @classmethod
    def of(cls, stats: FeatureStats, meta: dict) -> Reference:
        return cls(*stats.mean_cov(), stats.n, stats.kept(), dict(meta))

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.cov

    def kept(self) -> torch.Tensor:
        return self.subset


def fid(a: FeatureStats | Reference, b: FeatureStats | Reference) -> float:
    """Fréchet distance of two sets from their statistics."""
    return frechet_distance(*a.mean_cov(), *b.mean_cov())


def reference_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "distgan" / "reference"


def reference_key(dataset_key: str, meta: dict) -> str:
    """File name of a dataset's reference statistics: the dataset, the extractor and its preprocessing."""
    return (f"{dataset_key}-{meta['extractor_sha256']}-{meta['resolution']}px-n{meta['num_real']}"
            f"-k{meta['subset']}")


def save(path: str | Path, ref: Reference) -> Path:
    """Write atomically (:func:`distgan.files.write_atomic`): a reader never sees half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda f: torch.save({"mean": ref.mean, "cov": ref.cov, "count": ref.count,
                                                    "subset": ref.subset, "meta": ref.meta}, f))


def load(path: str | Path, expect: dict | None = None) -> Reference | None:
    """The statistics in ``path``, or None when the file is missing, unreadable, or its metadata differs
    from ``expect`` in any key ``expect`` names (then the caller computes them afresh)."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        ref = Reference(d["mean"], d["cov"], int(d["count"]), d["subset"], d["meta"])
    except (OSError, KeyError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
        return None
    if expect and any(ref.meta.get(k) != v for k, v in expect.items()):
        return None
    return ref
