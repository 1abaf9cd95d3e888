"""Faults during training: killed saves, corrupt checkpoints, NaNs, long runs, and (slow) a worker killed
with SIGKILL under Ray. docs/reliability.md lists each fault and points here."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distgan import checkpoint
from distgan.config import Config, DatasetConfig, ModelConfig, TrainConfig
from distgan.errors import UserError
from distgan.testing import gloo

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(run_dir: Path, **train) -> Config:
    """A few-second run: 2D ring, tiny MLP, CPU."""
    t = dict(steps=20, batch_size=32, log_every=5, sample_every=10, checkpoint_every=10, lr_g=1e-3, lr_d=1e-3)
    t.update(train)
    return Config(model=ModelConfig(name="mlp", width=4, latent_dim=8), dataset=DatasetConfig(name="ring"),
                  train=TrainConfig(**t), run_dir=str(run_dir))


# --------------------------------------------------------------------------------- interrupted saves
_SAVE_CHILD = """
import sys, torch
from distgan import checkpoint
root = sys.argv[1]
checkpoint.save(root, 1, {"w": torch.ones(3)})
print("saved 1", flush=True)
checkpoint.save(root, 2, {"w": torch.ones(3), "big": torch.ones(96 * 2**20)})  # ~400 MB: killed while writing
"""


def test_kill_during_save_leaves_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    child = subprocess.Popen([sys.executable, "-c", _SAVE_CHILD, str(root)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout.readline().strip() == "saved 1"
    deadline = time.time() + 60
    partial = None
    while time.time() < deadline and partial is None:  # kill as soon as step 2's state file is being written
        found = [p for p in root.glob(".tmp-step_0000002-*/state.pt") if p.stat().st_size > 0]
        partial = found[0] if found else None
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert partial is not None, "the child never started writing step 2"
    assert not (partial.parent / checkpoint.META).exists() or not (root / "step_0000002").exists()

    folder, state, skipped = checkpoint.load_latest(root)
    assert folder.name == "step_0000001" and torch.equal(state["w"], torch.ones(3)) and skipped == []
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step_0000001"]
    assert checkpoint.load(root / "latest")["w"].sum() == 3  # `latest` still points at a good one
    checkpoint.save(root, 3, {"w": torch.zeros(3)})  # the next save clears the half-written folder
    assert not list(root.glob(".tmp-*"))


def test_corrupt_checkpoint_is_named_and_resume_falls_back(tmp_path, caplog):
    from distgan.train import train_worker

    cfg = tiny_config(tmp_path)
    train_worker(cfg)
    newest = tmp_path / "checkpoints" / "step_0000020" / checkpoint.STATE
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(UserError, match=re.escape(str(newest)) + ".*(corrupt|truncated)"):
        checkpoint.load(newest.parent)
    folder, _, skipped = checkpoint.load_latest(tmp_path / "checkpoints")
    assert folder.name == "step_0000010" and str(newest) in skipped[0]

    with caplog.at_level("INFO", logger="distgan"):
        train_worker(replace(cfg, train=replace(cfg.train, steps=30)))
    assert "skipping a checkpoint" in caplog.text and str(newest) in caplog.text
    assert re.search(r"resumed from \S*step_0000010 at step 10", caplog.text)
    assert checkpoint.load(tmp_path / "checkpoints")["step"] == 30


def test_every_torch_load_is_weights_only():
    """Unpickling a checkpoint must never run code (docs/reliability.md)."""
    calls = []
    for path in [*ROOT.glob("distgan/**/*.py"), *ROOT.glob("launch/*.py"), *ROOT.glob("bench/**/*.py")]:
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start():text.find(")", m.start()) + 1]
            calls.append(call)
            assert "weights_only=True" in call, f"{path}: {call}"
    assert calls, "no torch.load found at all: the pattern is wrong"


# ------------------------------------------------------------------------------------ resume
def test_time_limit_signal_after_the_run_finished_asks_for_no_requeue(tmp_path):
    """SIGUSR2 (SLURM's time-limit warning) when training has already reached train.steps: submitit's
    checkpoint() neither requeues the job (which would spend one of cluster.max_requeues) nor leaves a
    stop request behind for a later continuation of the run."""
    from distgan.launcher.slurm_job import SlurmJob
    from distgan.rundir import RunDir

    rd = RunDir(tmp_path / "run")
    rd.path.mkdir(parents=True)
    rd.done_file.touch()
    assert SlurmJob(tiny_config(rd.path)).checkpoint() is None
    assert not rd.stop_file.exists()


def test_stop_file_checkpoints_leaves_and_is_used_up(tmp_path):
    """A STOP file (what the SLURM time limit writes) makes the loop checkpoint at its next tick and
    leave; the request is then removed, so running the command again trains to the end."""
    from distgan.rundir import RunDir
    from distgan.train import train_worker

    cfg = tiny_config(tmp_path / "run")
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir(parents=True)
    rd.stop_file.write_text("test")
    first = train_worker(cfg)
    assert first["step"] == 5 and first["stopped"] and not rd.stop_file.exists()
    assert checkpoint.load(rd.checkpoints)["step"] == 5
    again = train_worker(cfg)
    assert again["step"] == 20 and "stopped" not in again


class _StopAt(Exception):
    pass


def test_resume_continues_the_lr_schedule_exactly(tmp_path):
    """A run stopped at a checkpoint and resumed ends with the same weights and learning rate as one
    that ran straight through: the decay is a function of the step, not of the process."""
    from distgan.train import Hooks, train_worker

    class StopAfter(Hooks):
        def report(self, metrics, checkpoint_dir):
            if metrics["step"] == 10:
                raise _StopAt

    decay = dict(lr_decay="linear", lr_decay_start=0.25)
    train_worker(tiny_config(tmp_path / "straight", **decay))
    with pytest.raises(_StopAt):
        train_worker(tiny_config(tmp_path / "resumed", **decay), StopAfter())
    train_worker(tiny_config(tmp_path / "resumed", **decay))  # resume=auto picks up step 10
    a, b = (checkpoint.load(tmp_path / run / "checkpoints") for run in ("straight", "resumed"))
    assert a["step"] == b["step"] == 20
    for net in ("G", "D", "G_ema"):
        if a[net] is not None:
            for name in a[net]:
                torch.testing.assert_close(a[net][name], b[net][name], rtol=0, atol=0, msg=f"{net}.{name}")
    # the rate saved with a checkpoint is the next step's: 1 - (10 - 5) / 15 at step 10, 0 at the end
    lr = [checkpoint.load(tmp_path / "resumed" / "checkpoints" / f"step_{k:07d}")["opt_G"]["param_groups"][0]["lr"]
          for k in (10, 20)]
    assert lr == pytest.approx([1e-3 * 2 / 3, 0.0])


# ------------------------------------------------------------------------------------------ NaNs
def _train_with_nan_on_rank1(run_dir: str, skip: bool, from_call: int | None = None):
    """Every rank trains; rank 1's real batch of step 13 is NaN (``from_call``: every batch from that call
    on). Returns (outcome, message or metrics)."""
    from distgan import dist
    from distgan import train as train_mod

    original = train_mod.load

    def load_with_nan(cfg, seed=0):
        data = original(cfg, seed)
        calls = {"n": 0}
        batch = data.batch

        def poisoned(idx, device):
            calls["n"] += 1
            x = batch(idx, device)
            bad = calls["n"] == 13 if from_call is None else calls["n"] >= from_call
            return torch.full_like(x, float("nan")) if bad and dist.rank() == 1 else x

        data.batch = poisoned
        return data

    train_mod.load = load_with_nan
    try:
        return "done", json.dumps(train_mod.train_worker(tiny_config(Path(run_dir), skip_nonfinite=skip)))
    except train_mod.NonFiniteError as e:
        return "error", str(e)


def test_nan_stops_at_once_naming_step_rank_and_checkpoint(tmp_path):
    results = gloo.run(_train_with_nan_on_rank1, 2, str(tmp_path), False)
    for outcome, text in results:  # both ranks stop in the same phase of the same step
        assert outcome == "error"
        assert "step 13" in text and "rank 1" in text and str(tmp_path / "checkpoints" / "step_0000010") in text
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["step_0000010"]
    state = checkpoint.load(tmp_path / "checkpoints")  # the last good checkpoint is intact and finite
    assert state["step"] == 10 and all(torch.isfinite(v).all() for v in state["G"].values())


def test_skip_nonfinite_skips_the_update_on_every_rank(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = gloo.run(_train_with_nan_on_rank1, 2, str(tmp_path), True)
    for outcome, text in results:
        assert outcome == "done", text
        metrics = json.loads(text)
        assert metrics["step"] == 20 and metrics["skipped_steps"] == 1
    # ranks agreed (train_worker compares weights across ranks before each save), no NaN got into the
    # weights, and TensorBoard counts the skip
    state = checkpoint.load(tmp_path / "checkpoints")
    assert state["step"] == 20 and state["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for net in ("G", "D") for v in state[net].values())
    events = EventAccumulator(str(tmp_path / "tb" / "global"))
    events.Reload()
    assert events.Scalars("train/skipped_steps")[-1].value == 1


def test_skipping_most_updates_stops_the_run(tmp_path):
    """train.skip_nonfinite never hides a run that no longer trains: past train.max_skipped_fraction of a
    tick's updates it stops like a non-finite run, naming the counts and the last good checkpoint."""
    results = gloo.run(_train_with_nan_on_rank1, 2, str(tmp_path), True, 12)
    for outcome, text in results:  # every update from step 12 on is skipped: the tick at step 15 stops
        assert outcome == "error", text
        assert "updates since the last log tick had non-finite gradients and were skipped" in text
        assert "train.max_skipped_fraction=0.2" in text and str(tmp_path / "checkpoints" / "step_0000010") in text
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["step_0000010"]


# ------------------------------------------------------------------------------------- long runs
_SOAK_CHILD = """
import json, sys
from pathlib import Path
from tests.test_reliability import tiny_config
from distgan.train import Hooks, train_worker

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

samples = []
class Probe(Hooks):
    def report(self, metrics, checkpoint_dir):
        samples.append((metrics["step"], rss_kb()))

cfg = tiny_config(Path(sys.argv[1]), steps=int(sys.argv[2]), log_every=10, sample_every=20,
                  checkpoint_every=200, keep_checkpoints=2, keep_samples=5)
train_worker(cfg, Probe())
print(json.dumps(samples))
"""


def test_soak_memory_and_files_stay_bounded(tmp_path):
    steps = 3000
    proc = subprocess.run([sys.executable, "-c", _SOAK_CHILD, str(tmp_path), str(steps)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = json.loads(proc.stdout.strip().splitlines()[-1])
    assert samples[-1][0] == steps
    warm = [kb for step, kb in samples if step >= steps // 5]  # after allocator and TensorBoard warm-up
    growth_mb = (max(warm[len(warm) // 2:]) - warm[0]) / 1024
    assert growth_mb < 8, f"RSS grew {growth_mb:.1f} MB over {steps * 4 // 5} steps: {samples[::30]}"
    assert len(list((tmp_path / "samples").glob("*.png"))) == 5
    assert len(checkpoint.list_checkpoints(tmp_path / "checkpoints")) == 2
    assert all(len(list(d.iterdir())) == 1 for d in (tmp_path / "tb").iterdir())  # one event file per writer


# ------------------------------------------------------------------------- worker killed under Ray
def _run_cli(run_dir: Path, *overrides: str) -> subprocess.Popen:
    args = ["dataset=ring", "model=mlp", "model.width=4", "model.latent_dim=8", "train.batch_size=32",
            "train.log_every=25", "train.checkpoint_every=50", "train.sample_every=100", "cluster.num_workers=2",
            "train.keep_checkpoints=1", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen([sys.executable, str(ROOT / "launch" / "run.py"), *args], cwd=run_dir.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ray Train polls its workers every 2 s: faster here, so ticks and the kill are seen sooner
                            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"})


def _our_ray_workers(run_dir: Path) -> list[int]:
    """PIDs of this run's Ray Train workers: the process title says RayTrainWorker and the environment
    holds this run's token path (other people's Ray clusters on this machine are left alone)."""
    token = str(run_dir / ".ray_auth_token").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"RayTrainWorker" in (proc / "cmdline").read_bytes() \
                    and token in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_worker_killed_run_resumes_and_finishes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    # 1) a short run, then the same command for more steps: it resumes, although Ray's snapshot of the first
    #    fit() lists step_0000025, which retention (keep_checkpoints=1) deleted (ray_train.fit drops it)
    first = _run_cli(run_dir, "train.steps=50", "train.checkpoint_every=25")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    second = _run_cli(run_dir, "train.steps=200", "cluster.max_failures=1")
    # 2) SIGKILL one worker mid-run (between checkpoints), from outside: no test hook in the loop
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and second.poll() is None and killed is None:
        if max(_steps_logged(run_dir), default=0) >= 125:  # between the checkpoints at 100 and 150
            workers = _our_ray_workers(run_dir)
            if workers:
                killed = workers[-1]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "never saw the run reach step 125 with workers to kill"
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert checkpoint.load(run_dir / "checkpoints")["step"] == 200
    steps = _steps_logged(run_dir)
    restart = max(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])  # the attempt after the kill
    assert steps[restart] <= 125 and steps[-1] == 200  # it went back to the last checkpoint and finished
    # 3) TensorBoard: purge_step drops what the killed attempt wrote after its checkpoint: no step twice
    events = EventAccumulator(str(run_dir / "tb" / "global"))
    events.Reload()
    logged = [e.step for e in events.Scalars("loss/D")]
    assert logged == list(range(25, 201, 25))
    # 4) the run's token never leaks into what the run writes (security, beside test_security.py)
    token = (run_dir / ".ray_auth_token").read_text().strip()
    assert oct((run_dir / ".ray_auth_token").stat().st_mode & 0o777) == "0o600"
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    for path in run_dir.rglob("*"):
        if path.is_file() and path.name != ".ray_auth_token":
            assert token.encode() not in path.read_bytes(), f"token found in {path}"
    assert token not in out + err
