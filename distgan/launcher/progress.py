"""Following a run from the driver: the progress bar read from ``metrics.jsonl``, and the summary."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from distgan.rundir import RunDir

log = logging.getLogger("distgan")


def read_progress(run_dir: str | Path, offset: int) -> tuple[list[dict], int]:
    """New JSON lines of ``metrics.jsonl`` after byte ``offset`` (rank 0 appends one per log tick)."""
    path = RunDir(run_dir).metrics
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # a last line without its newline is still being written (or torn)
    lines = []
    for line in chunk[:end].splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # a fragment a crash left mid-file (older runs): skipped, never fatal
            if line.strip():
                log.warning("skipping an unreadable line of %s: %r", path, line[:80])
    return lines, offset + end


def follow(run_dir: str | Path, total: int, done: Callable[[], bool], status: Callable[[], str] | None = None,
           poll_s: float = 0.5) -> dict | None:
    """Show a progress bar (step, losses, img/s, ETA) from the run's metrics until ``done()``."""
    from tqdm import tqdm

    from distgan import checkpoint

    rd = RunDir(run_dir)
    offset = rd.metrics.stat().st_size if rd.metrics.exists() else 0
    found = checkpoint.list_checkpoints(rd.checkpoints)  # a resumed run's bar starts where it resumes
    start = int(checkpoint.read_meta(found[0]).get("step", 0)) if found else 0
    last = None
    with tqdm(total=total, initial=min(start, total), unit="step", dynamic_ncols=True, desc="train") as bar:
        while True:
            finished = done()
            rows, offset = read_progress(run_dir, offset)
            for row in rows:
                last = row
                bar.n = row["step"]
                bar.set_postfix({"D": f"{row['mean/loss/D']:.3f}", "G": f"{row['mean/loss/G']:.3f}",
                                 "img/s": f"{row['img_per_sec']:.0f}"}, refresh=False)
                bar.refresh()
                log.info("step %d/%d loss/D %.4f loss/G %.4f img/s %.0f", row["step"], total,
                         row["mean/loss/D"], row["mean/loss/G"], row["img_per_sec"])
            if status is not None:
                bar.set_description(status(), refresh=True)
            if finished:
                return last
            time.sleep(poll_s)


def summary(run_dir: str | Path, last: dict | None) -> str:
    from distgan import checkpoint

    rd = RunDir(run_dir)
    ckpts = checkpoint.list_checkpoints(rd.checkpoints)
    samples = sorted(rd.samples.glob("step_*.png"))
    lines = [f"run directory : {rd}"]
    if last:
        lines.append(f"final step    : {last['step']}  loss/D {last['mean/loss/D']:.4f}  "
                     f"loss/G {last['mean/loss/G']:.4f}")
    lines.append(f"checkpoint    : {ckpts[0] if ckpts else 'none'}")
    lines.append(f"samples       : {samples[-1] if samples else 'none'}")
    lines.append(f"tensorboard   : tensorboard --logdir {rd.tb}")
    return "\n".join(lines)
