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
    <run_dir>/.lock             held by the process that trains into the folder (RunDir.lock): one run per folder
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from distgan.errors import UserError
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
    LOCK = ".lock"

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
    lock_file = property(lambda self: self.path / self.LOCK)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one run: ``flock`` on ``.lock``, which the kernel releases when the holder
        exits in any way, so a lock is never stale after its holder died (on NFS Linux maps flock to the
        server's byte-range locks, released by its lock manager when the client's process or host goes;
        Lustre needs its ``flock`` mount option: docs/promises.md). A second run into the folder is
        one UserError naming the holder (host, pid, start time). The file stays: removing it would let two
        processes lock two different files of the same name."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"run directory {self.path} is in use by another run ({holder}); wait for it to "
                            "finish or stop it, or use another hydra.run.dir") from None
        except OSError as e:
            os.close(fd)
            raise UserError(f"cannot lock run directory {self.path} ({e.strerror}): its file system refuses "
                            "flock (Lustre: mount with -o flock); use a run directory on storage that locks") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def check_unlocked(self) -> None:
        """The one-line error :meth:`lock` would give, without holding anything (a pre-check)."""
        if self.lock_file.exists():
            with self.lock():
                pass

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


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
