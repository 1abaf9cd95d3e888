"""The asynchronous evaluator (distgan/metrics/watcher.py) on fake checkpoints and a cheap fake score:
started before the run, killed and restarted, it ends with one score per checkpoint, in order."""

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

from distgan import checkpoint
from distgan.metrics import watcher as W


def fake_fid(step: int) -> float:
    return 100.0 / (1 + step % 700) + step / 1000  # not monotone: the best is not simply the last


def _save(run: Path, step: int, keep: int = 100) -> None:
    checkpoint.save(run / "checkpoints", step, {"step": step, "w": torch.full((3,), float(step))}, keep=keep)


def fake_score(folder: Path, delay: float = 0.0) -> tuple[dict, dict]:
    """Reads the checkpoint as a real score would; the 'FID' is a function of its step."""
    state = checkpoint.load(folder)
    time.sleep(delay)
    return {"fid50k_full": fake_fid(state["step"]), "kid50k_full": 0.01}, {"num_samples": 50_000}


def watcher_main(run_dir: str, delay: float) -> None:
    """Entry point of the watcher subprocess (``python tests/test_watch.py RUN_DIR DELAY``: only the
    installed distgan is imported, not this repository as a package)."""
    run = Path(run_dir)
    W.watch(run, lambda f: fake_score(f, delay), poll_s=0.05, stop_when=lambda: (run / "DONE").exists())


def _start(run: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, str(run), str(delay)], cwd=run.parent, env=env,
                            stderr=subprocess.PIPE, text=True)


def _lines(run: Path) -> list[dict]:
    path = run / W.SCORES
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _tb_steps(run: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / W.TB_RUN))
    acc.Reload()
    return [e.step for e in acc.Scalars("metrics/fid50k_full")]


def test_killed_and_restarted_watcher_scores_each_checkpoint_once_in_order(tmp_path):
    run = tmp_path / "run"
    proc = _start(run, delay=0.4)  # before the run exists
    try:
        time.sleep(1.0)
        for step in (100, 200, 300, 400):
            _save(run, step)
        _wait(lambda: len(_lines(run)) >= 2)
        proc.send_signal(signal.SIGKILL)  # most likely while scoring step 300
        proc.wait(10)
        scored_before = len(_lines(run))
        assert 2 <= scored_before < 4
        for step in (500, 600, 700):
            _save(run, step)
        proc = _start(run, delay=0.05)
        _save(run, 800)
        (run / "DONE").touch()
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    lines = _lines(run)
    steps = [r["step"] for r in lines]
    assert steps == [100, 200, 300, 400, 500, 600, 700, 800]
    assert [r["metrics"]["fid50k_full"] for r in lines] == [fake_fid(s) for s in steps]
    best_step = min(steps, key=fake_fid)
    best_meta = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())
    assert best_meta["step"] == best_step and best_meta["scores"]["fid50k_full"] == fake_fid(best_step)
    assert checkpoint.load(run / "checkpoints" / "best")["step"] == best_step  # a verified, loadable copy
    assert [r["best"] for r in lines] == [fake_fid(s) < min(map(fake_fid, steps[:i]), default=1e9)
                                          for i, s in enumerate(steps)]
    assert _tb_steps(run) == steps  # TensorBoard: each step once (purged and rewritten after the restart)
    assert not list((run / "checkpoints").glob(".eval-*"))  # no snapshot left behind


def test_a_half_written_line_is_cut_and_its_checkpoint_scored_again(tmp_path):
    run = tmp_path / "run"
    for step in (10, 20):
        _save(run, step)
    W.watch(run, fake_score, poll_s=0, stop_when=lambda: True)
    with open(run / W.SCORES, "a") as f:
        f.write('{"step": 30, "metr')  # a writer killed mid-line
    _save(run, 30)
    assert W.watch(run, fake_score, poll_s=0, stop_when=lambda: True) == 1
    assert [r["step"] for r in _lines(run)] == [10, 20, 30]


def test_a_checkpoint_deleted_by_retention_is_skipped_not_fatal(tmp_path, capsys):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        _save(run, step)

    def score_and_retain(folder):
        # retention of the trainer, keep=1, runs while step 1 is being scored: 1 and 2 go
        for step in (1, 2):
            checkpoint.shutil.rmtree(run / "checkpoints" / f"step_{step:07d}", ignore_errors=True)
        return fake_score(folder)

    W.watch(run, score_and_retain, poll_s=0, stop_when=lambda: True)
    lines = _lines(run)
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert "metrics" in lines[0]  # scored from its snapshot although its folder went meanwhile
    assert "deleted" in lines[1]["skipped"] and "metrics" not in lines[1]
    assert json.loads((run / "checkpoints" / "best" / "meta.json").read_text())["step"] == 3
    assert "skipped step_0000002" in capsys.readouterr().err


def test_best_is_not_written_through_into_the_step_folder(tmp_path):
    run = tmp_path / "run"
    _save(run, 5)
    W.watch(run, fake_score, poll_s=0, stop_when=lambda: True)
    step_meta = json.loads((run / "checkpoints" / "step_0000005" / "meta.json").read_text())
    assert "scores" not in step_meta  # the snapshot's hard link was replaced, not edited
    checkpoint.load(run / "checkpoints" / "step_0000005")


@pytest.mark.parametrize("junk", ["not json\n"])
def test_a_corrupt_record_is_one_clear_error(tmp_path, junk):
    from distgan.errors import UserError

    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    (run / W.SCORES).write_text(junk)
    with pytest.raises(UserError, match="line 1 is not JSON"):
        W.watch(run, fake_score, poll_s=0, stop_when=lambda: True)


if __name__ == "__main__":
    watcher_main(sys.argv[1], float(sys.argv[2]))
