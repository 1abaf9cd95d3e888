"""``train.eval_mode=async``: the loop never evaluates, evaluation ticks' checkpoints are queued where
retention cannot delete them, and ``launch/evaluate.py watch=RUN_DIR`` (a real subprocess) started before
the run, killed and restarted mid-run, ends with one score per evaluation checkpoint, in order. Then the
whole thing through ``launch/run.py`` and Ray (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from distgan import checkpoint
from distgan.config import Config
from distgan.metrics import watcher as W
from distgan.rundir import RunDir
from distgan.train import Hooks, train_worker

ROOT = Path(__file__).resolve().parents[1]


def ring_config(run_dir: Path, steps: int) -> Config:
    cfg = Config()
    cfg.run_dir = str(run_dir)
    cfg.dataset.name, cfg.dataset.num_samples = "ring", 2000
    cfg.model.name, cfg.model.width, cfg.model.latent_dim = "mlp", 8, 8
    t = cfg.train
    t.steps, t.batch_size, t.log_every, t.sample_every = steps, 20, 5, 100
    t.checkpoint_every, t.eval_every, t.keep_checkpoints, t.eval_mode = 10, 5, 1, "async"
    return cfg


def launch_like(cfg: Config, hooks: Hooks | None = None):
    """What the launcher does before the workers start (the run's config.yaml), then the workers' loop."""
    torch.set_num_threads(1)
    RunDir(cfg.run_dir).create(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return train_worker(cfg, hooks)


class CrashAt(Hooks):
    """A worker dying at ``step``, after that tick's checkpoint (a preempted or crashed job)."""

    def __init__(self, step: int):
        self.step = step

    def report(self, metrics, checkpoint_dir):
        if metrics["step"] == self.step:
            raise RuntimeError("simulated crash")


def lines(run: Path) -> list[dict]:
    path = RunDir(run).scores
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def watcher(run: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "launch" / "evaluate.py"), f"watch={run}", "poll_s=0.1"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_loop_only_checkpoints_and_queues_evaluation_ticks(tmp_path, monkeypatch):
    import distgan.train

    def no_evaluator(*args, **kwargs):
        raise AssertionError("train.eval_mode=async must not evaluate in the loop")

    monkeypatch.setattr(distgan.train, "Evaluator", no_evaluator)
    cfg = ring_config(tmp_path / "run", steps=20)
    cfg.train.checkpoint_every = 1000  # only the evaluation ticks (and the last step) checkpoint
    last = launch_like(cfg)
    assert not any(k.startswith("metrics/") for k in last)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step_0000020"]  # retention: keep 1
    assert [p.name for p in checkpoint.list_checkpoints(root / W.QUEUE)][::-1] == \
        [f"step_{s:07d}" for s in (5, 10, 15, 20)]  # ... but every evaluation checkpoint is queued
    checkpoint.load(root / W.QUEUE / "step_0000005")  # a complete, verified checkpoint
    assert not (root / "best").exists() and RunDir(cfg.run_dir).done_file.exists()

    seen = []

    class Look(Hooks):
        def report(self, metrics, checkpoint_dir):
            seen.append(RunDir(cfg.run_dir).done_file.exists())

    cfg.train.steps = 25  # continued: not done until it reaches the new end
    train_worker(cfg, Look())
    assert seen and not any(seen) and RunDir(cfg.run_dir).done_file.exists()


def test_a_watcher_started_before_the_run_killed_and_restarted_scores_each_checkpoint_once(tmp_path):
    run = tmp_path / "run"
    first = watcher(run)  # the run directory does not exist yet
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            launch_like(ring_config(run, steps=40), CrashAt(20))  # evaluation ticks 5, 10, 15, 20
        end = time.monotonic() + 120
        while not lines(run) and first.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        assert lines(run), first.stderr.read() if first.poll() is not None else "no score after 120 s"
        first.send_signal(signal.SIGKILL)  # mid-run: the run is neither done nor scored
        first.wait(10)
        second = watcher(run)
        try:
            launch_like(ring_config(run, steps=40))  # resumes at step 20, ends with DONE
            out, err = second.communicate(timeout=120)
        finally:
            second.kill()
    finally:
        first.kill()
    assert second.returncode == 0, err
    assert "the run is done" in out
    records = lines(run)
    steps = [r["step"] for r in records]
    assert steps == list(range(5, 45, 5))  # every evaluation tick once, in order, none lost to retention
    assert all(set(r["metrics"]) == {"modes", "high_quality", "reverse_kl"} for r in records)
    root = run / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step_0000040"]  # keep_checkpoints=1
    assert list((root / W.QUEUE).iterdir()) == [] and not list(root.glob(".eval-*"))  # queue consumed
    best = checkpoint.read_meta(root / "best")
    assert best["scores"] == next(r["metrics"] for r in records if r["step"] == best["step"])
    assert [r["step"] for r in records if r["best"]][-1] == best["step"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / W.TB_RUN))
    acc.Reload()
    assert [e.step for e in acc.Scalars("metrics/modes")] == steps  # each once, also after the restart


@pytest.mark.slow
@pytest.mark.inception
def test_async_evaluation_beside_ray_train(tmp_path, fashion_root):
    """launch/run.py with 2 Ray workers and the evaluator actor: Inception on tiny counts, retention keeping 1."""
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "run.py"), f"hydra.run.dir={run}", f"dataset.root={fashion_root}",
         "cluster.num_workers=2", "model.width=8", "train.batch_size=16", "train.steps=20", "train.log_every=5",
         "train.sample_every=20", "train.checkpoint_every=20", "train.keep_checkpoints=1", "train.eval_every=10",
         "train.eval_mode=async", "metrics.features=inception", "metrics.num_samples=6", "metrics.num_real=6"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")},
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "waiting for the evaluator to score" in out.stdout and "scores        :" in out.stdout, out.stdout
    records = lines(run)
    assert [r["step"] for r in records] == [10, 20] and all("fid6" in r["metrics"] for r in records)
    assert records[0]["meta"]["extractor_sha256"] and records[0]["meta"]["num_real"] == 6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / W.TB_RUN))
    acc.Reload()
    assert [e.step for e in acc.Scalars("metrics/fid6")] == [10, 20]
    assert checkpoint.read_meta(run / "checkpoints" / "best")["step"] in (10, 20)
