"""The run directory: every name in it is spelled here, once.

::

    <run_dir>/config.yaml       the resolved config          train.log        progress lines and errors
    <run_dir>/metrics.jsonl     one JSON line per log tick   STOP             ask the loop to checkpoint and stop
    <run_dir>/tb/rank{r}, tb/global                          TensorBoard runs
    <run_dir>/checkpoints/      step_XXXXXXX/, latest, best  (distgan/checkpoint.py); unscored/ (async evaluation)
    <run_dir>/metrics/scores.jsonl  one JSON line per scored checkpoint (the async evaluator's record)
    <run_dir>/tb/eval           the async evaluator's TensorBoard run   DONE   training reached train.steps
    <run_dir>/samples/          step_XXXXXXX.png
    <run_dir>/workers/          rank{r}.json: where each rank ran
    <run_dir>/slurm/            submitit logs, Ray logs, rendezvous files of SLURM jobs
    <run_dir>/.ray_auth_token   the run's Ray token (0600)
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from distgan.files import write_atomic


class RunDir:
    CONFIG = "config.yaml"
    LOG = "train.log"  # Hydra's job log (configs/config.yaml: hydra.job.name = train)
    METRICS = "metrics.jsonl"
    STOP = "STOP"
    DONE = "DONE"  # rank 0 writes it when training reaches train.steps: an async evaluator may then finish
    SCORES = "metrics/scores.jsonl"  # the async evaluator's scores (distgan/metrics/watcher.py)
    TB_EVAL = "tb/eval"  # the async evaluator's TensorBoard run (the trainer owns tb/global)
    TB = "tb"
    CHECKPOINTS = "checkpoints"
    SAMPLES = "samples"
    WORKERS = "workers"
    SLURM = "slurm"
    TOKEN = ".ray_auth_token"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / self.CONFIG)
    log = property(lambda self: self.path / self.LOG)
    metrics = property(lambda self: self.path / self.METRICS)
    stop_file = property(lambda self: self.path / self.STOP)
    done_file = property(lambda self: self.path / self.DONE)
    scores = property(lambda self: self.path / self.SCORES)
    tb = property(lambda self: self.path / self.TB)
    checkpoints = property(lambda self: self.path / self.CHECKPOINTS)
    samples = property(lambda self: self.path / self.SAMPLES)
    workers = property(lambda self: self.path / self.WORKERS)
    slurm = property(lambda self: self.path / self.SLURM)
    token = property(lambda self: self.path / self.TOKEN)

    def sample_png(self, step: int) -> Path:
        return self.samples / f"step_{step:07d}.png"

    def create(self, config_yaml: str) -> None:
        """Create the directory private to the user (0700: tokens and checkpoints are the user's alone)
        and write the resolved config."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, stat.S_IRWXU)
        write_atomic(self.config, config_yaml)

    def discard_if_empty(self) -> None:
        """Remove a directory Hydra created for a command that then failed, so bad input leaves nothing
        half-written. A directory holding anything of a run is kept."""
        if not self.path.is_dir():
            return
        leftovers = [p.name for p in self.path.iterdir() if p.name != ".hydra" and not p.name.endswith(".log")]
        if not leftovers:
            shutil.rmtree(self.path, ignore_errors=True)
