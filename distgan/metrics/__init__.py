"""Sample-quality metrics, computed across ranks by :class:`Evaluator` (evaluator.py), whose
``metrics.features`` picks the feature space of images (``FEATURES``):

- mixture.py            the 2D mode-collapse protocol (modes, high-quality share, reverse KL)
- classifier.py         ``classifier``: a small CNN trained on the real data, its features (the default)
- inception.py          the TF-Inception network of the standard FID, found and verified
- inception_metrics.py  ``inception``: fid50k_full, kid50k_full, precision, recall, streamed
- inception_score.py    ``metrics.inception_score=true``: is50k from NVIDIA's Inception logits, streamed
- distances.py          the formulas: Fréchet distance, KID, precision/recall, class coverage
- stats.py              streamed feature statistics and the reference cache
- sources.py            where scored images come from, each rank's share of the indices
- watcher.py            the asynchronous evaluator: a run's checkpoints scored as they appear
"""

from distgan.metrics.evaluator import Evaluator

__all__ = ["Evaluator"]
