"""The feature network for image metrics: a small CNN classifier trained on the real training set.

FD/KID/precision/recall are measured in the penultimate layer of a classifier distgan trains itself,
once per dataset and settings, and caches on disk with its test accuracy; the real set's features are
cached next to it. It needs no downloaded weights and sees the data's own classes. Numbers are comparable
between runs that share a classifier (same cache key), not with published Inception FIDs.
:class:`ClassifierFeatures` is what the evaluator uses for ``metrics.features=classifier``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from distgan import data, dist
from distgan.config import DatasetConfig
from distgan.data.memory import TORCHVISION_CLASSES, load_torchvision
from distgan.errors import UserError
from distgan.files import write_atomic

log = logging.getLogger("distgan")
FEATURES = 128  # size of the penultimate layer, the metrics' feature space


@dataclass
class ClassifierSettings:
    """How the feature classifier is trained (each setting is part of its cache key). Also the schema of
    ``launch/evaluate.py classifier.*``."""

    epochs: int = 2
    width: int = 16  # channels of the first conv; then 2w, 4w
    batch_size: int = 128
    lr: float = 2e-3
    train_samples: int | None = None  # None = the whole training set (tests use a small subset)
    real_samples: int = 10000  # real images whose features are the metrics' reference
    seed: int = 0



class Classifier(nn.Module):
    """Three 3x3 conv blocks -> 4x4 pooled map -> 128 features -> logits. Works at 28, 32 and 64 px."""

    def __init__(self, channels: int, num_classes: int, width: int):
        super().__init__()
        w = width
        self.conv = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(True), nn.AdaptiveAvgPool2d(4))
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, FEATURES), nn.ReLU(True))
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of images in [-1, 1]."""
        f = self.features(self.conv(x))
        return f, self.head(F.dropout(f, 0.2, self.training))


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return Path(os.environ.get("DISTGAN_CLASSIFIER_CACHE", os.path.join(base, "distgan", "classifiers")))


def cache_key(cfg: DatasetConfig, settings: ClassifierSettings) -> str:
    """Dataset identity (name, size, the data's path for a folder or zip) + every setting: a changed one
    retrains."""
    size = cfg.resolution
    ident = {"dataset": cfg.name, "image_size": size, **asdict(settings)}
    if data.spec(cfg.name).needs_root:  # a folder or zip: its path and channels
        ident.update(root=str(Path(cfg.root or "").resolve()), channels=cfg.channels)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.name}-{size or 'native'}-{digest}"


def _test_split(cfg: DatasetConfig, train: data.Dataset, seed: int):
    """(train set, its indices used, test set, its indices): the dataset's own test split where there is
    one, else a 10 % hold-out of the training set."""
    if cfg.name in TORCHVISION_CLASSES:
        test = load_torchvision(cfg, train=False)
        return train, torch.arange(len(train)), test, torch.arange(len(test))
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    cut = len(train) // 10
    return train, perm[cut:], train, perm[:cut]


def _predict_dataset(model: Classifier, dataset: data.Dataset, idx: torch.Tensor, batch: int = 500):
    """:func:`predict` over samples ``idx`` of any dataset, decoded ``batch`` at a time, and their labels."""
    feats, preds, labels = [], [], []
    for x, y in data.read_batches(dataset, idx, batch):
        f, p = predict(model, x, batch)
        feats.append(f)
        preds.append(p)
        labels.append(y if y is not None else torch.full((len(x),), -1))
    return torch.cat(feats), torch.cat(preds), torch.cat(labels)


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 (N, 128), predicted class (N,)) of float images in [-1, 1] (any device)."""
    model.eval()
    feats, preds = [], []
    device = next(model.parameters()).device
    for i in range(0, len(images), batch):
        f, logits = model(images[i:i + batch].to(device).float())
        feats.append(f.float().cpu())
        preds.append(logits.argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def _train(cfg: DatasetConfig, settings: ClassifierSettings) -> dict:
    from tqdm import tqdm

    full = data.load(cfg, seed=settings.seed)
    if full.num_classes < 2:
        raise UserError(f"dataset={cfg.name} has no class labels: image metrics need a labelled dataset")
    train, train_idx, test, test_idx = _test_split(cfg, full, settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    n = min(settings.train_samples or len(train_idx), len(train_idx))
    subset = train_idx[torch.randperm(len(train_idx), generator=g)[:n]]
    torch.manual_seed(settings.seed)
    channels = train.shape[0]
    model = Classifier(channels, train.num_classes, settings.width)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps = settings.epochs * (n // settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=max(steps, 1))
    with tqdm(total=steps, desc=f"classifier for {cfg.name} (once, cached)", unit="step", leave=False) as bar:
        for _ in range(settings.epochs):
            order = subset[torch.randperm(n, generator=g)]
            for x, y in data.read_batches(train, order[:n - n % settings.batch_size], settings.batch_size):
                _, logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    _, pred, labels = _predict_dataset(model, test, test_idx)
    accuracy = float((pred == labels).float().mean())
    log.info("classifier for %s: test accuracy %.4f", cfg.name, accuracy)
    return {"model": model.state_dict(), "num_classes": train.num_classes, "channels": channels,
            "test_accuracy": accuracy, "settings": asdict(settings)}


def _save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(obj, f))  # a concurrent reader sees the old file or the whole new one


def load_classifier(cfg: DatasetConfig, settings: ClassifierSettings | None = None,
                    train_if_missing: bool = True) -> tuple[Classifier, dict]:
    """The cached classifier for this dataset and settings (trained now if missing): (model, info)."""
    settings = settings or ClassifierSettings()
    path = cache_dir() / f"{cache_key(cfg, settings)}.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
    elif train_if_missing:
        state = _train(cfg, settings)
        _save(state, path)
    else:
        raise FileNotFoundError(path)
    model = Classifier(state["channels"], state["num_classes"], settings.width)
    model.load_state_dict(state["model"])
    info = {"test_accuracy": state["test_accuracy"], "num_classes": state["num_classes"],
            "channels": state["channels"], "path": str(path)}
    return model.eval().requires_grad_(False), info


def real_reference(cfg: DatasetConfig, model: Classifier,
                   settings: ClassifierSettings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, predicted classes) of a fixed subset of real training images, cached by key."""
    settings = settings or ClassifierSettings()
    path = cache_dir() / f"{cache_key(cfg, settings)}-real{settings.real_samples}.pt"
    if path.exists():
        ref = torch.load(path, weights_only=True)
        return ref["features"], ref["pred"]
    real = data.load(cfg, seed=settings.seed)
    idx = torch.randperm(len(real), generator=torch.Generator().manual_seed(settings.seed + 1))
    idx = idx[:settings.real_samples]
    feats, pred, _ = _predict_dataset(model, real, idx)
    _save({"features": feats, "pred": pred}, path)
    return feats, pred


class ClassifierFeatures:
    """``metrics.features=classifier`` for :class:`~distgan.metrics.evaluator.Evaluator`: the penultimate
    layer of the classifier above. Rank 0 loads it (training it once if it is not cached) and sends it to
    the other ranks, whose nodes may not share rank 0's cache folder. Call :meth:`prepare` on every rank
    (it uses collectives) before the first call; ``info`` is recorded with every score."""

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
        """(float32 features (N, 128) on the CPU, predicted classes (N,)) of images in [-1, 1]."""
        return predict(self.model, images)

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The real data's features and classes (rank 0)."""
        return self._real
