"""Ray Train glue: the worker entry point, the per-run token, and ``fit()`` on a Ray cluster.

Used by the local launcher (Ray started in-process) and by the SLURM job (Ray head on task 0).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from distgan.config import Config, from_dict, to_dict
from distgan.files import temp_name, write_atomic
from distgan.launcher.backends import use_gpu, world_size
from distgan.rundir import RunDir

TOKEN_FILE = RunDir.TOKEN

# Ray for one run (one machine, or one SLURM allocation): what a training CLI does not use is off, because
# on a small machine every extra Python process costs ~1.5 CPU-s before the first step (docs/benchmarks.md).
RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # an actor watching for node drains (SLURM drains none)
           "RAY_TRAIN_METRICS_ENABLED": "0",  # Ray Train's Prometheus metrics (collection is off)
           # the controller's poll of the workers (Ray's default 2 s): a finished run was noticed up to two
           # polls late, ~3 s of every run's end on 2 cores; each poll is one small RPC per worker
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")}
# Ray pre-starts one idle worker per CPU; Ray Train's actors start their own processes and leave them idle.
RAY_SYSTEM_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def secure_ray_env(run_dir: Path) -> dict[str, str]:
    """Token authentication with a per-run token readable only by the user (set before Ray starts).

    Ray 2.60 turns token auth on by itself when ``~/.ray/auth_token`` exists and then refuses drivers
    without it, so the mode is always set explicitly."""
    path = RunDir(run_dir).token
    if not path.exists():  # written aside, then linked into place: no task ever reads half a token
        tmp = temp_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another task of the same job was first: use its token
        finally:
            tmp.unlink()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path),
           "RAY_TRAIN_V2_ENABLED": "1", "RAY_USAGE_STATS_ENABLED": "0",
           # the metrics agent and log-dedup noise are of no use to a training CLI
           "RAY_DEDUP_LOGS": "0", "RAY_enable_metrics_collection": "0"}
    os.environ.update(env)
    return env


def _worker_entry(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint
    from ray.train.v2.api.report_config import CheckpointUploadMode

    from distgan.train import Hooks, train_worker

    class RayHooks(Hooks):
        device = ray.train.torch.get_device()

        def report(self, metrics, checkpoint_dir):
            # Only checkpoint ticks go to Ray: each ray.train.report is a barrier that waits on the
            # controller's poll (RAY_ENV), and the curves already go to TensorBoard and metrics.jsonl.
            if not metrics.get("checkpointed"):
                return
            # The checkpoint already lies in the run's storage (run_dir/checkpoints): no copy.
            ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
            ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                             checkpoint=ckpt, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

    logging.basicConfig(level=logging.INFO)
    cfg = from_dict(config["cfg"])
    _record_placement(Path(cfg.run_dir), ray.train.get_context().get_world_rank())
    train_worker(cfg, RayHooks())


def _record_placement(run_dir: Path, rank: int) -> None:
    """``<run_dir>/workers/rank{r}.json``: where each rank runs (host, SLURM node, pid, Ray node address) and
    the addresses its gloo connections really use (``gloo_local``: this rank's, ``gloo_peers``: the other
    ranks'), for users and tests. A collective (the gloo probe): every rank calls it."""
    import json
    import socket

    import ray

    from distgan.launcher import network, recovery

    info = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_node": os.environ.get("SLURMD_NODENAME"), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "restart": recovery.restart_count(),
            "node_ip": ray.util.get_node_ip_address(), "gloo_interface": os.environ.get("GLOO_SOCKET_IFNAME"),
            **network.gloo_endpoints()}
    folder = RunDir(run_dir).workers
    folder.mkdir(exist_ok=True)
    write_atomic(folder / f"rank{rank}.json", json.dumps(info))


def torch_config(backend: str, one_machine: bool):
    """Ray Train's TorchConfig; on one machine (``cluster=local``), one whose workers meet through a file.

    Ray Train's own rendezvous is a c10d ``TCPStore`` hosted by rank 0, which listens on every interface
    whatever ``MASTER_ADDR`` says. The workers of a local run all share this machine's file system, so
    they rendezvous through a ``FileStore`` in a private (0700) temporary folder instead, and a local
    run opens no port beyond 127.0.0.1 (docs/promises.md, "Network exposure"). The process group set-up
    is Ray Train's own (``_setup_torch_process_group``, ``_set_torch_distributed_env_vars``: private
    functions of ray.train.torch.config); if a Ray release renames them, the TCPStore is used and a
    warning says so."""
    from ray.train.torch import TorchConfig

    if not one_machine:
        return TorchConfig(backend=backend)
    try:
        from ray.train.torch.config import (  # noqa: F401  (checked here, used in the workers)
            _set_torch_distributed_env_vars,
            _setup_torch_process_group,
            _TorchBackend,
        )
    except ImportError as e:
        logging.getLogger(__name__).warning("Ray Train's process-group set-up moved (%s): the workers meet "
                                            "through a TCPStore on every interface", e)
        return TorchConfig(backend=backend)
    return _file_store_config(TorchConfig)(backend=backend)


def _file_store_config(TorchConfig):
    """``TorchConfig`` whose backend starts the process group from a ``file://`` store (built lazily: Ray is
    imported only when a run starts)."""
    from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

    class FileStoreBackend(_TorchBackend):
        folder: Path | None = None

        def on_start(self, worker_group, backend_config) -> None:
            import tempfile

            import ray

            # 0700, a fresh store per start (a restarted worker group must not read the last one's keys); kept
            # until the group shuts down: the process group reads its store after set-up (NCCL's lazy init)
            self.folder = Path(tempfile.mkdtemp(prefix="distgan-rendezvous-"))
            worker_group.execute(_set_torch_distributed_env_vars)
            n = len(worker_group)
            ray.get([worker_group.execute_single_async(
                i, _setup_torch_process_group, backend=backend_config.backend, world_rank=i, world_size=n,
                init_method=f"file://{self.folder / 'store'}", timeout_s=backend_config.timeout_s)
                for i in range(n)])

        def on_shutdown(self, worker_group, backend_config) -> None:
            import shutil

            try:
                super().on_shutdown(worker_group, backend_config)
            finally:
                if self.folder is not None:
                    shutil.rmtree(self.folder, ignore_errors=True)

    class FileStoreTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return FileStoreBackend

    return FileStoreTorchConfig


def fit(cfg: Config, cuda_devices: int) -> None:
    """Run the TorchTrainer on the connected Ray cluster; raises on training failure."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Workers resume from distgan's own checkpoints/ (train_worker reads it). Ray's snapshot of an earlier
    # fit() in this run directory may list checkpoints that train.keep_checkpoints has deleted since, and
    # Ray then refuses to start ("corrupted run directory"): it holds nothing we need, so drop it.
    (RunDir(cfg.run_dir).checkpoints / "checkpoint_manager_snapshot.json").unlink(missing_ok=True)
    gpu = use_gpu(cfg, cuda_devices)
    resources = {"CPU": cfg.cluster.cpus_per_worker}
    if gpu:
        resources["GPU"] = 1
    trainer = _lean(TorchTrainer)(
        _worker_entry,
        train_loop_config={"cfg": to_dict(cfg)},
        torch_config=torch_config("nccl" if gpu else "gloo", one_machine=cfg.cluster.name == "local"),
        scaling_config=ScalingConfig(num_workers=world_size(cfg, cuda_devices), use_gpu=gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=RunDir.CHECKPOINTS, storage_path=cfg.run_dir,  # Ray's state beside our checkpoints
            checkpoint_config=CheckpointConfig(num_to_keep=None),  # retention: train.keep_checkpoints
            failure_config=FailureConfig(max_failures=cfg.cluster.max_failures),
        ),
    )
    trainer.fit()


# Default Ray Train callbacks that each start an actor (a Python process, ~1.5 CPU-s before the first step
# on a small machine) distgan has no use for: the Ray Data shard manager (no Ray Dataset is fed) and the
# detached placement-group cleaner (the run's Ray cluster ends with the run). docs/benchmarks.md, start-up.
UNUSED_RAY_TRAIN_CALLBACKS = ("DatasetsCallback", "PlacementGroupCleanerCallback")


def _lean(trainer_cls):
    class LeanTorchTrainer(trainer_cls):
        def _create_default_callbacks(self):  # private Ray Train API: if it goes, nothing is dropped
            return [cb for cb in super()._create_default_callbacks()
                    if type(cb).__name__ not in UNUSED_RAY_TRAIN_CALLBACKS]

    return LeanTorchTrainer


def run_in_thread(target, *args) -> tuple[threading.Thread, dict]:
    """Run ``target(*args)`` in a thread, keeping its exception for the caller."""
    box: dict[str, BaseException | None] = {"error": None}

    def body():
        try:
            target(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller
            box["error"] = e

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, box


def root_cause(error: BaseException) -> BaseException:
    """The worker's own exception inside Ray's wrappers (TrainingFailedError, RayTaskError …)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = None
        for attr in ("worker_failures", "cause", "__cause__"):
            value = getattr(error, attr, None)
            if isinstance(value, dict) and value:
                value = next(iter(value.values()))
            if isinstance(value, BaseException):
                inner = value
                break
        if inner is None:
            break
        error = inner
    return error
