"""When a SLURM job attempt ends early: the requeue budget, lost nodes, and the one line that says why.

What ``cluster.max_requeues`` counts. SLURM's restart count (``SLURM_RESTART_COUNT`` in the job,
``Restarts=`` in ``scontrol show job``) grows by one on every requeue, whatever caused it: submitit's
requeue at the time limit, ``scontrol requeue`` by an admin or a preempting scheduler, SLURM's own
requeue after a node failure, and distgan's requeue after a lost node. Every attempt checks it first:
the job runs at most ``1 + max_requeues`` times. submitit's own counter (``slurm_max_num_timeout``, set
to the same value) counts only the SIGUSR2 requeues it judges time-outs (after 80 % of the time limit),
so it never allows more than the restart count does.

Markers live in ``<run_dir>/slurm`` (shared storage): ``failed-<job>-<restart>.json`` holds the first
failure of an attempt as one line; the login node (``cluster.wait=true``) prints it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

from distgan.errors import UserError
from distgan.rundir import RunDir

log = logging.getLogger("distgan")
FAILED = "failed"


class RequeueBudgetError(UserError):
    """The job has been requeued ``cluster.max_requeues`` times already."""


def restart_count() -> int:
    """How often SLURM has requeued this job (0 on the first attempt)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def check_budget(max_requeues: int, run_dir: Path) -> None:
    """Refuse to run an attempt beyond ``1 + max_requeues``."""
    count = restart_count()
    if count > max_requeues:
        raise RequeueBudgetError(
            f"SLURM has requeued this job {count} time{'s' if count != 1 else ''}, more than "
            f"cluster.max_requeues={max_requeues}; the last "
            f"checkpoint in {RunDir(run_dir).checkpoints} is intact: submit again with the same hydra.run.dir to "
            "continue (or raise cluster.max_requeues)")


def budget_left(max_requeues: int) -> bool:
    return restart_count() < max_requeues


def requeue(job_id: str, reason: str) -> bool:
    """``scontrol requeue``: SLURM ends every task of this attempt (SIGTERM, then SIGKILL after KillWait)
    and runs the job again, on nodes it considers healthy, once they are free."""
    log.warning("requeueing SLURM job %s: %s", job_id, reason)
    try:
        out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("scontrol requeue %s failed: %s", job_id, e)
        return False
    if out.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job_id, out.stderr.strip())
    return out.returncode == 0


def marker(run_dir: Path, kind: str, job_id: str, restart: int | None = None) -> Path:
    return RunDir(run_dir).slurm / f"{kind}-{job_id}-{restart_count() if restart is None else restart}.json"


def record_failure(run_dir: Path, job_id: str, message: str, **extra) -> bool:
    """Record why this attempt fails (the first task to fail wins); True if this call wrote it."""
    path = marker(run_dir, FAILED, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = " ".join(str(message).split())  # one line, whatever the exception's text was
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"message": line, "node": os.environ.get("SLURMD_NODENAME"), **extra}, f)
    return True


def read_failure(run_dir: Path, job_id: str, restart: int | None = None) -> dict | None:
    """The failure record of attempt ``restart``, or (``restart`` None) of the newest attempt that has one."""
    if restart is not None:
        paths = [marker(run_dir, FAILED, job_id, restart)]
    else:
        paths = sorted(RunDir(run_dir).slurm.glob(f"{FAILED}-{job_id}-*.json"),
                       key=lambda p: int(p.stem.rsplit("-", 1)[1]), reverse=True)
    for path in paths:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def ray_failure_env(node_failure_timeout_s: float) -> dict[str, str]:
    """Ray settings that declare a silent node dead well within ``node_failure_timeout_s``.

    The GCS health-checks every raylet; a node fails after ``threshold`` checks in a row that time out
    (a partitioned node) or are refused (its processes died): at most ``threshold * (period + timeout)``.
    A raylet that loses the GCS (the head's node died) exits after ``gcs_rpc_server_reconnect_timeout_s``.
    Both use about half the budget, the rest is for Ray Train to fail the worker group and for distgan to
    requeue."""
    budget_ms = max(int(node_failure_timeout_s * 1000), 10_000)
    threshold = 3
    per_check = budget_ms // 2 // threshold  # period + timeout
    period = max(min(3000, per_check // 3), 500)
    timeout = max(min(10_000, per_check - period), 1000)
    return {"RAY_health_check_initial_delay_ms": "2000", "RAY_health_check_period_ms": str(period),
            "RAY_health_check_timeout_ms": str(timeout), "RAY_health_check_failure_threshold": str(threshold),
            "RAY_gcs_rpc_server_reconnect_timeout_s": str(max(budget_ms // 2000, 5))}


def lost_node_message(node: str, address: str, job_id: str, step: int | None, outcome: str, max_requeues: int,
                      run_dir: Path) -> str:
    """The line for a lost node; ``outcome``: ``requeued``, ``spent`` (no requeue left) or ``refused``
    (``scontrol requeue`` failed, e.g. a job submitted without ``--requeue`` on a site with JobRequeue=0)."""
    at = f" at step {step}" if step is not None else ""
    head, ckpt = f"node {node} ({address}) of SLURM job {job_id} was lost{at}", RunDir(run_dir).checkpoints
    if outcome == "requeued":
        return (f"{head}; the job is requeued (restart {restart_count() + 1} of cluster.max_requeues={max_requeues}) "
                f"and resumes from the last checkpoint in {ckpt}")
    why = (f"cluster.max_requeues={max_requeues} spent" if outcome == "spent" else
           f"scontrol requeue {job_id} failed: is the job requeueable (sbatch --requeue)?")
    return (f"{head}; not requeued ({why}): the last checkpoint in {ckpt} is intact, submit again with the same "
            "hydra.run.dir to resume")


def last_step(run_dir: Path) -> int | None:
    """The last step the run logged (the progress file's last line), for messages."""
    path = RunDir(run_dir).metrics
    try:
        with open(path, "rb") as f:
            f.seek(max(path.stat().st_size - 65536, 0))
            lines = [line for line in f.read().splitlines() if line.strip()]
        return int(json.loads(lines[-1])["step"]) if lines else None
    except (OSError, ValueError, KeyError, IndexError):
        return None
