"""Shared body of ``launch/sample.py`` and ``launch/evaluate.py``: ``key=value`` arguments over a typed
schema (defaults in ``configs/<name>.yaml``), the generator of a checkpoint, one-line errors.

OmegaConf alone (Hydra's config layer), not ``@hydra.main``: these scripts must write nothing but their
output (no ``outputs/`` folder, no log file) and answer a bad argument in one line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distgan import checkpoint
from distgan.config import Config, from_dict
from distgan.errors import UserError
from distgan.models import build_models

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def parse(argv: list[str], schema: type, name: str, flags: tuple[str, ...] = ()) -> Any:
    """``key=value`` arguments (and ``--flag`` for each boolean in ``flags``) -> a ``schema`` instance."""
    known = {f.name for f in dataclasses.fields(schema)}
    dotlist = []
    for arg in argv:
        if arg.startswith("--") and arg[2:] in flags:
            dotlist.append(f"{arg[2:]}=true")
            continue
        if arg in ("-h", "--help"):
            print((CONFIG_DIR / f"{name}.yaml").read_text())
            sys.exit(0)
        key = arg.split("=", 1)[0]
        if "=" not in arg or key.split(".", 1)[0] not in known:
            raise UserError(f"unknown argument {arg!r}; use key=value with keys: {', '.join(sorted(known))}")
        dotlist.append(arg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(CONFIG_DIR / f"{name}.yaml"),
                                 OmegaConf.from_dotlist(dotlist))
        args = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(str(e).splitlines()[0]) from None
    missing = [f.name for f in dataclasses.fields(schema) if getattr(args, f.name) is None
               and f.metadata.get("required")]
    if missing:
        raise UserError(f"missing {', '.join(f'{m}=...' for m in missing)}")
    return args


def required() -> Any:
    return dataclasses.field(default=None, metadata={"required": True})


def load_generator(path: str, ema: bool = True, device: str = "cpu") -> tuple[torch.nn.Module, Config, dict]:
    """(G in eval mode, the run's config, the checkpoint state); G_ema when present and ``ema``."""
    state = checkpoint.load(path, map_location=device)
    try:
        cfg = from_dict(state["config"])
        G, _ = build_models(cfg.model, tuple(state["data_shape"]), int(state.get("num_classes") or 0))
        weights = state["G_ema"] if ema and state.get("G_ema") is not None else state["G"]
        G.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} is not a distgan checkpoint this version can read "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    state["used_ema"] = ema and state.get("G_ema") is not None
    return G.to(device).eval().requires_grad_(False), cfg, state


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, so a failure leaves nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_main(main: Callable[[list[str]], None]) -> None:
    """``error: <one line>`` and exit 2 on a UserError; the traceback only with DISTGAN_DEBUG=1."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        if os.environ.get("DISTGAN_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
