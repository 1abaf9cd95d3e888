"""What every launcher does before any worker or job starts: typed config, validation, pre-flight
checks of data and checkpoints, the private run directory, and following a run's progress."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distgan import checkpoint, data
from distgan.config import Config, validate
from distgan.errors import UserError

log = logging.getLogger("distgan")
PROGRESS_FILE = "metrics.jsonl"  # rank 0 appends one JSON line per log tick


def to_config(cfg: DictConfig, run_dir: str) -> Config:
    """The Hydra config as the plain dataclass workers receive, with an absolute run directory."""
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, Config):  # composed without the schema (should not happen via launch/run.py)
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))
    return replace(obj, run_dir=str(Path(run_dir).resolve()))


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def preflight(cfg: Config, cuda_devices: int) -> Config:
    """Every check that can fail on user input, in the driver, before anything starts or is written."""
    validate(cfg, cuda_devices=cuda_devices)
    cfg = replace(cfg, dataset=data.locate(cfg.dataset))
    _check_data_readable(cfg)
    run_dir = Path(cfg.run_dir)
    _check_writable(run_dir)
    found = checkpoint.list_checkpoints(run_dir / "checkpoints")
    if cfg.resume == "never" and found:
        raise UserError(f"{run_dir} already holds checkpoints and resume=never; use resume=auto to continue "
                        "it or a new hydra.run.dir")
    if found and cfg.resume != "never":
        _check_run_checkpoints(run_dir)
    if cfg.resume not in ("auto", "never") and not found:
        _check_resume_checkpoint(cfg)
    return cfg


def _check_data_readable(cfg: Config) -> None:
    """Decode the training set once here, so a corrupt file is one line now and not a crash in every
    worker later (image sets are small; the folder-of-images set is only listed, decoding it is slow)."""
    if cfg.dataset.name in ("ring", "grid", "image_folder"):
        return
    try:
        n = len(data.load(cfg.dataset, seed=cfg.train.seed))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - torchvision asserts, unpickling errors, … all mean a bad file
        raise UserError(f"cannot read {cfg.dataset.name} from dataset.root={cfg.dataset.root} "
                        f"({type(e).__name__}{': ' + str(e).splitlines()[0][:120] if str(e) else ''}); the files "
                        "look truncated or corrupt: delete them and copy them again") from None
    if cfg.train.batch_size > n:
        raise UserError(f"train.batch_size={cfg.train.batch_size} is larger than {cfg.dataset.name} ({n} images)")


def _check_writable(run_dir: Path) -> None:
    """Probe by creating (and removing) a folder: ``os.access`` says yes to root on read-only mounts."""
    probe = run_dir if run_dir.is_dir() else run_dir.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        Path(tempfile.mkdtemp(prefix=".distgan-probe-", dir=probe)).rmdir()
    except OSError as e:
        raise UserError(f"run directory {run_dir} is not writable ({e.strerror}); set hydra.run.dir to a folder "
                        "you can write") from None


def _check_run_checkpoints(run_dir: Path) -> None:
    """resume=auto on a run with checkpoints: the newest that verifies is used; if none does, stop here
    rather than silently starting over (and later deleting the evidence by retention)."""
    folder, _, skipped = checkpoint.load_latest(run_dir / "checkpoints", verify_only=True)
    if folder is None:
        raise UserError(f"no checkpoint in {run_dir / 'checkpoints'} is readable ({skipped[0]}); use a new "
                        "hydra.run.dir, or resume=PATH with a good checkpoint")
    for reason in skipped:  # the workers fall back to ``folder`` the same way
        log.warning("skipping a checkpoint: %s", reason)


def _check_resume_checkpoint(cfg: Config) -> None:
    """``resume=PATH``: the checkpoint must load and match this config's architecture."""
    from distgan.models import build_models

    state = checkpoint.load(cfg.resume)
    num_classes = int(state.get("num_classes") or 0) if cfg.model.conditional else 0
    G, D = build_models(cfg.model, tuple(state.get("data_shape", ())), num_classes)
    checkpoint.check_architecture(G, state["G"], "generator", cfg.resume)
    checkpoint.check_architecture(D, state["D"], "discriminator", cfg.resume)


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run directory private to the user and save the resolved config."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, stat.S_IRWXU)  # 0700: tokens and checkpoints are the user's alone
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return run_dir


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run directory that Hydra created for a command that then failed validation, so bad
    input leaves nothing half-written. A directory holding anything of a run is kept."""
    if not run_dir.is_dir():
        return
    leftovers = [p.name for p in run_dir.iterdir() if p.name != ".hydra" and not p.name.endswith(".log")]
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)


def read_progress(run_dir: Path, offset: int) -> tuple[list[dict], int]:
    """New JSON lines of ``metrics.jsonl`` after byte ``offset``."""
    path = Path(run_dir) / PROGRESS_FILE
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1
    lines = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
    return lines, offset + end


def follow(run_dir: Path, total: int, done: Callable[[], bool], status: Callable[[], str] | None = None,
           poll_s: float = 0.5) -> dict | None:
    """Show a progress bar (step, losses, img/s, ETA) from the run's metrics until ``done()``."""
    from tqdm import tqdm

    offset = Path(run_dir, PROGRESS_FILE).stat().st_size if Path(run_dir, PROGRESS_FILE).exists() else 0
    last = None
    with tqdm(total=total, unit="step", dynamic_ncols=True, desc="train") as bar:
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


def summary(run_dir: Path, last: dict | None) -> str:
    ckpts = checkpoint.list_checkpoints(run_dir / "checkpoints")
    samples = sorted((run_dir / "samples").glob("step_*.png"))
    lines = [f"run directory : {run_dir}"]
    if last:
        lines.append(f"final step    : {last['step']}  loss/D {last['mean/loss/D']:.4f}  "
                     f"loss/G {last['mean/loss/G']:.4f}")
    lines.append(f"checkpoint    : {ckpts[0] if ckpts else 'none'}")
    lines.append(f"samples       : {samples[-1] if samples else 'none'}")
    lines.append(f"tensorboard   : tensorboard --logdir {run_dir / 'tb'}")
    return "\n".join(lines)
