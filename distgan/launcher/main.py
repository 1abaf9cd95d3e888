"""``distgan-train`` / ``python launch/run.py``: the command line is checked and pre-flighted
(precheck.py), Hydra composes the config and creates the run directory, and the chosen backend trains."""

from __future__ import annotations

import logging
import sys
import traceback

from omegaconf import DictConfig

from distgan.cli import debug, fail
from distgan.errors import UserError, first_line
from distgan.launcher.compose import CONFIG_DIR, register_schema, to_config
from distgan.rundir import RunDir

log = logging.getLogger("distgan")


def run(dcfg: DictConfig) -> None:
    """One training run (one point of a sweep), inside Hydra's app: Hydra made the run directory."""
    from hydra.core.hydra_config import HydraConfig

    from distgan.launcher.backends import backend
    from distgan.launcher.preflight import preflight, prepare_run_dir
    from distgan.launcher.ray_train import root_cause

    run_dir = RunDir(HydraConfig.get().runtime.output_dir)
    try:
        checked = preflight(to_config(dcfg, run_dir.path))  # done already by the pre-check for a single run
        prepare_run_dir(checked.cfg)
    except UserError as e:
        run_dir.discard_if_empty()
        if debug():
            raise
        fail(str(e))
    cfg = checked.cfg
    if checked.resume_note:
        print(checked.resume_note, flush=True)
        log.info(checked.resume_note)
    try:
        print(backend(cfg.cluster.name).launch(cfg, checked.cuda_devices))
    except KeyboardInterrupt:
        fail(f"interrupted; the last checkpoint in {run_dir.checkpoints} is intact "
             "(run again with the same hydra.run.dir to resume)", 130)
    except Exception as e:  # noqa: BLE001 - one clear line, the traceback only on request
        if debug():
            raise
        cause = root_cause(e)
        if isinstance(cause, UserError):
            fail(str(cause))
        with open(run_dir.log, "a") as f:  # the traceback for the curious, not the terminal
            traceback.print_exc(file=f)
        fail(f"training failed: {type(cause).__name__}: {first_line(cause)} "
             f"(details in {run_dir.log}; HYDRA_FULL_ERROR=1 for the traceback)", 1)


def cli() -> None:
    """The ``distgan-train`` console script (and ``launch/run.py``)."""
    import hydra

    from distgan.launcher.precheck import check_command_line

    sys.argv[1:] = check_command_line(sys.argv[1:])  # one-line errors and the pre-flight, before any folder
    register_schema()
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")(run)()
