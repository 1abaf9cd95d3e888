"""cluster=local: start Ray in this process and run the TorchTrainer on this machine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from distgan.config import Config, world_size
from distgan.launcher.common import follow, summary
from distgan.launcher.ray_train import fit, run_in_thread, secure_ray_env


def launch(cfg: Config, cuda_devices: int) -> str:
    """Train to the end, showing progress; returns the summary text. Raises what the workers raised."""
    run_dir = Path(cfg.run_dir)
    secure_ray_env(run_dir)  # before Ray is imported: it reads the auth mode once
    import ray

    needed = world_size(cfg, cuda_devices=cuda_devices) * cfg.cluster.cpus_per_worker
    ray.init(num_cpus=max(os.cpu_count() or 1, needed), num_gpus=cuda_devices,
             include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    try:
        thread, box = run_in_thread(fit, cfg, cuda_devices)
        last = follow(run_dir, cfg.train.steps, done=lambda: not thread.is_alive())
        thread.join()
    finally:
        ray.shutdown()
    if box["error"] is not None:
        raise box["error"]
    return summary(run_dir, last)
