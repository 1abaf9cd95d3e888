"""Atomic, verified checkpoints of the full training state.

Layout under ``<run_dir>/checkpoints``::

    step_0000500/state.pt     G, D, G_ema, both optimizers, scaler, step, RNG, config, fixed latents
    step_0000500/meta.json    step and the sha256 of state.pt (written last: no meta, no checkpoint)
    latest -> step_0000500    symlink, swapped atomically
    best/                     the best checkpoint by the sample-quality metrics (train.eval_every)

A checkpoint is written into a hidden temporary folder and renamed into place, so a process killed
while saving leaves the previous checkpoint untouched. Loading checks the sha256 and uses
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distgan.errors import UserError, first_line
from distgan.files import fsync_dir, write_atomic
from distgan.rundir import RunDir

STATE, META, LATEST, BEST = "state.pt", "meta.json", "latest", "best"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(root: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as ``root/step_XXXXXXX`` atomically, point ``latest`` at it, keep the newest
    ``keep`` checkpoints (and any named ``best``)."""
    root = Path(root)
    final = _write_folder(root, f"step_{step:07d}", state, {"step": step})
    link = root / f".{LATEST}.{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(final.name)
    os.replace(link, root / LATEST)
    fsync_dir(root)
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(root: str | Path, step: int, state: dict[str, Any], scores: dict[str, float]) -> Path:
    """Write ``state`` as ``root/best`` (its ``meta.json`` also holds the ``scores``), replacing the
    previous best. A real folder, not a link: retention deletes ``step_*`` folders and never ``best``."""
    return _write_folder(Path(root), BEST, state, {"step": step, "scores": scores})


def _write_folder(root: Path, name: str, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """``state`` and ``meta`` (plus the state file's sha256 and size) as ``root/name``: written into a
    hidden temporary folder, fsynced, then renamed into place. An existing ``root/name`` (the same step
    saved again after a restart, or the previous best) is moved aside first — a folder cannot be
    replaced in one rename — and deleted only once the new one is in place. A failed write (a full disk)
    removes the temporary folder, leaves every earlier checkpoint as it was, and is one UserError line."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    final = root / name
    tmp, old = root / f".tmp-{name}-{os.getpid()}", root / f".tmp-old-{name}-{os.getpid()}"
    try:
        tmp.mkdir()
        torch.save(state, tmp / STATE)
        _fsync(tmp / STATE)
        meta = {**meta, "sha256": _sha256(tmp / STATE), "bytes": (tmp / STATE).stat().st_size}
        write_atomic(tmp / META, json.dumps(meta))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(_write_failed(root, name, e)) from None
    replace_folder(tmp, final, old)
    return final


def _write_failed(root: Path, name: str, e: OSError) -> str:
    """The one line for a checkpoint that could not be written, with the space it needs where that is why."""
    where = f"checkpoint {root / name} not written ({e.strerror or first_line(e)})"
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}; the previous checkpoints are intact"
    found = list_checkpoints(root)
    need = read_meta(found[0]).get("bytes") if found else None
    free = shutil.disk_usage(root).free
    size = f"about {need / 2**20:.0f} MiB" if need else "as much as the networks and optimizers hold"
    return (f"{where}: a checkpoint needs {size} and {root} has {free / 2**20:.0f} MiB free; free space "
            f"(or lower train.keep_checkpoints) and run again to resume from {found[0].name if found else 'scratch'}")


def replace_folder(new: Path, final: Path, aside: Path) -> None:
    """``new`` becomes ``final``. A folder cannot be replaced in one rename: an existing ``final`` is
    moved to ``aside`` first and deleted once ``new`` is in place."""
    if final.exists():
        os.replace(final, aside)
    os.replace(new, final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def best_scores(root: str | Path) -> dict[str, float] | None:
    """The scores recorded with ``root/best`` (to continue the comparison after a resume), if any."""
    if Path(root).is_dir():
        recover(Path(root))
    return read_meta(Path(root) / BEST).get("scores")


def recover(root: Path) -> None:
    """A save killed between its two renames left ``root/NAME`` moved aside as ``.tmp-old-NAME-PID`` and
    nothing in its place: put it back (the newer folder never finished, so the older one is the truth)."""
    for aside in root.glob(".tmp-old-*"):
        name = aside.name[len(".tmp-old-"):].rsplit("-", 1)[0]
        if name and not (root / name).exists() and (aside / META).exists():
            os.replace(aside, root / name)
            fsync_dir(root)


def _remove_stale_tmp(root: Path) -> None:
    """Half-written folders of saves that were killed (only one process, rank 0, saves into ``root``;
    one run per folder: distgan.rundir.RunDir.lock), after :func:`recover` put back what they moved aside."""
    recover(root)
    for tmp in root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Finished checkpoint folders under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    recover(root)
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / META).exists()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def newest(root: str | Path) -> str:
    """The newest finished checkpoint under ``root`` as a string for messages ("none" if there is none)."""
    found = list_checkpoints(root)
    return str(found[0]) if found else "none"


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A checkpoint folder's meta.json (step, sha256, bytes; scores for best), {} if unreadable."""
    try:
        return json.loads((Path(folder) / META).read_text())
    except (OSError, ValueError):
        return {}


def resolve(path: str | Path) -> Path:
    """The checkpoint folder a user path means: a step folder, ``latest``, a run's ``checkpoints``
    folder, a run directory, or a ``state.pt`` file."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file() and p.name == STATE:
        return p.parent
    if RunDir(p).checkpoints.is_dir():
        p = RunDir(p).checkpoints
    if (p / LATEST).exists():
        p = p / LATEST
    if not p.exists():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory, its checkpoints/latest "
                        "or a checkpoints/step_* folder")
    if not (p / STATE).is_file():
        raise UserError(f"{path} holds no checkpoint ({STATE} missing)")
    return p.resolve()


def verify(folder: Path) -> Path:
    """Check ``folder``'s state file against the sha256 in its meta file; return the state file."""
    state_file, meta_file = folder / STATE, folder / META
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError:
            raise UserError(f"checkpoint {meta_file} is corrupt (unreadable JSON)") from None
        if _sha256(state_file) != meta.get("sha256"):
            raise UserError(f"checkpoint {state_file} is corrupt or truncated (sha256 mismatch)")
    return state_file


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; a truncated or corrupt file raises a UserError naming it."""
    state_file = verify(resolve(path))
    try:
        return torch.load(state_file, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise UserError(f"checkpoint {state_file} is unreadable: {first_line(e, 200)}") from None


def load_latest(root: str | Path, map_location: str | torch.device = "cpu",
                check: Callable[[dict[str, Any], Path], None] | None = None):
    """Newest loadable checkpoint under ``root`` as ``(folder, state, skipped)``; ``skipped`` names the
    newer ones that failed, each with its reason. ``(None, None, skipped)`` if none loads. A checkpoint
    loads when its sha256 verifies, it unpickles (weights only), and ``check(state, folder)`` (the
    caller's own test: the fields it needs, the architecture) raises no UserError. The driver's pre-flight
    and the workers call this with the same test, so the checkpoint the driver names is the one the
    workers take. Any OSError (a file deleted, unreadable) counts as a bad checkpoint, like corruption."""
    skipped = []
    for folder in list_checkpoints(root):
        try:
            state = load(folder, map_location)
            if check is not None:
                check(state, folder)
            return folder, state, skipped
        except UserError as e:
            skipped.append(str(e))
        except OSError as e:
            skipped.append(f"checkpoint {folder} is unreadable ({e.strerror or first_line(e)}: {e.filename})")
    return None, None, skipped


def check_architecture(module: torch.nn.Module, state_dict: dict[str, Any], what: str, source: str) -> None:
    """A clear UserError, instead of load_state_dict's shape traceback, when ``state_dict`` was saved from
    another architecture than ``module`` (other model, width, latent size, data shape or classes)."""
    mine = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if mine != theirs:
        raise UserError(f"checkpoint {source} holds a different {what} architecture than this config "
                        "(check model=, model.width, model.latent_dim and dataset); use resume=never, "
                        "a new run directory or the checkpoint's model settings")
