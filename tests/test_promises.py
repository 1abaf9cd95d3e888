"""What distgan promises about a run's state (docs/promises.md), each written as the failure a user meets:
resume truth, damaged run folders, silent non-success, one run per folder, crash-safe files, SIGTERM and a
full disk. Each asserts the one line, and that nothing was lost."""

from __future__ import annotations

import errno
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
from distgan.errors import UserError
from distgan.files import append_line
from distgan.rundir import RunDir
from tests.test_reliability import tiny_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in RunDir(run).metrics.read_text().splitlines()]


@pytest.fixture
def run40(tmp_path):
    """A finished 40-step run with checkpoints 20, 30, 40."""
    from distgan.train import train_worker

    cfg = tiny_config(tmp_path / "run", steps=40)
    train_worker(cfg)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")] == \
        ["step_0000040", "step_0000030", "step_0000020"]
    return cfg


def _swap_newest(cfg) -> Path:
    """Put another architecture's state into the newest checkpoint and make its meta's sha256 match: it
    verifies, unpickles, and still cannot be resumed by this run."""
    from distgan.train import train_worker

    other = tiny_config(Path(cfg.run_dir).parent / "other", steps=10)
    other = replace(other, model=replace(other.model, width=8))
    train_worker(other)
    newest = Path(cfg.run_dir) / "checkpoints" / "step_0000040"
    (newest / checkpoint.STATE).write_bytes((Path(other.run_dir) / "checkpoints" / "step_0000010" /
                                             checkpoint.STATE).read_bytes())
    meta = checkpoint.read_meta(newest)
    meta["sha256"] = checkpoint._sha256(newest / checkpoint.STATE)
    (newest / checkpoint.META).write_text(json.dumps(meta))
    return newest


def test_the_driver_names_the_checkpoint_the_workers_resume_from(run40, caplog):
    from distgan.launcher.preflight import preflight
    from distgan.train import train_worker

    newest = _swap_newest(run40)
    more = replace(run40, train=replace(run40.train, steps=50))
    note = preflight(more).resume_note.splitlines()
    assert note[0] == "resuming from checkpoints/step_0000030 (step 30 of 50)"
    assert note[1].startswith(f"skipping a checkpoint: checkpoint {newest} holds a different generator")
    with caplog.at_level("INFO", logger="distgan"):
        train_worker(more)
    assert re.search(r"resumed from \S*step_0000030 at step 30", caplog.text)
    assert _steps(Path(run40.run_dir))[-4:] == [35, 40, 45, 50]  # 40 was redone from 30, not taken from the swap


def test_a_run_whose_checkpoints_all_fail_stops_instead_of_starting_over(run40):
    from distgan.launcher.preflight import preflight
    from distgan.train import train_worker

    for folder in checkpoint.list_checkpoints(Path(run40.run_dir) / "checkpoints"):
        (folder / checkpoint.STATE).write_bytes(b"garbage")
    more = replace(run40, train=replace(run40.train, steps=50))
    with pytest.raises(UserError, match="no checkpoint in .* can be resumed .*sha256 mismatch"):
        preflight(more)
    with pytest.raises(UserError, match="no checkpoint in .* can be resumed"):  # a restarted worker too
        train_worker(more)
    assert _steps(Path(run40.run_dir))[-1] == 40  # nothing was trained from step 0


def test_a_deleted_state_file_falls_back_with_its_reason(run40):
    from distgan.launcher.preflight import preflight

    newest = Path(run40.run_dir) / "checkpoints" / "step_0000040"
    (newest / checkpoint.STATE).unlink()  # its folder and meta left, as a half-finished copy would
    note = preflight(replace(run40, train=replace(run40.train, steps=50))).resume_note.splitlines()
    assert note[0] == "resuming from checkpoints/step_0000030 (step 30 of 50)"
    assert note[1] == f"skipping a checkpoint: {newest} holds no checkpoint (state.pt missing)"


def test_a_learning_rate_typed_at_resume_is_applied_and_said(run40):
    from distgan.launcher.preflight import preflight
    from distgan.train import train_worker

    more = replace(run40, train=replace(run40.train, steps=50, lr_g=5e-4))
    assert preflight(more).resume_note == ("resuming from checkpoints/step_0000040 (step 40 of 50); applying "
                                          "train.lr_g: 0.001 -> 0.0005 (the checkpoint's optimizer state keeps "
                                          "its moments)")
    train_worker(more)
    state = checkpoint.load(Path(run40.run_dir) / "checkpoints")
    assert state["step"] == 50
    assert state["opt_G"]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    assert state["opt_D"]["param_groups"][0]["lr"] == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------ one run per folder
_HOLD = """
import sys, time
from distgan.rundir import RunDir
with RunDir(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_launch_into_a_running_folder_is_one_line(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, str(ROOT / "launch" / "run.py"), "dataset=ring", "model=mlp",
                                 "model.width=4", f"hydra.run.dir={run}"], capture_output=True, text=True, env=ENV,
                                timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: run directory {run} is in use by another run (pid {holder.pid} on {os.uname().nodename} "
            f"since {json.loads((run / '.lock').read_text())['since']}); wait for it to finish or stop it, or use "
            "another hydra.run.dir"]
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the second run was written
    finally:
        holder.kill()
        holder.wait()
    RunDir(run).check_unlocked()  # the holder died (SIGKILL): its lock went with it
    with RunDir(run).lock():
        with pytest.raises(UserError, match="is in use by another run"):
            RunDir(run).check_unlocked()  # even from the same process


# ------------------------------------------------------------------------------------- crash-safe files
def test_a_torn_metrics_line_is_cut_off_and_skipped_by_readers(tmp_path):
    from distgan.launcher.progress import read_progress

    rd = RunDir(tmp_path)
    append_line(rd.metrics, json.dumps({"step": 5}))
    with open(rd.metrics, "a") as f:
        f.write('{"step": 1')  # the crash: half a line, no newline
    rows, offset = read_progress(tmp_path, 0)
    assert rows == [{"step": 5}]
    append_line(rd.metrics, json.dumps({"step": 10}))  # the resumed run's next tick
    assert rd.metrics.read_text().splitlines() == ['{"step": 5}', '{"step": 10}']
    assert read_progress(tmp_path, offset)[0] == [{"step": 10}]
    with open(rd.metrics, "a") as f:  # an older run's glued fragment in the middle: skipped, not fatal
        f.write('{"st{"step": 15}\n{"step": 20}\n')
    assert read_progress(tmp_path, 0)[0] == [{"step": 5}, {"step": 10}, {"step": 20}]


_BEST_CRASH = """
import os, sys, torch
from distgan import checkpoint
root = sys.argv[1]
checkpoint.save_best(root, 10, {"w": torch.ones(3)}, {"fd": 5.0})
real = os.replace
def crash_before_the_new_best(a, b):
    if os.path.basename(a).startswith(".tmp-best-"):  # the old best is aside, the new one not yet in place
        os._exit(9)
    real(a, b)
os.replace = crash_before_the_new_best
checkpoint.save_best(root, 20, {"w": torch.zeros(3)}, {"fd": 4.0})
"""


def test_a_crash_between_the_best_checkpoints_renames_keeps_the_old_best(tmp_path):
    root = tmp_path / "checkpoints"
    done = subprocess.run([sys.executable, "-c", _BEST_CRASH, str(root)], env=ENV)
    assert done.returncode == 9
    assert not (root / checkpoint.BEST).exists() and list(root.glob(".tmp-old-best-*"))  # the crash's state
    assert checkpoint.best_scores(root) == {"fd": 5.0}  # put back, not deleted
    assert checkpoint.load(root / checkpoint.BEST)["w"].sum() == 3


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_what_it_needs(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    checkpoint.save(root, 10, {"w": torch.ones(1000)})

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(UserError) as e:
        checkpoint.save(root, 20, {"w": torch.zeros(1000)})
    line = str(e.value)
    assert line.startswith(f"checkpoint {root / 'step_0000020'} not written (No space left on device): a checkpoint "
                           "needs about 0 MiB and ")
    assert "MiB free; free space (or lower train.keep_checkpoints) and run again to resume from step_0000010" in line
    monkeypatch.undo()
    assert checkpoint.load(root)["w"].sum() == 1000 and not list(root.glob(".tmp-*"))


# ------------------------------------------------------------------------------------------ SIGTERM
@pytest.mark.slow
def test_sigterm_checkpoints_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, str(ROOT / "launch" / "run.py"), "dataset=ring", "model=mlp", "model.width=4",
            "cluster.num_workers=1", "train.steps=1000000", "train.log_every=20", "train.checkpoint_every=100000",
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 180
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.5)
    assert (run / "metrics.jsonl").exists(), proc.stderr.read() if proc.poll() is not None else "no tick"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"error: stopped by SIGTERM: checkpoint (\S+) saved \(run again with the same hydra.run.dir "
                     r"to resume\)", last)
    assert m, last
    step = checkpoint.load(m.group(1))["step"]
    assert step % 20 == 0 and step == _steps(run)[-1]
    again = subprocess.run([*args[:-3], f"train.steps={step + 20}", "train.log_every=20", f"hydra.run.dir={run}"],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from checkpoints/step_{step:07d} (step {step} of {step + 20})" in again.stdout
    assert _steps(run)[-1] == step + 20


# ------------------------------------------------------------------------------------ network exposure
def _listeners(pids: set[int]) -> set[tuple[str, str, int]]:
    """(process name, local address, pid) of every TCP/UDP socket that ``pids`` listen on (``ss -ltunpH``)."""
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+),', line):
            if int(pid) in pids:
                found.add((name, line.split()[4], int(pid)))
    return found


@pytest.mark.slow
def test_a_local_run_listens_on_loopback_only(tmp_path):
    """Every Ray port of a cluster=local run (the GCS, raylet, object manager, every worker's gRPC server, the
    runtime-env agent) and every other port the run opens (gloo's, torch.distributed's rendezvous) is bound to
    127.0.0.1, seen with ``ss`` while 2 workers train (docs/promises.md)."""
    if subprocess.run(["ss", "-V"], capture_output=True).returncode != 0:
        pytest.skip("needs ss (iproute2)")
    run = tmp_path / "run"
    args = [sys.executable, str(ROOT / "launch" / "run.py"), "dataset=ring", "model=mlp", "model.width=4",
            "cluster.num_workers=2", "train.steps=1000000", "train.log_every=20", "train.checkpoint_every=100000",
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    seen: set[tuple[str, str, int]] = set()
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and len(_steps_if_any(run)) < 3:
            seen |= _listeners(_descendants(proc.pid))
            time.sleep(0.5)
        assert len(_steps_if_any(run)) >= 3, proc.stderr.read() if proc.poll() is not None else "no ticks"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), seen
    exposed = {(name, addr, pid) for name, addr, pid in seen
               if not addr.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))}
    # torch.distributed meets through a file, not rank 0's TCPStore (which would bind every interface)
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"


def test_one_machine_runs_use_the_loopback_interface_and_a_file_rendezvous(monkeypatch):
    """gloo/NCCL are told the loopback interface unless the user named one; the local TorchConfig's backend
    is the file-store one (Ray Train's TCPStore listens on every interface), SLURM's is Ray Train's own."""
    from distgan.launcher.local import loopback_env
    from distgan.launcher.ray_train import torch_config

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    env = loopback_env()
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["GLOO_SOCKET_IFNAME"] == "lo" and env["NCCL_SOCKET_IFNAME"] == "ib0"
    assert torch_config("gloo", one_machine=True).backend_cls.__name__ == "FileStoreBackend"
    assert torch_config("nccl", one_machine=False).backend_cls.__name__ == "_TorchBackend"


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (Ray's GCS and raylet are the driver's children, its workers the
    raylet's), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    return found


def _steps_if_any(run: Path) -> list[int]:
    return _steps(run) if RunDir(run).metrics.exists() else []
