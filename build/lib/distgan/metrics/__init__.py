"""Sample-quality metrics: the 2D mode-collapse protocol, and FD/KID/precision/recall/class coverage in
the feature space of a classifier trained on the real data; computed across ranks by :class:`Evaluator`."""

from distgan.metrics.evaluator import Evaluator, is_mixture
from distgan.metrics.image import frechet_distance_features, image_metrics, kid, precision_recall
from distgan.metrics.mixture import mode_metrics

__all__ = ["Evaluator", "is_mixture", "frechet_distance_features", "image_metrics", "kid", "mode_metrics",
           "precision_recall"]
