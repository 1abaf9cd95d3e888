"""Metrics of a generator, computed across ranks without depending on the world size.

Sample ``i`` of an evaluation always has the latent ``z[i]`` (and label ``i mod C``) drawn from
(seed, global index) alone (:func:`distgan.rng.eval_latents`). For the 2D protocol and the classifier's
features, rank ``r`` of ``W`` generates the strided indices r, r+W, …, padded to equal length by wrapping
around; the features are all-gathered, re-interleaved into global order, and the padding is dropped.
Inception (``metrics.features=inception``) streams instead: each rank accumulates statistics of its share
and the ranks all-reduce once (distgan/metrics/inception_metrics.py). So 1 worker and N workers score exactly the
same samples. Rank 0 computes the numbers; the other ranks get an empty dict. ``metrics.inception_score``
adds the Inception Score of ``metrics.num_samples`` samples drawn the same way (inception_score.py), its
weights (NVIDIA's file) found and verified before any sample is drawn.
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
from distgan.errors import UserError
from distgan.metrics import inception_score as IS
from distgan.metrics import mixture
from distgan.metrics.classifier import ClassifierFeatures, ClassifierSettings
from distgan.metrics.distances import image_metrics
from distgan.metrics.inception_metrics import NUM_SAMPLES as INCEPTION_SAMPLES
from distgan.metrics.inception_metrics import InceptionMetrics
from distgan.metrics.sources import check_finite, padded_shard
from distgan.rng import eval_latents as latents

# ``metrics.features``: the network whose feature space images are scored in. ``classifier``
# (:class:`~distgan.metrics.classifier.ClassifierFeatures`): features gathered to rank 0 and scored there;
# ``inception`` (:class:`~distgan.metrics.inception_metrics.InceptionMetrics`): statistics streamed on
# every rank and all-reduced once. The 2D mixtures use neither (the mode-collapse protocol).
FEATURES = ("classifier", "inception")
IMAGE_SAMPLES = 10000


def gather_interleave(local: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`~distgan.metrics.sources.padded_shard`: every rank's rows, back in global order,
    padding dropped."""
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
    """G's output for the given latents, in float32 on the CPU (fixed batches: reproducible); a non-finite
    image is one UserError line, never a number computed from it."""
    out = []
    for i in range(0, len(z), batch):
        zb = z[i:i + batch].to(device)
        x = net(zb) if labels is None else net(zb, labels[i:i + batch].to(device))
        x = x.float().cpu()
        check_finite(x, torch.arange(i, i + len(x)), "the generator produced non-finite images (NaN or Inf)",
                     "its weights are damaged or its training diverged: use an earlier checkpoint")
        out.append(x)
    return torch.cat(out)


def is_mixture(cfg: Config) -> bool:
    return dataset_spec(cfg.dataset.name).kind == "points"


def best_key(scores: dict) -> str | None:
    """The number ``checkpoints/best`` is chosen by on images: the Inception FID (``fid50k_full``,
    ``fid10k``, …) or the classifier's ``fd``."""
    if "fd" in scores:
        return "fd"
    return next((k for k in scores if k.startswith("fid")), None)


def better(new: dict, old: dict | None) -> bool:
    """Do the scores ``new`` beat ``old``? More modes then lower reverse KL on the 2D mixtures, a lower
    Fréchet distance on images. Scores of another kind than ``old`` (features changed over a resume) win."""
    if "modes" in new:
        return mixture.better(new, old) if old is None or "modes" in old else True
    key = best_key(new)
    if key is None or not math.isfinite(new[key]):
        return False
    return old is None or key not in old or new[key] < old[key]


def check_weights(metrics) -> None:
    """Every network this evaluation will need exists and is the known file, checked before anything runs:
    the Inception features' (``metrics.features=inception``) and, with ``metrics.inception_score``,
    NVIDIA's file with the logits, whatever the features."""
    from distgan.metrics.inception_metrics import check_weights as check_features

    check_features(metrics)
    if metrics.inception_score:
        IS.locate_logits(metrics.inception_path, metrics.download)


class Evaluator:
    """``evaluator(G)`` on every rank -> metrics on rank 0 (``{}`` elsewhere); remembers the best.
    ``features`` overrides ``cfg.metrics.features``; ``data`` is the training set when the caller already
    holds it (else it is loaded when the reference statistics are first needed)."""

    def __init__(self, cfg: Config, device: torch.device, num_samples: int | None = None, seed: int = 0,
                 settings: ClassifierSettings | None = None, best: dict | None = None, features: str | None = None,
                 data=None):
        self.cfg, self.device, self.seed, self.data = cfg, device, seed, data
        self.mixture = is_mixture(cfg)
        name = features or cfg.metrics.features
        if name not in FEATURES:
            raise UserError(f"unknown metrics.features {name!r}; choose one of: {', '.join(FEATURES)}")
        self.streamed = not self.mixture and name == "inception"
        default = mixture.PROTOCOL_SAMPLES if self.mixture else INCEPTION_SAMPLES if self.streamed else IMAGE_SAMPLES
        self.n = num_samples or cfg.metrics.num_samples or default
        self.conditional_classes = cfg.dataset.num_classes if cfg.model.conditional else 0
        if self.mixture:
            self.extractor = None
        elif self.streamed:
            self.extractor = InceptionMetrics(cfg.dataset, cfg.metrics)
        else:
            self.extractor = ClassifierFeatures(cfg.dataset, settings)
        self.best = best  # scores of checkpoints/best, carried over a resume
        self.meta: dict = {}  # of the last score (Inception: N, num_real, resize, extractor hash)
        self.inception_score = cfg.metrics.inception_score
        if self.inception_score and self.mixture:
            raise UserError("metrics.inception_score needs an image dataset (the 2D mixtures are scored by the "
                            "mode-collapse protocol): drop metrics.inception_score=true")
        self.is_n = cfg.metrics.num_samples or INCEPTION_SAMPLES
        self.is_net = None  # NVIDIA's network with its logits (distgan.metrics.inception_score.InceptionProbs)

    @property
    def info(self) -> dict:
        return self.extractor.info if self.extractor is not None else {}

    def features(self, G: nn.Module) -> torch.Tensor:
        """Every rank: (n, F) gathered rows in global order: points for 2D, else [features, class]."""
        if self.extractor is not None:
            self.extractor.prepare(self.device)
        net = eval_copy(G)
        idx = padded_shard(self.n, dist.rank(), dist.world_size())
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
        if not self.inception_score:
            return self._scores(G)
        self.prepare_inception_score()  # before any sample: no weights, one line now
        scores = self._scores(G)
        meta = self.meta
        scores = {**scores, **self._inception_score(G)}
        info = self.is_net.info
        self.meta = {**meta, "is_num_samples": self.is_n, "is_splits": IS.SPLITS,
                     "is_extractor_sha256": info["extractor_sha256"], "is_weights": info["weights"]}
        return scores

    def prepare_inception_score(self) -> None:
        """Every rank: NVIDIA's network with the logits (rank 0 finds and verifies the file), once."""
        if self.is_net is None or self.is_net.device != torch.device(self.device):
            m = self.cfg.metrics
            self.is_net = IS.load_shared_probs(m.inception_path, m.download, self.device, m.batch_size)

    def _inception_score(self, G: nn.Module) -> dict[str, float]:
        """Every rank: ``is<N>`` and ``is<N>_std`` of ``metrics.num_samples`` (50,000) samples on rank 0."""
        return IS.evaluate_generator(eval_copy(G), self.is_net, self.is_n, self.seed, self.cfg.model.latent_dim,
                                     self.conditional_classes, self.cfg.metrics.batch_size, self.device)

    def _scores(self, G: nn.Module) -> dict[str, float]:
        if self.streamed:  # Inception: statistics streamed on every rank, all-reduced once
            self.extractor.prepare(self.device)
            scores, self.meta = self.extractor.evaluate(eval_copy(G), self.n, self.seed, self.cfg.model.latent_dim,
                                                        self.conditional_classes, self.device, self.data)
            return scores
        rows = self.features(G)
        self.meta = {"num_samples": self.n}
        return self.score(rows) if dist.rank() == 0 else {}

    def improved(self, scores: dict[str, float]) -> bool:
        """True (and remembered) when ``scores`` beat the best so far (:func:`better`)."""
        if better(scores, self.best):
            self.best = dict(scores)
            return True
        return False
