"""The distances between a real and a generated set in a feature space, whichever network gave the
features (the classifier of :mod:`distgan.metrics.classifier`, or TF-Inception through
:mod:`distgan.metrics.inception_metrics`). All take (N, F) feature tensors; computed in float64.

- Fréchet distance (Heusel et al. 2017): ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½).
- KID (Bińkowski et al. 2018): unbiased MMD² with the kernel (x·y/d + 1)³, averaged over subsets.
- Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls around each set's points.
- Class coverage: the histogram of predicted classes against the real one.

:func:`image_metrics` gives them all at once for the classifier's features.
"""

from __future__ import annotations

import math

import torch


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance, float64: what the Fréchet distance needs of a set."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(a)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Tr((Σ₁Σ₂)^½) = Tr((Σ₁^½ Σ₂ Σ₁^½)^½): the inner matrix is symmetric PSD, so ``eigh`` suffices and
    no complex sqrtm (scipy) is needed."""
    s1 = _sqrtm_psd(sigma1)
    inner = s1 @ sigma2 @ s1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return max(float(value), 0.0)


def frechet_distance_features(a: torch.Tensor, b: torch.Tensor) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance in this feature space: (mean, std) of unbiased MMD² over subsets."""
    real, fake = real.double(), fake.double()
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=g)[:m]]
        y = fake[torch.randperm(len(fake), generator=g)[:m]]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        # unbiased: drop the diagonals k(x_i, x_i)
        mmd = ((kxx.sum() - kxx.diagonal().sum()) + (kyy.sum() - kyy.diagonal().sum())) / (m * (m - 1))
        values.append(float(mmd - 2 * kxy.mean()))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def _kth_neighbour_radius(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself at distance 0
    return torch.cat(radii)


def _inside_manifold(points: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
                     chunk: int = 2048) -> torch.Tensor:
    """For each point: does it fall inside the k-NN ball of any support point?"""
    inside = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], support)
        inside.append((d <= radii.unsqueeze(0)).any(1))
    return torch.cat(inside)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: share of fakes inside the real manifold; recall: share of reals inside the fake one."""
    real, fake = real.double(), fake.double()
    precision = _inside_manifold(fake, real, _kth_neighbour_radius(real, k)).double().mean()
    recall = _inside_manifold(real, fake, _kth_neighbour_radius(fake, k)).double().mean()
    return float(precision), float(recall)


def class_coverage(fake_pred: torch.Tensor, real_pred: torch.Tensor, num_classes: int) -> dict[str, float]:
    """``class_kl``: KL(fake class histogram ‖ real one) (0 = same class balance, log C = one class);
    ``class_coverage``: histogram intersection Σ min(p_fake, p_real) (1 = same balance);
    ``classes``: classes receiving at least half their real share."""
    p = torch.bincount(fake_pred.long(), minlength=num_classes).double()
    q = torch.bincount(real_pred.long(), minlength=num_classes).double()
    p, q = p / p.sum(), q / q.sum()
    q_safe = q.clamp(min=1e-12)
    nz = p > 0
    return {
        "class_kl": float((p[nz] * (p[nz] / q_safe[nz]).log()).sum()),
        "class_coverage": float(torch.minimum(p, q).sum()),
        "classes": int((p >= 0.5 * q).logical_and(q > 0).sum()),
    }


def image_metrics(real_feats: torch.Tensor, real_pred: torch.Tensor, fake_feats: torch.Tensor,
                  fake_pred: torch.Tensor, num_classes: int, k: int = 3) -> dict[str, float]:
    """Every image metric at once, as the flat dict logged under ``metrics/``."""
    kid_mean, kid_std = kid(real_feats, fake_feats)
    precision, recall = precision_recall(real_feats, fake_feats, k)
    out = {"fd": frechet_distance_features(real_feats, fake_feats), "kid": kid_mean, "kid_std": kid_std,
           "precision": precision, "recall": recall}
    out.update(class_coverage(fake_pred, real_pred, num_classes))
    return {name: (value if math.isfinite(value) else math.inf) for name, value in out.items()}
