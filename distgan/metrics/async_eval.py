"""Scoring a run's checkpoints as they appear (``train.eval_mode=async``): the score function of a run and
the loop that :mod:`distgan.metrics.watch` drives, shared by the Ray actor that runs beside the trainer
(cluster=local, distgan/launcher/eval_actor.py) and ``python launch/evaluate.py watch=RUN_DIR`` (any
machine that sees the run directory: a login node, a small job, a laptop with the folder mounted).

The generator of each checkpoint is scored as the inline evaluator would score it: G_ema when the run
has one, the run's ``train.seed`` for the latents, the run's ``metrics`` settings (``launch/evaluate.py``
may override them). The weights, the reference statistics and the Evaluator are built once per process
and reused for every checkpoint. The loop ends once the trainer has written the run's ``DONE`` marker
(or ``stop_when()`` says so) and nothing is left to score; restarted, it resumes after the last line of
``metrics/scores.jsonl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from distgan.config import Config, MetricsConfig
from distgan.errors import UserError, first_line
from distgan.rundir import RunDir


def run_config(run_dir: str | Path, poll_s: float = 5.0, log: Callable[[str], None] | None = None) -> Config:
    """The run's ``config.yaml`` (written by the launcher before training starts), waiting for it to appear:
    a watcher may be started before the run."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = RunDir(run_dir).config
    if not path.exists() and log is not None:
        log(f"waiting for {path} (the run has not started yet)")
    while not path.exists():
        time.sleep(poll_s)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
        return replace(OmegaConf.to_object(merged), run_dir=str(Path(run_dir).resolve()))
    except (OmegaConfBaseException, OSError, ValueError) as e:
        raise UserError(f"{path} is not a distgan run config this version can read "
                        f"({first_line(e, 160)})") from None


def check_weights(metrics: MetricsConfig) -> None:
    """Inception: the weights exist and are the known file, checked now rather than at the first score."""
    if metrics.features == "inception":
        from distgan.metrics.inception import locate, read_verified

        read_verified(locate(metrics.inception_path, metrics.download))


class CheckpointScorer:
    """``scorer(folder) -> (metrics, metadata)`` of a checkpoint folder; the Evaluator is built from the
    first checkpoint's config (which knows the data's classes and shape) and kept."""

    def __init__(self, metrics: MetricsConfig, device: str = "cpu", dataset_root: str | None = None,
                 ema: bool = True):
        self.metrics, self.device, self.dataset_root, self.ema = metrics, device, dataset_root, ema
        self.evaluator = None

    def _build(self, cfg: Config):
        import torch

        from distgan import data
        from distgan.metrics import Evaluator

        dataset = replace(cfg.dataset, root=self.dataset_root) if self.dataset_root else cfg.dataset
        cfg = replace(cfg, dataset=data.locate(dataset), metrics=self.metrics)
        return Evaluator(cfg, torch.device(self.device), seed=cfg.train.seed)

    def __call__(self, folder: Path) -> tuple[dict, dict]:
        from distgan import cli

        G, cfg, state = cli.load_generator(str(folder), ema=self.ema, device=self.device)
        if self.evaluator is None:
            self.evaluator = self._build(cfg)
        scores = self.evaluator(G)
        return scores, {**self.evaluator.meta, "generator": "G_ema" if state.used_ema else "G",
                        "features": self.metrics.features if not self.evaluator.mixture else "2d-protocol"}


def score_run(run_dir: str | Path, cfg: Config, metrics: MetricsConfig | None = None, device: str = "cpu",
              poll_s: float = 30.0, stop_when: Callable[[], bool] | None = None,
              log: Callable[[str], None] | None = None, dataset_root: str | None = None, ema: bool = True) -> int:
    """Score the run's checkpoints until it is done (its ``DONE`` marker, or ``stop_when()``) and none is
    left; returns how many this call scored. An async run's evaluation checkpoints only (its queue); a run
    evaluated inline, or not at all, every checkpoint (and ``checkpoints/best`` is left to an inline
    trainer)."""
    from distgan.metrics.evaluator import better
    from distgan.metrics.watch import watch

    metrics = metrics or cfg.metrics
    check_weights(metrics)
    done = RunDir(run_dir).done_file
    queue_only = cfg.train.eval_mode == "async" and cfg.train.eval_every > 0  # the trainer queues for us
    return watch(run_dir, CheckpointScorer(metrics, device, dataset_root, ema), poll_s,
                 stop_when=lambda: done.exists() or (stop_when is not None and stop_when()), log=log,
                 queue_only=queue_only, better=better, keep_best=queue_only or not cfg.train.eval_every)
