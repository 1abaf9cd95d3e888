"""``distgan-train`` / ``python launch/run.py``: the command line is checked and pre-flighted
(command_line.py, preflight.py), Hydra composes the config and creates the run directory, and the chosen
cluster's launcher trains (local.py: Ray on this machine; slurm.py: a submitit job). Also the entry of a
plain sbatch job (:func:`run_in_allocation`, launch/slurm_allocation.py)."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback

from omegaconf import DictConfig

from distgan.cli import debug, fail
from distgan.compose import CONFIG_DIR, quote_search_spaces, register_schema, to_config
from distgan.config import Config
from distgan.errors import UserError, first_line
from distgan.rundir import RunDir

log = logging.getLogger("distgan")


def run(dcfg: DictConfig) -> None:
    """One training run (one point of a sweep), inside Hydra's app: Hydra made the run directory."""
    from hydra.core.hydra_config import HydraConfig

    from distgan.launcher.preflight import preflight, prepare_run_dir, startup_summary
    from distgan.launcher.ray_train import root_cause

    run_dir = RunDir(HydraConfig.get().runtime.output_dir)
    hold = contextlib.ExitStack()
    try:
        checked = preflight(to_config(dcfg, run_dir.path))  # done already by the pre-check for a single run
        if checked.cfg.cluster.name == "local":
            hold.enter_context(run_dir.lock())  # one run per folder, for this run's life
        else:
            run_dir.check_unlocked()  # the SLURM job's first task holds it while it trains
        prepare_run_dir(checked.cfg)
    except UserError as e:
        run_dir.discard_if_empty()
        if debug():
            raise
        fail(str(e))
    cfg = checked.cfg
    if cfg.tune.name != "none":  # a search: a trial's summary and the search's line
        from distgan.launcher import tune

        print(tune.startup(checked, startup_summary), flush=True)
    else:
        print(startup_summary(checked), flush=True)
    if checked.resume_note:
        print(checked.resume_note, flush=True)
        log.info(checked.resume_note)
    from distgan.launcher.local import Terminated

    with hold:
        try:
            print(_launch(cfg, checked.cuda_devices))
        except Terminated as t:
            if t.summary is None:
                fail(f"SIGTERM: no checkpoint within cluster.term_grace_s={cfg.cluster.term_grace_s}; the last "
                     f"checkpoint in {run_dir.checkpoints} is intact (run again with the same hydra.run.dir to "
                     "resume)", 143)
            print(t.summary)
            from distgan import checkpoint

            fail(f"stopped by SIGTERM: checkpoint {checkpoint.newest(run_dir.checkpoints)} saved (run again with "
                 "the same hydra.run.dir to resume)", 143)
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


def _launch(cfg: Config, cuda_devices: int) -> str:
    """Train (cluster=local) or submit (cluster=slurm) the checked run; returns what to print. A search
    (``tune=``) runs its trials in this Ray cluster (local) or in the job's (slurm: task 0 runs it)."""
    if cfg.cluster.name == "slurm":
        from distgan.launcher import slurm

        return slurm.launch(cfg)
    if cfg.tune.name != "none":
        from distgan.launcher import tune

        return tune.launch(cfg, cuda_devices)
    from distgan.launcher import local

    return local.launch(cfg, cuda_devices)


def run_in_allocation(argv: list[str]) -> None:
    """``srun python launch/slurm_allocation.py hydra.run.dir=DIR [overrides]`` in every task of a plain
    sbatch job (slurm/ray_cluster.sbatch): the same job without submitit's submission or requeue."""
    import submitit

    from distgan.compose import load_config
    from distgan.launcher.preflight import preflight, prepare_run_dir
    from distgan.launcher.slurm_job import SlurmJob

    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), None)
    if not run_dir:
        raise UserError("pass hydra.run.dir=/shared/path/run (on storage every node sees)")
    cfg = preflight(load_config(["cluster=slurm", *[a for a in argv if not a.startswith("hydra.")]], run_dir)).cfg
    if submitit.JobEnvironment().global_rank == 0:
        prepare_run_dir(cfg)
    print(SlurmJob(cfg)())


def cli() -> None:
    """The ``distgan-train`` console script (and ``launch/run.py``)."""
    import hydra

    from distgan.launcher.command_line import check_command_line

    # tune.params' choice(..)/loguniform(..) as strings: Hydra's grammar would call them (distgan/compose.py)
    sys.argv[1:] = check_command_line(quote_search_spaces(sys.argv[1:]))  # one-line errors and the pre-flight
    register_schema()
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")(run)()
