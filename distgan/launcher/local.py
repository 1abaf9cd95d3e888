"""cluster=local: start Ray in this process and run the TorchTrainer on this machine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from distgan.config import Config
from distgan.launcher import watcher_actor
from distgan.launcher.backends import world_size
from distgan.launcher.progress import follow, summary
from distgan.launcher.ray_train import RAY_ENV, RAY_SYSTEM_CONFIG, fit, run_in_thread, secure_ray_env


def launch(cfg: Config, cuda_devices: int) -> str:
    """Train to the end, showing progress; returns the summary text. Raises what the workers raised."""
    run_dir = Path(cfg.run_dir)
    secure_ray_env(run_dir)  # before Ray is imported: it reads the auth mode once
    os.environ.update(RAY_ENV)
    import ray

    needed = world_size(cfg, cuda_devices) * cfg.cluster.cpus_per_worker
    ray.init(num_cpus=max(os.cpu_count() or 1, needed), num_gpus=cuda_devices,
             include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True, _system_config=RAY_SYSTEM_CONFIG)
    note = None
    try:
        # train.eval_mode=async: the evaluator scores checkpoints beside the trainer (distgan/launcher/watcher_actor.py)
        evaluator = watcher_actor.start(cfg, cuda_devices) if watcher_actor.wanted(cfg) else None
        thread, box = run_in_thread(fit, cfg, cuda_devices)
        last = follow(run_dir, cfg.train.steps, done=lambda: not thread.is_alive())
        thread.join()
        if evaluator is not None:
            note = watcher_actor.finish(evaluator, run_dir, training_ok=box["error"] is None)
    finally:
        ray.shutdown()
    if box["error"] is not None:
        raise box["error"]
    return summary(run_dir, last) + (f"\n{note}" if note else "")
