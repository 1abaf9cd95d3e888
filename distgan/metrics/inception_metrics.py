"""``metrics.features=inception``: the standard metrics of a generator — fid50k_full, kid50k_full,
precision and recall (k = 3) in TF-Inception features — streamed, for
:class:`~distgan.metrics.evaluator.Evaluator`, ``launch/evaluate.py`` and the async evaluator.

:class:`InceptionMetrics` is the glue between a run and the streamed scorer: the weights are loaded once
per process (rank 0 verifies and sends them, :func:`distgan.metrics.inception.load_shared`); the
reference statistics of the training set are read from the cache or computed once, each rank reading its
share of the images through the Dataset protocol (``len(ds)``, ``ds.item(i)`` -> uint8 C×H×W: in-memory
and streamed datasets alike); each rank then generates its share of the N samples, sample i from
(seed, i) alone, one batch at a time. Unlike the classifier, nothing is trained: the network is the
papers' own.

The streamed scorer (:func:`stream`, :func:`reference_stats`, :func:`score_streamed`): each rank
extracts the features of its share of the samples (:mod:`distgan.metrics.sources`) one batch at a time
into a :class:`~distgan.metrics.stats.FeatureStats`; the ranks all-reduce once; rank 0 computes the
scores. FID uses all N samples and the whole reference; KID (100 subsets of 1,000, Bińkowski et al.) and
precision/recall (Kynkäänniemi et al.) use a fixed subset of ``keep`` samples per side, every
(N/keep)-th by global index. Memory is bounded by ``metrics.batch_size`` and ``metrics.kid_pr_samples``,
never by N. Names follow N as StyleGAN's do (``fid50k``, ``fid10k``), with ``_full`` when the reference
is the whole training set; every score carries its metadata (N, reference size, resize, extractor hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as tdist

from distgan import dist
from distgan.config import DatasetConfig, MetricsConfig
from distgan.errors import UserError
from distgan.metrics import sources
from distgan.metrics import stats as S
from distgan.metrics.distances import kid, precision_recall
from distgan.metrics.inception import DIM, InceptionFeatures, load_shared, locate, read_verified
from distgan.metrics.sources import Batches

NUM_SAMPLES = 50_000  # fid50k_full
KEEP = 10_000  # features kept per side for KID and precision/recall
KID_SUBSETS, KID_SUBSET_SIZE, PR_K = 100, 1000, 3
# what a reference depends on (its cache file is valid only when all of these agree)
REFERENCE_META = ("extractor", "extractor_sha256", "resize", "feature_dim")


# ------------------------------------------------------------------------------- the streamed scorer
def metric_suffix(num_samples: int, full: bool) -> str:
    """``50k_full`` for 50,000 samples against the whole training set; ``10k``, ``2500`` otherwise."""
    n = f"{num_samples // 1000}k" if num_samples >= 1000 and num_samples % 1000 == 0 else str(num_samples)
    return n + ("_full" if full else "")


def accumulate(batches: Batches, extractor: Callable[[torch.Tensor], torch.Tensor], n: int, dim: int,
               keep: int = KEEP, device: str | torch.device = "cpu") -> S.FeatureStats:
    """This rank's statistics of ``batches`` ((global indices, images) pairs of a set of ``n``), then
    summed over the ranks. Rows kept for KID/PR: global index j with j % stride == 0, stride = n // keep."""
    keep = min(keep, n)
    st = S.FeatureStats(dim, device, keep, stride=max(1, n // keep) if keep else 1)
    for idx, images in batches:
        st.update(extractor(images), idx)
    return st.all_reduce()


def reference_stats(batches: Callable[[int, int], Batches], meta: dict, extractor: Callable, dim: int,
                    dataset_key: str, keep: int = KEEP, device: str | torch.device = "cpu",
                    cache: bool = True) -> S.Reference | None:
    """The reference statistics of a dataset (``meta``: extractor_sha256, resize, resolution, num_real),
    read from the cache or computed by every rank over its share (``batches(rank, world)``) and cached by
    rank 0. Call on every rank; rank 0 gets the statistics, the others None."""
    rank, world = dist.rank(), dist.world_size()
    meta = {**meta, "dataset": dataset_key, "subset": min(keep, meta["num_real"])}
    path = S.reference_dir() / f"{S.reference_key(dataset_key, meta)}.pt"
    ref = S.load(path, expect=meta) if cache and rank == 0 else None
    found = [ref is not None]
    if world > 1:
        tdist.broadcast_object_list(found, src=0)  # every rank computes, or none does
    if found[0]:
        return ref
    st = accumulate(batches(rank, world), extractor, meta["num_real"], dim, keep, device)
    if rank != 0:
        return None
    ref = S.Reference.of(st, meta)
    if cache:
        S.save(path, ref)
    return ref


def score(fake: S.FeatureStats | S.Reference, real: S.Reference, num_samples: int, full: bool,
          device: str | torch.device = "cpu") -> tuple[dict[str, float], dict]:
    """(metrics, metadata) of generated statistics against a reference."""
    suffix = metric_suffix(num_samples, full)
    fr, rr = fake.kept().to(device), real.kept().to(device)
    kid_mean, _ = kid(rr, fr, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE)
    precision, recall = precision_recall(rr, fr, PR_K)
    metrics = {f"fid{suffix}": S.fid(fake, real), f"kid{suffix}": kid_mean, "precision": precision,
               "recall": recall}
    metrics = {k: (v if math.isfinite(v) else math.inf) for k, v in metrics.items()}
    meta = {"num_samples": num_samples, "num_real": real.count, "kid_pr_samples": [len(fr), len(rr)],
            "resize": real.meta.get("resize"), "extractor_sha256": real.meta.get("extractor_sha256"),
            "reference": real.meta.get("dataset")}
    return metrics, meta


def score_streamed(fake_batches: Callable[[int, int], Batches], real: S.Reference | None, extractor: Callable,
                   dim: int, num_samples: int = 50_000, full: bool = True, keep: int = KEEP,
                   device: str | torch.device = "cpu") -> tuple[dict[str, float], dict]:
    """Every rank: stream this rank's share of ``num_samples`` generated images (``fake_batches(rank,
    world)``), all-reduce; rank 0 returns (metrics, metadata), the others ({}, {})."""
    rank, world = dist.rank(), dist.world_size()
    st = accumulate(fake_batches(rank, world), extractor, num_samples, dim, keep, device)
    if rank != 0:
        return {}, {}
    if real is None:
        raise ValueError("rank 0 needs the reference statistics")
    if getattr(extractor, "info", None) and extractor.info.get("extractor_sha256") != real.meta.get(
            "extractor_sha256"):
        raise ValueError("generated and reference features come from different extractors")
    return score(st, real, num_samples, full, device)


# ------------------------------------------------------------------------------------ a run's data
def _resize_filter(cfg: DatasetConfig) -> str | None:
    """The resize filter a zip was prepared with (prepare_dataset resize_filter=; None: not recorded)."""
    from distgan.data.prepare import recorded_filter

    return recorded_filter(Path(cfg.root).expanduser()) if cfg.name == "zip" and cfg.root else None


def dataset_key(cfg: DatasetConfig) -> str:
    """The name of a dataset's reference statistics in the cache: the dataset and its resize, plus the
    folder for datasets whose content lives at ``dataset.root`` (torchvision's sets are the same
    wherever they are stored)."""
    from distgan.data.memory import TORCHVISION_CLASSES

    ident = {"dataset": cfg.name, "resolution": cfg.resolution or cfg.image_size}
    if cfg.name not in TORCHVISION_CLASSES:
        ident["root"] = str(Path(cfg.root or "").expanduser().resolve())
        ident.update({"resize_filter": f} if (f := _resize_filter(cfg)) not in (None, "lanczos") else {})
    return f"{cfg.name}-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]}"


def dataset_reader(data, n_real: int | None, batch_size: int, num_workers: int):
    """(count, ``batches(rank, world)``) of the reference images: ``n_real`` evenly spread items of
    ``data`` (all of them when None), this rank's strided share as (global indices, images) batches, read
    through :func:`distgan.data.read_batches` (a folder or zip decodes in ``num_workers`` loader workers)."""
    from distgan.data import read_batches

    if len(data.shape) != 3:
        raise UserError(f"Inception metrics need images; this dataset holds samples of shape {tuple(data.shape)}")
    which = sources.spread(len(data), n_real)

    def batches(rank: int, world: int):
        idx = sources.shard(len(which), rank, world)
        for g, (x, _) in zip(idx.split(batch_size), read_batches(data, which[idx], batch_size, num_workers)):
            yield g, x

    return len(which), batches


def check_weights(metrics: MetricsConfig) -> None:
    """Inception: the weights exist and are the known file, checked now rather than at the first score."""
    if metrics.features == "inception":
        read_verified(locate(metrics.inception_path, metrics.download))


_UNSET = object()


class InceptionMetrics:
    """The standard metrics of ``metrics.features=inception``. Call :meth:`prepare` on every rank, then
    :meth:`evaluate` on every rank; rank 0 gets the numbers."""

    def __init__(self, dataset: DatasetConfig, metrics: MetricsConfig | None = None):
        self.dataset, self.m = dataset, metrics or MetricsConfig()
        self.net: InceptionFeatures | None = None
        self.info: dict = {}
        self._ref: S.Reference | None | object = _UNSET  # this rank's reference (None off rank 0), once

    def prepare(self, device: torch.device) -> None:
        if self.net is None or self.net.device != torch.device(device):
            self.net = load_shared(self.m.inception_path, self.m.download, device, self.m.batch_size)
            self.info = dict(self.net.info)

    def reference(self, data=None, device: torch.device | str = "cpu", cache: bool = True) -> S.Reference | None:
        """Every rank: the training set's statistics (rank 0; None elsewhere), from the cache when it holds
        them for this extractor, resolution, ``metrics.num_real`` and subset size, else computed now; then
        kept, so that scoring checkpoint after checkpoint reads the data set once."""
        if self._ref is not _UNSET:
            return self._ref
        if data is None:
            from distgan import data as datasets

            data = datasets.load(self.dataset)
        from distgan.data.loader import default_loader_workers

        workers = self.dataset.loader_workers
        workers = default_loader_workers(os.cpu_count() or 1) if workers is None else workers
        n_real, batches = dataset_reader(data, self.m.num_real, self.m.batch_size, workers)
        meta = {**{k: self.info[k] for k in REFERENCE_META}, "resolution": int(data.shape[-1]),
                "num_real": n_real, "training_set": len(data)}
        self._ref = reference_stats(batches, meta, self.net, DIM, dataset_key(self.dataset),
                                    self.m.kid_pr_samples, device, cache)
        return self._ref

    def evaluate(self, G: torch.nn.Module, num_samples: int, seed: int, latent_dim: int, num_classes: int,
                 device: torch.device, data=None) -> tuple[dict[str, float], dict]:
        """Every rank, with the same (eval-mode) ``G``: (metrics, metadata) on rank 0, ({}, {}) elsewhere."""
        ref = self.reference(data, device)
        full = self.m.num_real is None or (ref is not None and ref.count >= ref.meta.get("training_set", 0))
        generate = sources.generator_fn(G, latent_dim, seed, num_classes, device)
        metrics, meta = score_streamed(
            lambda rank, world: sources.index_batches(generate, num_samples, self.m.batch_size, rank, world),
            ref, self.net, DIM, num_samples, full=full, keep=self.m.kid_pr_samples, device=device)
        return metrics, ({**meta, "training_set": ref.meta.get("training_set")} if ref is not None else meta)

    def score_images(self, n: int, batches, data=None, device: torch.device | str = "cpu") -> tuple[dict, dict]:
        """One process: (metrics, metadata) of ``n`` given images (``(indices, images)`` batches, e.g.
        :func:`distgan.metrics.sources.sample_batches`) against the dataset's reference."""
        ref = self.reference(data, device)
        fake = accumulate(batches, self.net, n, DIM, self.m.kid_pr_samples, device)
        full = self.m.num_real is None or ref.count >= ref.meta.get("training_set", 0)
        metrics, meta = score(fake, ref, n, full, device)
        return metrics, {**meta, "training_set": ref.meta.get("training_set")}
