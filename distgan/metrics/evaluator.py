"""Metrics of a generator, computed across ranks without depending on the world size (DESIGN.md §4.10).

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
from distgan.data import counter_generator
from distgan.metrics import mixture
from distgan.metrics.classifier import Classifier, ClassifierSettings, load_classifier, predict, real_reference
from distgan.metrics.image import image_metrics

EVAL_STREAM = 5  # counter_generator stream of evaluation latents (training uses 0..4)
IMAGE_SAMPLES = 10000


def latents(n: int, latent_dim: int, seed: int, num_classes: int = 0):
    """The ``n`` evaluation latents (and balanced labels for a conditional G), in global order."""
    z = torch.randn(n, latent_dim, generator=counter_generator(seed, EVAL_STREAM, 0))
    labels = torch.arange(n) % num_classes if num_classes else None
    return z, labels


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
    return cfg.dataset.name in ("ring", "grid")


class Evaluator:
    """``evaluator(G)`` on every rank -> metrics on rank 0 (``{}`` elsewhere); remembers the best."""

    def __init__(self, cfg: Config, device: torch.device, num_samples: int | None = None, seed: int = 0,
                 settings: ClassifierSettings | None = None, best: dict | None = None):
        self.cfg, self.device, self.seed = cfg, device, seed
        self.settings = settings or ClassifierSettings()
        self.mixture = is_mixture(cfg)
        self.n = num_samples or (mixture.PROTOCOL_SAMPLES if self.mixture else IMAGE_SAMPLES)
        self.conditional_classes = cfg.dataset.num_classes if cfg.model.conditional else 0
        self.classifier = None
        self.info: dict = {}
        self.best = best  # scores of checkpoints/best, carried over a resume

    def _setup(self) -> None:
        """Rank 0 loads the classifier (training it if it is not cached yet) and sends it to the others,
        whose nodes may not share rank 0's cache folder."""
        if self.mixture or self.classifier is not None:
            return
        if dist.rank() == 0:
            self.classifier, self.info = load_classifier(self.cfg.dataset, self.settings)
            self.real = real_reference(self.cfg.dataset, self.classifier, self.settings)
        if dist.world_size() > 1:
            payload = [self.classifier.state_dict() if dist.rank() == 0 else None, self.info]
            tdist.broadcast_object_list(payload, src=0)
            if dist.rank() != 0:
                weights, self.info = payload
                self.classifier = Classifier(self.info["channels"], self.info["num_classes"], self.settings.width)
                self.classifier.load_state_dict(weights)
                self.classifier.eval().requires_grad_(False)
        self.classifier.to(self.device)

    def features(self, G: nn.Module) -> torch.Tensor:
        """Every rank: (n, F) gathered rows in global order: points for 2D, else [features, class]."""
        self._setup()
        net = eval_copy(G)
        idx = shard(self.n, dist.rank(), dist.world_size())
        z, labels = latents(self.n, self.cfg.model.latent_dim, self.seed, self.conditional_classes)
        x = generate(net, z[idx], None if labels is None else labels[idx], self.device)
        if not self.mixture:
            feats, pred = predict(self.classifier, x)
            x = torch.cat([feats, pred.unsqueeze(1).float()], 1)
        return gather_interleave(x.to(self.device), self.n).cpu()

    def score(self, rows: torch.Tensor) -> dict[str, float]:
        if self.mixture:
            return mixture.mode_metrics(rows, self.cfg.dataset.name)
        real_feats, real_pred = self.real
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
