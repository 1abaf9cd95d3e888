"""``FEATURES["inception"]``: the standard metrics of a generator (fid50k_full, kid50k_full, precision,
recall in TF-Inception features) for :class:`~distgan.metrics.evaluator.Evaluator`, streamed.

The glue between a run and the streamed scorer (:mod:`distgan.metrics.inception_eval`): the weights are
loaded once per process (rank 0 verifies and sends them); the reference statistics of the training set
are read from the cache or computed once, each rank reading its share of the images through the Dataset
protocol (``len(ds)``, ``ds.item(i)`` -> uint8 C×H×W: in-memory and streamed datasets alike); each rank
then generates its share of the N samples, sample i from (seed, i) alone, one batch at a time, and the
ranks all-reduce once. Memory is bounded by ``metrics.batch_size`` and ``metrics.kid_pr_samples``, never
by N. Unlike the classifier, nothing is trained: the network is the papers' own.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from distgan.config import DatasetConfig, MetricsConfig
from distgan.errors import UserError
from distgan.metrics import inception_eval as E
from distgan.metrics import sources
from distgan.metrics import stats as S
from distgan.metrics.inception import DIM, InceptionFeatures, load_shared

NUM_SAMPLES = 50_000  # fid50k_full
# what a reference depends on (its cache file is valid only when all of these agree)
REFERENCE_META = ("extractor", "extractor_sha256", "resize", "feature_dim")


def dataset_key(cfg: DatasetConfig) -> str:
    """The name of a dataset's reference statistics in the cache: the dataset and its resize, plus the
    folder for datasets whose content lives at ``dataset.root`` (torchvision's sets are the same
    wherever they are stored)."""
    from distgan.data.memory import TORCHVISION_CLASSES

    ident = {"dataset": cfg.name, "resolution": cfg.resolution or cfg.image_size}
    if cfg.name not in TORCHVISION_CLASSES:
        ident["root"] = str(Path(cfg.root or "").expanduser().resolve())
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


_UNSET = object()


class InceptionMetrics:
    """The standard metrics behind the FEATURES registry. Call :meth:`prepare` on every rank, then
    :meth:`evaluate` on every rank; rank 0 gets the numbers."""

    name = "inception"
    streamed = True  # scored from all-reduced statistics, not from gathered features

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
        from distgan.data.stream import default_loader_workers

        workers = self.dataset.loader_workers
        workers = default_loader_workers(os.cpu_count() or 1) if workers is None else workers
        n_real, batches = dataset_reader(data, self.m.num_real, self.m.batch_size, workers)
        meta = {**{k: self.info[k] for k in REFERENCE_META}, "resolution": int(data.shape[-1]),
                "num_real": n_real, "training_set": len(data)}
        self._ref = E.reference(batches, meta, self.net, DIM, dataset_key(self.dataset), self.m.kid_pr_samples,
                                device, cache)
        return self._ref

    def evaluate(self, G: torch.nn.Module, num_samples: int, seed: int, latent_dim: int, num_classes: int,
                 device: torch.device, data=None) -> tuple[dict[str, float], dict]:
        """Every rank, with the same (eval-mode) ``G``: (metrics, metadata) on rank 0, ({}, {}) elsewhere."""
        ref = self.reference(data, device)
        full = self.m.num_real is None or (ref is not None and ref.count >= ref.meta.get("training_set", 0))
        generate = sources.generator_fn(G, latent_dim, seed, num_classes, device)
        metrics, meta = E.evaluate(
            lambda rank, world: sources.index_batches(generate, num_samples, self.m.batch_size, rank, world),
            ref, self.net, DIM, num_samples, full=full, keep=self.m.kid_pr_samples, device=device)
        return metrics, ({**meta, "training_set": ref.meta.get("training_set")} if ref is not None else meta)

    def score_images(self, n: int, batches, data=None, device: torch.device | str = "cpu") -> tuple[dict, dict]:
        """One process: (metrics, metadata) of ``n`` given images (``(indices, images)`` batches, e.g.
        :func:`distgan.metrics.sources.sample_batches`) against the dataset's reference."""
        ref = self.reference(data, device)
        fake = E.stream(batches, self.net, n, DIM, self.m.kid_pr_samples, device)
        full = self.m.num_real is None or ref.count >= ref.meta.get("training_set", 0)
        metrics, meta = E.score(fake, ref, n, full, device)
        return metrics, {**meta, "training_set": ref.meta.get("training_set")}
