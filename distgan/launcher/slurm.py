"""cluster=slurm, the login-node side: submit one job (one task per node) with submitit; the job runs a
Ray cluster.

:func:`launch` (the site — sbatch, partition — was checked by the pre-flight): write the per-run Ray
token, submit, print where everything goes, and either return or (``cluster.wait=true``) follow the job
to its end.
(The same job started by a plain sbatch script instead: distgan.launcher.main.run_in_allocation.)
Inside the job every task runs :class:`distgan.launcher.slurm_job.SlurmJob`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from distgan.config import Config
from distgan.errors import UserError
from distgan.launcher import recovery
from distgan.launcher.progress import follow, summary
from distgan.launcher.ray_train import secure_ray_env
from distgan.rundir import RunDir

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED")


def executor_parameters(cfg: Config) -> dict:
    """submitit parameters for one task per node (each task is one Ray node)."""
    c = cfg.cluster
    params = {
        "name": f"distgan-{Path(cfg.run_dir).name}",
        "nodes": c.nodes,
        "tasks_per_node": 1,
        "cpus_per_task": c.cpus_per_task,
        "timeout_min": c.timeout_min,
        "slurm_signal_delay_s": c.signal_delay_s,
        "slurm_setup": list(c.setup),
        # requeueable whatever the site's JobRequeue default: SLURM then requeues the job itself when one of
        # its nodes fails (slurm/README.md, "A node that dies")
        "slurm_additional_parameters": {"requeue": True, **dict(c.additional_parameters)},
        "stderr_to_stdout": True,
    }
    if c.gpus_per_node:
        params["gpus_per_node"] = c.gpus_per_node
    if c.mem_gb:
        params["mem_gb"] = c.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(c, key):
            params[f"slurm_{key}"] = getattr(c, key)
    return params


def job_state(job_id: str) -> str:
    """The job's state from squeue (live jobs) or scontrol (recently ended); works without accounting."""
    for cmd in (["squeue", "-h", "-j", job_id, "-o", "%T"], ["scontrol", "show", "job", job_id, "-o"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if cmd[0] == "squeue" and out:
            return out.splitlines()[0]
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
    return "UNKNOWN"


def job_restarts(job_id: str) -> int:
    """SLURM's restart count of the job (what ``cluster.max_requeues`` is checked against)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    field = next((f for f in out.split() if f.startswith("Restarts=")), "Restarts=0")
    return int(field.split("=", 1)[1] or 0)


def failure_line(run_dir: Path, job_id: str, final: str, log_file: Path) -> str:
    """Why the job ended ``final``: the first failing task's own line if one was recorded."""
    record = recovery.read_failure(run_dir, job_id)  # the newest attempt's (SLURM may have forgotten the job)
    if record is None:
        return f"SLURM job {job_id} ended {final}; see {log_file}"
    return f"SLURM job {job_id} ended {final}: {record['message']} (log: {log_file})"


def launch(cfg: Config) -> str:
    import submitit

    from distgan.launcher.slurm_job import SlurmJob

    run_dir = RunDir(cfg.run_dir)
    folder = Path(cfg.cluster.folder or run_dir.slurm)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # submitit keeps the pickled job (the run's config) here: the user's alone, like the token
    secure_ray_env(run_dir.path)  # the token file, on shared storage, before any task starts
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm",
                                     slurm_max_num_timeout=cfg.cluster.max_requeues)
    executor.update_parameters(**executor_parameters(cfg))
    try:
        job = executor.submit(SlurmJob(cfg))
    except (subprocess.CalledProcessError, FileNotFoundError, RuntimeError) as e:
        detail = getattr(e, "stderr", None) or getattr(e, "output", None) or str(e)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        lines = [line for line in str(detail).splitlines() if line.strip()]
        raise UserError(f"sbatch refused the job: {lines[-1] if lines else e}") from None
    info = (f"submitted SLURM job {job.job_id} ({cfg.cluster.nodes} node(s))\n"
            f"logs          : {folder}/{job.job_id}_0_log.out (task 0: Ray head + driver)\n"
            f"run directory : {run_dir}\n"
            f"tensorboard   : tensorboard --logdir {run_dir.tb}\n"
            f"follow        : squeue -j {job.job_id}; tail -f {run_dir.log}")
    if not cfg.cluster.wait:
        return info
    print(info, flush=True)
    state = {"value": "PENDING", "checked": 0.0, "restarts": 0}

    def current() -> str:
        if time.monotonic() - state["checked"] > 5:
            state["value"], state["checked"] = job_state(str(job.job_id)), time.monotonic()
            if state["value"] in ("PENDING", "REQUEUED", "COMPLETING") or state["restarts"]:
                state["restarts"] = job_restarts(str(job.job_id))
        return state["value"]

    def status() -> str:
        requeued = f", requeued {state['restarts']}x" if state["restarts"] else ""
        return f"job {job.job_id} {current().lower()}{requeued}"

    last = follow(run_dir.path, cfg.train.steps, done=lambda: current() in TERMINAL, status=status, poll_s=2.0)
    final = current()
    if final != "COMPLETED":
        raise UserError(failure_line(run_dir.path, str(job.job_id), final, folder / f"{job.job_id}_0_log.out"))
    return summary(run_dir.path, last)
