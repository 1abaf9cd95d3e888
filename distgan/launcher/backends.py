"""Where the DDP workers run: one entry per ``cluster=`` option with its rules, its world size and its
site checks. Imports neither torch nor Ray nor submitit, nor the launchers (distgan/launcher/local.py,
slurm.py): the pre-flight uses these rules before anything starts, and main.py picks the launcher.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from distgan.config import ClusterConfig, Config, _positive
from distgan.errors import UserError

_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass(frozen=True)
class Backend:
    check: Callable[[Config, int], None]  # (cfg, CUDA devices here) -> UserError on a bad cluster setting
    world_size: Callable[[Config, int], int]  # DDP workers of the run
    use_gpu: Callable[[Config, int], bool]
    local_gpus: bool  # whether the GPUs are this machine's (the driver counts them) or the nodes'
    check_environment: Callable[[Config], None] = lambda cfg: None  # site checks before anything starts


# ------------------------------------------------------------------------------------------- local
def _local_use_gpu(cfg: Config, cuda_devices: int) -> bool:
    c = cfg.cluster
    return bool(cuda_devices) if c.use_gpu is None else bool(c.use_gpu)


def _local_world_size(cfg: Config, cuda_devices: int) -> int:
    if cfg.cluster.num_workers is not None:
        return cfg.cluster.num_workers
    return cuda_devices if _local_use_gpu(cfg, cuda_devices) and cuda_devices else 2


def _local_check(cfg: Config, cuda_devices: int) -> None:
    if cfg.cluster.num_workers is not None:
        _positive("cluster.num_workers", cfg.cluster.num_workers)
    workers = _local_world_size(cfg, cuda_devices)
    if _local_use_gpu(cfg, cuda_devices) and workers > cuda_devices:
        raise UserError(f"cluster.num_workers={workers} asks for more GPUs than the {cuda_devices} present; "
                        f"set cluster.num_workers<={cuda_devices} or cluster.use_gpu=false")


# ------------------------------------------------------------------------------------------- slurm
def workers_per_node(c: ClusterConfig) -> int:
    """DDP workers on each SLURM node: one per GPU, else ``cluster.workers_per_node``."""
    return c.gpus_per_node or c.workers_per_node


def _slurm_check(cfg: Config, cuda_devices: int) -> None:
    c = cfg.cluster
    for name in ("nodes", "cpus_per_task", "timeout_min", "workers_per_node"):
        _positive(f"cluster.{name}", getattr(c, name))
    for name in ("gpus_per_node", "max_requeues"):
        if getattr(c, name) < 0:
            raise UserError(f"cluster.{name} must be >= 0, got {getattr(c, name)}")
    if c.node_failure_timeout_s < 10:
        raise UserError(f"cluster.node_failure_timeout_s must be >= 10, got {c.node_failure_timeout_s}")
    _check_port_range(c.port_range, c.nodes)
    time = c.additional_parameters.get("time")
    if time is not None and not _SLURM_TIME.match(str(time)):
        raise UserError(f"malformed SLURM time {time!r}; use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS")


_PORT_RANGE = re.compile(r"^(\d+)-(\d+)$")
PORTS_PER_NODE = 32  # Ray's eight services and its worker processes (distgan/launcher/network.py)


def _check_port_range(port_range: str | None, nodes: int) -> None:
    if port_range is None:
        return
    m = _PORT_RANGE.match(str(port_range))
    lo, hi = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
    if not m or not 1024 <= lo <= hi <= 65535:
        raise UserError(f"cluster.port_range must be LO-HI with 1024 <= LO <= HI <= 65535, got {port_range!r}")
    if (hi - lo + 1) // nodes < PORTS_PER_NODE:
        raise UserError(f"cluster.port_range={port_range} holds {hi - lo + 1} ports; {nodes} node(s) need at "
                        f"least {PORTS_PER_NODE} each: use a range of {PORTS_PER_NODE * nodes} or more")


def _slurm_check_environment(cfg: Config) -> None:
    """Fail before submission: no SLURM client tools, or a partition the cluster does not have."""
    if shutil.which("sbatch") is None:
        raise UserError("sbatch not found: cluster=slurm must run on a SLURM login node (or use cluster=local)")
    if cfg.cluster.partition:
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(f"cannot ask SLURM for its partitions (sinfo: {e}); is slurmctld reachable?") from None
        partitions = sorted(set(out.stdout.split()))
        if out.returncode == 0 and cfg.cluster.partition not in partitions:
            raise UserError(f"no such partition {cfg.cluster.partition!r}; this cluster has: {', '.join(partitions)}")


BACKENDS: dict[str, Backend] = {
    "local": Backend(_local_check, _local_world_size, _local_use_gpu, local_gpus=True),
    "slurm": Backend(_slurm_check, lambda cfg, _: cfg.cluster.nodes * workers_per_node(cfg.cluster),
                     lambda cfg, _: cfg.cluster.gpus_per_node > 0, local_gpus=False,
                     check_environment=_slurm_check_environment),
}


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"unknown cluster {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def world_size(cfg: Config, cuda_devices: int = 0) -> int:
    return backend(cfg.cluster.name).world_size(cfg, cuda_devices)


def use_gpu(cfg: Config, cuda_devices: int = 0) -> bool:
    return backend(cfg.cluster.name).use_gpu(cfg, cuda_devices)


def cuda_devices_for(cfg: Config) -> int:
    """The CUDA devices a run can use from this process: this machine's for cluster=local, none counted
    here for clusters whose nodes bring their own. Without GPU device nodes torch would find none: then
    it is not imported (~2 s), so a mistyped setting is answered at once."""
    if not backend(cfg.cluster.name).local_gpus or not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
