"""The asynchronous evaluator: score each finished checkpoint of a run as it appears, so training never
waits for its metrics (``train.eval_mode=async``; StyleGAN3 users' runs "stuck at Evaluating metrics").
:func:`score_run` scores a run as the inline evaluator would; it is shared by the Ray actor that runs
beside the trainer (cluster=local, distgan/launcher/watcher_actor.py) and ``python launch/evaluate.py
watch=RUN_DIR`` (any machine that sees the run directory: a login node, a small job, a laptop with the
folder mounted). :func:`watch` is its loop, :func:`enqueue` the trainer's side of the queue.

For every finished checkpoint (it has ``meta.json``), in step order, :func:`watch`

1. takes a snapshot: hard links to the checkpoint's files in a hidden folder, so the trainer's retention
   can delete the step folder meanwhile without pulling the file from under the scorer (a copy where
   the filesystem has no hard links; a folder already gone is skipped with a record saying so);
2. scores it with ``score_fn(folder)``;
3. when the FID is the lowest so far, renames the snapshot into ``checkpoints/best`` (the layout and
   ``meta.json`` of :func:`distgan.checkpoint.save_best`, replaced as ``_write_folder`` does);
4. appends one JSON line to ``metrics/scores.jsonl`` (flushed and fsynced: the record of truth);
5. writes the same numbers to TensorBoard under ``metrics/...`` at the checkpoint's step.

TensorBoard gets a run of its own, ``tb/eval``: the trainer's process owns ``tb/global``, and two
processes appending events to one run's folder is not safe (TensorBoard reads a folder's event files in
name order and does not go back to an older file, so one writer's new points would be lost). On a
restart the watcher resumes after the last JSON line (a half-written last line is cut off and its
checkpoint scored again), purges its own TensorBoard points and writes them again from the JSON lines.
One watcher per run directory; it owns ``checkpoints/best`` (the trainer does not write it in async mode).

Which checkpoints: with ``train.eval_mode=async`` the trainer puts hard links to each evaluation tick's
checkpoint in ``checkpoints/unscored/`` (:func:`enqueue`) and the watcher scores exactly those
(``queue_only``), deleting each entry once its line is written: retention (``train.keep_checkpoints``)
deletes step folders without losing an unscored one, and the links cost no space while the step folder
exists. Otherwise (a run trained inline, or watched by hand) every ``checkpoints/step_*`` is scored.

How (:func:`score_run`): the generator of each checkpoint is scored as the inline evaluator would score
it: G_ema when the run has one, the run's ``train.seed`` for the latents, the run's ``metrics`` settings
(``launch/evaluate.py`` may override them). The weights, the reference statistics and the Evaluator are
built once per process and reused for every checkpoint. The loop ends once the trainer has written the
run's ``DONE`` marker (or ``stop_when()`` says so) and nothing is left to score; restarted, it resumes
after the last line of ``metrics/scores.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from distgan import checkpoint as ckpt
from distgan.config import Config, MetricsConfig
from distgan.errors import UserError, first_line
from distgan.rundir import RunDir

SCORES = Path(RunDir.SCORES)
TB_RUN = Path(RunDir.TB_EVAL)
QUEUE = "unscored"  # checkpoints/unscored/step_*: evaluation checkpoints not scored yet (train.eval_mode=async)
_SNAP, _OLD = ".eval-snap-", ".eval-old-best-"  # not ".tmp-*": the trainer removes those as its own
_DONE = ".eval-done-"  # a scored queue entry on its way out
_NEW = ".enqueue-"  # the trainer's half-made queue entries (the watcher leaves them alone)


def step_of(folder: Path) -> int:
    return int(folder.name.split("_", 1)[1])


def read_scores(path: Path) -> list[dict]:
    """The complete JSON lines of ``path``; a half-written last line (a killed writer) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(path, end)
    records = []
    for n, line in enumerate(data[:end].splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise UserError(f"{path} line {n} is not JSON; repair or move the file, then restart") from None
    return records


def append_score(path: Path, record: dict) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if new:  # the file's directory entry too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _link_files(folder: Path, dest: Path) -> None:
    """``dest`` (made afresh) with hard links to (or, without hard links, copies of) the checkpoint files."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in (ckpt.STATE, ckpt.META):
        try:
            os.link(folder / name, dest / name)
        except FileNotFoundError:
            raise  # the step folder is gone
        except OSError:  # no hard links on this filesystem
            shutil.copyfile(folder / name, dest / name)


def enqueue(folder: Path) -> Path:
    """The trainer (async evaluation), right after saving ``folder``: add it to ``checkpoints/unscored``.
    A step saved again after a restart replaces its entry (moved aside first: a folder cannot be replaced
    in one rename)."""
    queue = folder.parent / QUEUE
    queue.mkdir(exist_ok=True)
    for stale in queue.glob(f"{_NEW}*"):  # one trainer enqueues at a time: these are a killed one's
        shutil.rmtree(stale, ignore_errors=True)
    tmp, final, old = (queue / f"{_NEW}{folder.name}-{os.getpid()}", queue / folder.name,
                       queue / f"{_NEW}old-{folder.name}-{os.getpid()}")
    _link_files(folder, tmp)
    ckpt.replace_folder(tmp, final, old)
    return final


def _snapshot(folder: Path) -> Path:
    """Hard links to (or copies of) ``folder``'s files in a hidden sibling, checked against its sha256."""
    snap = folder.parent / f"{_SNAP}{folder.name}-{os.getpid()}"
    try:
        _link_files(folder, snap)
    except FileNotFoundError:
        time.sleep(0.5)  # a queue entry being replaced (the same step saved again) is back in a moment
        if not (folder / ckpt.META).exists():
            raise
        _link_files(folder, snap)
    ckpt.verify(snap)  # the meta and state of one save, not of two
    return snap


def _install_best(root: Path, snap: Path, step: int, metrics: dict) -> None:
    """``snap`` becomes ``root/best``, its meta.json the one :func:`distgan.checkpoint.save_best` writes."""
    meta = json.loads((snap / ckpt.META).read_text())
    (snap / ckpt.META).unlink()  # a hard link: do not write through into the step folder's file
    meta = {"step": step, "scores": metrics, "sha256": meta["sha256"], "bytes": meta.get("bytes")}
    (snap / ckpt.META).write_text(json.dumps(meta))
    ckpt._fsync(snap / ckpt.META)
    ckpt.replace_folder(snap, root / ckpt.BEST, root / f"{_OLD}{os.getpid()}")


def _clean(root: Path) -> None:
    """Leftovers of a killed watcher: snapshots go; a best moved aside but not yet replaced comes back."""
    for p in [*root.glob(f"{_SNAP}*"), *(root / QUEUE).glob(".eval-*")]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f"{_OLD}*"):
        if not (root / ckpt.BEST).exists():
            os.replace(p, root / ckpt.BEST)
        else:
            shutil.rmtree(p, ignore_errors=True)


class _Board:
    """The watcher's TensorBoard run; rewritten from the JSON lines on every start."""

    def __init__(self, run_dir: Path, records: list[dict]):
        from torch.utils.tensorboard import SummaryWriter

        scored = [r for r in records if "metrics" in r]
        self.writer = SummaryWriter(str(run_dir / TB_RUN), purge_step=scored[0]["step"] if scored else None)
        for r in scored:
            self.add(r, flush=False)
        self.writer.flush()

    def add(self, record: dict, flush: bool = True) -> None:
        for name, value in record["metrics"].items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"metrics/{name}", value, record["step"])
        if flush:
            self.writer.flush()


def _best_meta(root: Path) -> dict | None:
    """``{"step", "scores"}`` of ``root/best``, if there is one."""
    try:
        return json.loads((root / ckpt.BEST / ckpt.META).read_text())
    except (OSError, ValueError):
        return None


def _dequeue(entry: Path) -> None:
    """Remove a queue entry: renamed out of the listing first, so a watcher killed meanwhile leaves no
    half-deleted ``step_*`` behind (``_clean`` removes the renamed leftovers)."""
    gone = entry.parent / f"{_DONE}{entry.name}-{os.getpid()}"
    try:
        os.replace(entry, gone)
    except OSError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def _pending(root: Path, last: int, queue_only: bool) -> list[Path]:
    """Finished checkpoints after step ``last``, in step order (a queue entry rather than its step folder,
    which retention may delete). Queue entries of steps already scored go (a watcher killed between its
    line and the entry's removal, or a step saved again after a restart)."""
    found = {} if queue_only else {step_of(f): f for f in ckpt.list_checkpoints(root)}
    for entry in ckpt.list_checkpoints(root / QUEUE):
        if step_of(entry) <= last:
            _dequeue(entry)
        else:
            found[step_of(entry)] = entry
    return [found[s] for s in sorted(found) if s > last]


def watch(run_dir: str | Path, score_fn: Callable[[Path], dict | tuple[dict, dict]], poll_s: float = 30.0,
          stop_when: Callable[[], bool] = lambda: False, log: Callable[[str], None] | None = None,
          queue_only: bool = False, better: Callable[[dict, dict | None], bool] | None = None,
          keep_best: bool = True) -> int:
    """Score every finished checkpoint of ``run_dir`` (only ``checkpoints/unscored`` with ``queue_only``)
    until ``stop_when()`` is true and none is left; returns how many this call scored.
    ``score_fn(folder) -> metrics`` or ``(metrics, metadata)``; ``better(new, old)`` decides the best
    (default: :func:`distgan.metrics.evaluator.better`, the lowest FID on images); ``keep_best=False``
    leaves ``checkpoints/best`` to the trainer (a run evaluated inline, watched as well)."""
    if better is None:
        from distgan.metrics.evaluator import better
    run_dir = Path(run_dir)
    root, scores = run_dir / RunDir.CHECKPOINTS, run_dir / SCORES
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    records = read_scores(scores)
    last = max((r["step"] for r in records), default=-1)
    board = _Board(run_dir, records)
    best = None
    if root.is_dir():
        _clean(root)
        best = _best_meta(root)
    scored = 0
    try:
        while True:
            finished = stop_when()  # read before listing: a checkpoint saved before the end is listed
            pending = _pending(root, last, queue_only)
            for folder in pending:
                record = _score_one(root, folder, score_fn, best, better if keep_best else None, log)
                if record.get("best"):
                    best = {"step": record["step"], "scores": record["metrics"]}
                append_score(scores, record)
                if folder.parent.name == QUEUE:  # recorded: the entry has served
                    _dequeue(folder)
                if "metrics" in record:
                    board.add(record)
                    scored += 1
                last = record["step"]
            if finished and not pending:
                return scored
            if not pending:
                time.sleep(poll_s)
    finally:
        board.writer.close()


def _score_one(root: Path, folder: Path, score_fn, best: dict | None, better, log) -> dict:
    step = step_of(folder)
    record = {"step": step, "checkpoint": folder.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        snap = _snapshot(folder)
    except (FileNotFoundError, UserError) as e:  # gone (retention) or corrupt: say so, go on
        reason = "deleted (checkpoint retention) before it was scored" if isinstance(e, OSError) else str(e)
        log(f"skipped {folder.name}: {reason}")
        shutil.rmtree(folder.parent / f"{_SNAP}{folder.name}-{os.getpid()}", ignore_errors=True)
        return {**record, "skipped": reason}
    try:
        result = score_fn(snap)
        metrics, meta = result if isinstance(result, tuple) else (result, {})
        held_step = (best or {}).get("step")
        # held_step == step: installed as best just before a restart, by the first scoring of this step
        improved = better is not None and (held_step == step or better(metrics, (best or {}).get("scores")))
        if improved and held_step != step:
            _install_best(root, snap, step, metrics)
        log(f"scored {folder.name}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            + ("  (new best)" if improved else ""))
        return {**record, "metrics": metrics, "meta": meta, "best": improved}
    finally:
        shutil.rmtree(snap, ignore_errors=True)


# ------------------------------------------------------------------------------------- scoring a run
def run_config(run_dir: str | Path, poll_s: float = 5.0, log: Callable[[str], None] | None = None) -> Config:
    """The run's ``config.yaml`` (written by the launcher before training starts), waiting for it to appear:
    a watcher may be started before the run."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from distgan.compose import to_config

    path = RunDir(run_dir).config
    if not path.exists() and log is not None:
        log(f"waiting for {path} (the run has not started yet)")
    while not path.exists():
        time.sleep(poll_s)
    try:
        return to_config(OmegaConf.load(path), run_dir)
    except (OmegaConfBaseException, OSError, ValueError) as e:
        raise UserError(f"{path} is not a distgan run config this version can read "
                        f"({first_line(e, 160)})") from None


# load_generator(path, ema=..., device=...) -> (G in eval mode, the run's Config, its TrainState with used_ema)
GeneratorLoader = Callable[..., tuple[Any, Config, Any]]


class CheckpointScorer:
    """``scorer(folder) -> (metrics, metadata)`` of a checkpoint folder; the Evaluator is built from the
    first checkpoint's config (which knows the data's classes and shape) and kept."""

    def __init__(self, metrics: MetricsConfig, load_generator: GeneratorLoader, device: str = "cpu",
                 dataset_root: str | None = None, ema: bool = True):
        self.metrics, self.device, self.dataset_root, self.ema = metrics, device, dataset_root, ema
        self.load_generator = load_generator
        self.evaluator = None

    def _build(self, cfg: Config):
        import torch

        from distgan import data
        from distgan.metrics.evaluator import Evaluator

        dataset = replace(cfg.dataset, root=self.dataset_root) if self.dataset_root else cfg.dataset
        cfg = replace(cfg, dataset=data.locate(dataset), metrics=self.metrics)
        return Evaluator(cfg, torch.device(self.device), seed=cfg.train.seed)

    def __call__(self, folder: Path) -> tuple[dict, dict]:
        G, cfg, state = self.load_generator(str(folder), ema=self.ema, device=self.device)
        if self.evaluator is None:
            self.evaluator = self._build(cfg)
        scores = self.evaluator(G)
        return scores, {**self.evaluator.meta, "generator": "G_ema" if state.used_ema else "G",
                        "features": self.metrics.features if not self.evaluator.mixture else "2d-protocol"}


def score_run(run_dir: str | Path, cfg: Config, metrics: MetricsConfig | None = None, device: str = "cpu",
              poll_s: float = 30.0, stop_when: Callable[[], bool] | None = None,
              log: Callable[[str], None] | None = None, dataset_root: str | None = None, ema: bool = True, *,
              load_generator: GeneratorLoader) -> int:
    """Score the run's checkpoints until it is done (its ``DONE`` marker, or ``stop_when()``) and none is
    left; returns how many this call scored. An async run's evaluation checkpoints only (its queue); a run
    evaluated inline, or not at all, every checkpoint (and ``checkpoints/best`` is left to an inline
    trainer). ``load_generator``: how a checkpoint folder becomes a generator (the caller's
    ``distgan.cli.load_generator``)."""
    from distgan.metrics.evaluator import better, check_weights

    metrics = metrics or cfg.metrics
    check_weights(metrics)
    done = RunDir(run_dir).done_file
    queue_only = cfg.train.eval_mode == "async" and cfg.train.eval_every > 0  # the trainer queues for us
    return watch(run_dir, CheckpointScorer(metrics, load_generator, device, dataset_root, ema), poll_s,
                 stop_when=lambda: done.exists() or (stop_when is not None and stop_when()), log=log,
                 queue_only=queue_only, better=better, keep_best=queue_only or not cfg.train.eval_every)
