"""Feature extractors for the image metrics, behind one registry: the evaluator asks ``FEATURES[name]`` for
the network whose feature space FD, KID and precision/recall are measured in.

An extractor is built from the dataset's config, is made ready on every rank with :meth:`prepare` (which
may use collectives), maps images in [-1, 1] to ``(features, predicted classes or None)`` and gives the
real data's reference features. ``info`` is recorded with every score.

Entries with ``streamed = True`` (``inception``: distgan/metrics/standard.py) are built from the dataset's
config and the :class:`~distgan.config.MetricsConfig`, and score from statistics summed across ranks
(``evaluate``) instead of gathered features.
"""

from __future__ import annotations

from typing import Protocol

import torch

from distgan import dist
from distgan.config import DatasetConfig
from distgan.metrics.classifier import Classifier, ClassifierSettings, load_classifier, predict, real_reference
from distgan.metrics.standard import InceptionMetrics


class FeatureExtractor(Protocol):
    name: str
    info: dict  # recorded with every score: what the features are

    def prepare(self, device: torch.device) -> None:
        """Every rank, before the first call (may use collectives)."""

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(float32 features (N, F) on the CPU, predicted classes (N,) or None) of images in [-1, 1]."""

    def reference(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The real data's features (and classes), on rank 0."""


class ClassifierFeatures:
    """The penultimate layer of a small classifier distgan trains on the real data (metrics/classifier.py).
    Rank 0 loads it (training it once if it is not cached) and sends it to the other ranks, whose nodes
    may not share rank 0's cache folder."""

    name = "classifier"

    def __init__(self, dataset: DatasetConfig, settings: ClassifierSettings | None = None):
        self.dataset, self.settings = dataset, settings or ClassifierSettings()
        self.model: Classifier | None = None
        self.info: dict = {}

    def prepare(self, device: torch.device) -> None:
        if self.model is None:
            def load():  # rank 0
                self.model, info = load_classifier(self.dataset, self.settings)
                self._real = real_reference(self.dataset, self.model, self.settings)
                return self.model.state_dict(), info

            weights, self.info = dist.from_rank0(load)
            if self.model is None:  # another rank: rank 0's weights
                self.model = Classifier(self.info["channels"], self.info["num_classes"], self.settings.width)
                self.model.load_state_dict(weights)
                self.model.eval().requires_grad_(False)
        self.model.to(device)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return predict(self.model, images)

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._real


FEATURES = {"classifier": ClassifierFeatures, "inception": InceptionMetrics}
