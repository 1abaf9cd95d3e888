"""The standard metrics, streamed: fid50k_full, kid50k_full, precision and recall (k = 3) in
TF-Inception features, computed from :class:`~distgan.metrics.stats.FeatureStats` summed across ranks.

Each rank extracts the features of its share of the samples (see :mod:`distgan.metrics.sources`) one
batch at a time; the ranks all-reduce once; rank 0 computes the scores. FID uses all N samples and the
whole reference; KID (100 subsets of 1,000, Bińkowski et al.) and precision/recall (Kynkäänniemi et al.)
use a fixed subset of ``keep`` samples per side, every (N/keep)-th by global index, which keeps memory
bounded. Names follow N as StyleGAN's do (``fid50k``, ``fid10k``), with ``_full`` when the reference is
the whole training set; every score carries its metadata (N, reference size, resize, extractor hash).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as tdist

from distgan import dist
from distgan.metrics import stats as S
from distgan.metrics.image import kid, precision_recall
from distgan.metrics.sources import Batches

KEEP = 10_000  # features kept per side for KID and precision/recall
KID_SUBSETS, KID_SUBSET_SIZE, PR_K = 100, 1000, 3


def metric_suffix(num_samples: int, full: bool) -> str:
    """``50k_full`` for 50,000 samples against the whole training set; ``10k``, ``2500`` otherwise."""
    n = f"{num_samples // 1000}k" if num_samples >= 1000 and num_samples % 1000 == 0 else str(num_samples)
    return n + ("_full" if full else "")


def stream(batches: Batches, extractor: Callable[[torch.Tensor], torch.Tensor], n: int, dim: int,
           keep: int = KEEP, device: str | torch.device = "cpu") -> S.FeatureStats:
    """This rank's statistics of ``batches`` ((global indices, images) pairs of a set of ``n``), then
    summed over the ranks. Rows kept for KID/PR: global index j with j % stride == 0, stride = n // keep."""
    keep = min(keep, n)
    st = S.FeatureStats(dim, device, keep, stride=max(1, n // keep) if keep else 1)
    for idx, images in batches:
        st.update(extractor(images), idx)
    return st.all_reduce()


def reference(batches: Callable[[int, int], Batches], meta: dict, extractor: Callable, dim: int,
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
    st = stream(batches(rank, world), extractor, meta["num_real"], dim, keep, device)
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


def evaluate(fake_batches: Callable[[int, int], Batches], real: S.Reference | None, extractor: Callable,
             dim: int, num_samples: int = 50_000, full: bool = True, keep: int = KEEP,
             device: str | torch.device = "cpu") -> tuple[dict[str, float], dict]:
    """Every rank: stream this rank's share of ``num_samples`` generated images (``fake_batches(rank,
    world)``), all-reduce; rank 0 returns (metrics, metadata), the others ({}, {})."""
    rank, world = dist.rank(), dist.world_size()
    st = stream(fake_batches(rank, world), extractor, num_samples, dim, keep, device)
    if rank != 0:
        return {}, {}
    if real is None:
        raise ValueError("rank 0 needs the reference statistics")
    if getattr(extractor, "info", None) and extractor.info.get("extractor_sha256") != real.meta.get(
            "extractor_sha256"):
        raise ValueError("generated and reference features come from different extractors")
    return score(st, real, num_samples, full, device)
