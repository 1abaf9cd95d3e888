"""Metrics of a generator, computed across ranks without depending on the world size.

Sample ``i`` of an evaluation always has the latent ``z[i]`` (and label ``i mod C``) drawn from
(seed, global index) alone. Rank ``r`` of ``W`` generates the strided indices r, r+W, …, padded to equal
length by wrapping around; the features are all-gathered, re-interleaved into global order, and the
padding is dropped. So 1 worker and N workers score exactly the same samples. Rank 0 computes the
numbers; the other ranks get an empty dict.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as tdist
from torch import nn

from distgan import dist
from distgan.config import Config
from distgan.data import spec as dataset_spec
from distgan.metrics import mixture
from distgan.metrics.classifier import ClassifierSettings
from distgan.metrics.features import FEATURES
from distgan.metrics.image import image_metrics
from distgan.rng import eval_latents as latents

IMAGE_SAMPLES = 10000


def shard(n: int, rank: int, world: int) -> torch.Tensor:
    """Strided global indices of this rank, padded (by wrapping) so every rank has the same count."""
    per_rank = math.ceil(n / world)
    return torch.arange(rank, per_rank * world, world) % n


def gather_interleave(local: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`shard`: every rank's rows, back in global order, padding dropped."""
    rows = dist.all_gather_rows(local)  # (world, per_rank, ...)
    return rows.transpose(0, 1).reshape(-1, *local.shape[1:])[:n]


def eval_copy(net: nn.Module) -> nn.Module:
    """A frozen eval-mode copy with rank 0's buffers: BatchNorm running stats are per rank
    (``broadcast_buffers=False``), and eval samples must not depend on which rank drew them."""
    net = copy.deepcopy(dist.unwrap(net)).eval().requires_grad_(False)
    if dist.world_size() > 1:
        for b in net.buffers():
            tdist.broadcast(b.data, 0)
    return net


@torch.no_grad()
def generate(net: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, device: torch.device,
             batch: int = 500) -> torch.Tensor:
    """G's output for the given latents, in float32 on the CPU (fixed batches: reproducible)."""
    out = []
    for i in range(0, len(z), batch):
        zb = z[i:i + batch].to(device)
        x = net(zb) if labels is None else net(zb, labels[i:i + batch].to(device))
        out.append(x.float().cpu())
    return torch.cat(out)


def is_mixture(cfg: Config) -> bool:
    return dataset_spec(cfg.dataset.name).kind == "points"


class Evaluator:
    """``evaluator(G)`` on every rank -> metrics on rank 0 (``{}`` elsewhere); remembers the best."""

    def __init__(self, cfg: Config, device: torch.device, num_samples: int | None = None, seed: int = 0,
                 settings: ClassifierSettings | None = None, best: dict | None = None, features: str = "classifier"):
        self.cfg, self.device, self.seed = cfg, device, seed
        self.mixture = is_mixture(cfg)
        self.n = num_samples or (mixture.PROTOCOL_SAMPLES if self.mixture else IMAGE_SAMPLES)
        self.conditional_classes = cfg.dataset.num_classes if cfg.model.conditional else 0
        self.extractor = None if self.mixture else FEATURES[features](cfg.dataset, settings)
        self.best = best  # scores of checkpoints/best, carried over a resume

    @property
    def info(self) -> dict:
        return self.extractor.info if self.extractor is not None else {}

    def features(self, G: nn.Module) -> torch.Tensor:
        """Every rank: (n, F) gathered rows in global order: points for 2D, else [features, class]."""
        if self.extractor is not None:
            self.extractor.prepare(self.device)
        net = eval_copy(G)
        idx = shard(self.n, dist.rank(), dist.world_size())
        z, labels = latents(idx, self.cfg.model.latent_dim, self.seed, self.conditional_classes)  # this rank's only
        x = generate(net, z, labels, self.device)
        if self.extractor is not None:
            feats, pred = self.extractor(x)
            x = torch.cat([feats, pred.unsqueeze(1).float()], 1)
        return gather_interleave(x.to(self.device), self.n).cpu()

    def score(self, rows: torch.Tensor) -> dict[str, float]:
        if self.mixture:
            return mixture.mode_metrics(rows, self.cfg.dataset.name)
        real_feats, real_pred = self.extractor.reference()
        return image_metrics(real_feats, real_pred, rows[:, :-1], rows[:, -1].long(), self.info["num_classes"])

    def __call__(self, G: nn.Module) -> dict[str, float]:
        rows = self.features(G)
        return self.score(rows) if dist.rank() == 0 else {}

    def improved(self, scores: dict[str, float]) -> bool:
        """True (and remembered) when ``scores`` beat the best so far: more modes then lower reverse KL
        on the 2D mixtures, lower Fréchet distance on images."""
        if self.mixture:
            better = mixture.better(scores, self.best)
        else:
            better = self.best is None or scores["fd"] < self.best["fd"]
        if better:
            self.best = dict(scores)
        return better
