"""cluster=local: start Ray in this process and run the TorchTrainer on this machine."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from distgan.config import Config
from distgan.files import write_atomic
from distgan.launcher import watcher_actor
from distgan.launcher.backends import world_size
from distgan.launcher.progress import follow, summary
from distgan.launcher.ray_train import RAY_ENV, RAY_SYSTEM_CONFIG, fit, run_in_thread, secure_ray_env
from distgan.rundir import RunDir


# Every Ray port on 127.0.0.1 (GCS, raylet, object manager, each worker's gRPC server, the runtime-env
# agent). Ray 2.60's servers listen on all interfaces unless the node address is 127.0.0.1, and ray.init
# replaces a given 127.0.0.1 (_node_ip_address) by the routable address; with this switch off (read when
# ray is imported) Ray takes the loopback address as the node's, as it does by default on macOS and
# Windows. A single-machine run needs no other address: its workers are all here.
#
# gloo and NCCL pick their interface from the host name, which on a laptop resolves to its LAN address: on
# one machine they are told the loopback interface (unless the user chose one). torch.distributed's
# rendezvous is a file here, not a TCPStore (ray_train.torch_config).
def loopback_env() -> dict[str, str]:
    """The environment of a one-machine Ray cluster, set before Ray is imported."""
    import socket

    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    names = {name for _, name in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else set()
    loopback = next((n for n in ("lo", "lo0") if n in names), None)
    if loopback:
        env.update({k: os.environ.get(k, loopback) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")})
    return env


def launch(cfg: Config, cuda_devices: int) -> str:
    """Train to the end, showing progress; returns the summary text. Raises what the workers raised."""
    run_dir = Path(cfg.run_dir)
    secure_ray_env(run_dir)  # before Ray is imported: it reads the auth mode once
    os.environ.update({**RAY_ENV, **loopback_env()})
    import ray

    needed = world_size(cfg, cuda_devices) * cfg.cluster.cpus_per_worker
    ray.init(num_cpus=max(os.cpu_count() or 1, needed), num_gpus=cuda_devices,
             include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True, _system_config=RAY_SYSTEM_CONFIG)
    terminated = _stop_on_sigterm(RunDir(run_dir), cfg.cluster.term_grace_s)  # after ray.init: it sets its own
    note = None
    try:
        # train.eval_mode=async: the evaluator scores checkpoints beside the trainer (distgan/launcher/watcher_actor.py)
        evaluator = watcher_actor.start(cfg, cuda_devices) if watcher_actor.wanted(cfg) else None
        thread, box = run_in_thread(fit, cfg, cuda_devices)
        last = follow(run_dir, cfg.train.steps, done=lambda: not thread.is_alive())
        thread.join()
        if evaluator is not None:
            note = watcher_actor.finish(evaluator, run_dir, training_ok=box["error"] is None)
    except KeyboardInterrupt:
        if terminated:
            raise Terminated(None) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        ray.shutdown()
    if box["error"] is not None:
        raise box["error"]
    text = summary(run_dir, last) + (f"\n{note}" if note else "")
    if terminated:
        raise Terminated(text)
    return text


class Terminated(Exception):  # noqa: N818 - not an error: how the run ended
    """The run ended on SIGTERM: ``summary`` after the checkpoint the stop request made, None when no log tick
    came within ``cluster.term_grace_s`` (the run then stopped at once, its last checkpoint intact)."""

    def __init__(self, summary: str | None):
        super().__init__("stopped by SIGTERM")
        self.summary = summary


def _stop_on_sigterm(run_dir: RunDir, grace_s: int) -> list[float]:
    """SIGTERM (``kill``, a container stop) ends a local run as cleanly as Ctrl-C, and better: a stop request
    that every rank honours at the next log tick with a checkpoint. If none comes within ``grace_s`` (or at a
    second SIGTERM), the run stops at once like Ctrl-C. Returns the list that records the signal's arrival."""
    arrived: list[float] = []

    def on_term(signum, frame):
        if arrived:
            raise KeyboardInterrupt
        arrived.append(time.time())
        write_atomic(run_dir.stop_file, "SIGTERM")
        timer = threading.Timer(grace_s, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_term)
    return arrived
