"""The body of ``launch/run.py``: Hydra config -> validated Config -> the chosen cluster launcher."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from distgan.config import Config
from distgan.errors import UserError
from distgan.launcher.ray_train import root_cause

log = logging.getLogger("distgan")
GROUPS = ("cluster", "model", "dataset", "loss", "experiment")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def register_schema() -> None:
    """The typed schema every YAML merges into (configs/config.yaml lists ``schema`` first)."""
    ConfigStore.instance().store(name="schema", node=Config)


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("DISTGAN_DEBUG") == "1"


def check_group_choices(argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """``model=foo`` etc.: one clear line instead of Hydra's multi-line listing."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        if key not in GROUPS or value in ("null", ""):
            continue
        options = sorted(p.stem for p in (config_dir / key).glob("*.yaml"))
        for choice in value.split(","):  # a multirun sweep lists several
            if choice not in options:
                fail(f"unknown {key} {choice!r}; choose one of: {', '.join(options)}")


def run(dcfg: DictConfig) -> None:
    from distgan.launcher import common  # imports torch: not needed to reject a bad command line

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = common.to_config(dcfg, str(run_dir))
        cuda = common.cuda_device_count() if cfg.cluster.name == "local" else 0
        cfg = common.preflight(cfg, cuda)
        if cfg.cluster.name == "slurm":
            from distgan.launcher import slurm

            slurm.check_environment(cfg)
        common.prepare_run_dir(cfg)
    except UserError as e:
        common.discard_if_empty(run_dir)
        if debug():
            raise
        fail(str(e))
    try:
        if cfg.cluster.name == "slurm":
            from distgan.launcher import slurm

            print(slurm.launch(cfg))
        else:
            from distgan.launcher import local

            print(local.launch(cfg, cuda))
    except KeyboardInterrupt:
        fail(f"interrupted; the last checkpoint in {run_dir / 'checkpoints'} is intact "
             "(run again with the same hydra.run.dir to resume)", 130)
    except Exception as e:  # noqa: BLE001 - one clear line, the traceback only on request
        if debug():
            raise
        cause = root_cause(e)
        if isinstance(cause, UserError):
            fail(str(cause))
        with open(run_dir / "train.log", "a") as f:  # the traceback for the curious, not the terminal
            traceback.print_exc(file=f)
        text = str(cause).strip().splitlines()
        fail(f"training failed: {type(cause).__name__}: {text[0][:300] if text else ''} "
             f"(details in {run_dir}/train.log; HYDRA_FULL_ERROR=1 for the traceback)", 1)
