"""Sample-quality metrics: the 2D mode-collapse protocol; the standard fid50k_full/kid50k_full/precision/
recall in TF-Inception features (streamed); FD/KID/precision/recall/class coverage in the feature space of a
classifier trained on the real data. Computed across ranks by :class:`Evaluator`; scored beside training
by the async evaluator (watch.py, async_eval.py)."""

from distgan.metrics.evaluator import Evaluator, is_mixture
from distgan.metrics.image import frechet_distance_features, image_metrics, kid, precision_recall
from distgan.metrics.mixture import mode_metrics

__all__ = ["Evaluator", "is_mixture", "frechet_distance_features", "image_metrics", "kid", "mode_metrics",
           "precision_recall"]
