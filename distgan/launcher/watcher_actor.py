"""cluster=local with ``train.eval_mode=async``: the evaluator as a Ray actor beside the TorchTrainer.

The actor runs :func:`distgan.metrics.watcher.score_run` on the run directory: it scores each
evaluation checkpoint the trainer queues, while the workers go on training. It asks Ray for no CPU and
no GPU, so it can never keep the workers' placement group from being placed (Ray's resources are
bookkeeping, not limits); instead it takes the cores the workers leave free (at least one thread), at a
lower scheduling priority (``nice`` 10) so that on a full machine the workers win, and on a GPU machine
it shares the last GPU (Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` alone for actors that ask for none).

When training ends the driver calls :meth:`EvaluatorActor.finish` and waits, with a line saying so, until the
remaining checkpoints are scored; a failed training run stops the actor at once (the queue stays, and
``python launch/evaluate.py watch=RUN_DIR`` scores it later).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from distgan.config import Config, from_dict, to_dict
from distgan.launcher.backends import use_gpu, world_size
from distgan.rundir import RunDir

POLL_S = 2.0  # the actor looks for new checkpoints this often (a local directory: cheap)


class EvaluatorActor:
    """The actor's body (``ray.remote`` is applied in :func:`start`, so importing this needs no Ray)."""

    def __init__(self, cfg: dict, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        try:
            os.nice(10)  # training first when cores are short
        except OSError:
            pass
        self.cfg, self.device = from_dict(cfg), device
        self.finished = threading.Event()

    def run(self) -> int:
        from distgan.cli import load_generator
        from distgan.metrics.watcher import score_run

        return score_run(self.cfg.run_dir, self.cfg, device=self.device, poll_s=POLL_S,
                         stop_when=self.finished.is_set, log=lambda line: None, load_generator=load_generator)

    def finish(self) -> None:
        """Training has ended: score what is left, then return from :meth:`run`."""
        self.finished.set()


def wanted(cfg: Config) -> bool:
    return cfg.train.eval_mode == "async" and cfg.train.eval_every > 0


def start(cfg: Config, cuda_devices: int):
    """Start the actor on the connected Ray cluster: (actor, the ObjectRef of its run)."""
    import ray

    RunDir(cfg.run_dir).done_file.unlink(missing_ok=True)  # a finished run continued: not done yet
    gpu = use_gpu(cfg, cuda_devices)
    device = f"cuda:{cuda_devices - 1}" if gpu else "cpu"
    threads = max(1, (os.cpu_count() or 1) - world_size(cfg, cuda_devices) * cfg.cluster.cpus_per_worker)
    actor = ray.remote(num_cpus=0, num_gpus=0, max_concurrency=2)(EvaluatorActor).remote(to_dict(cfg), device, threads)
    return actor, actor.run.remote()


def pending(run_dir: str | Path) -> int:
    from distgan import checkpoint
    from distgan.metrics.watcher import QUEUE

    return len(checkpoint.list_checkpoints(RunDir(run_dir).checkpoints / QUEUE))


def finish(handle, run_dir: str | Path, training_ok: bool) -> str | None:
    """After training: wait for the evaluator to score the rest (training succeeded or was stopped), or
    stop it (training failed). Returns a line for the summary."""
    import ray

    actor, ref = handle
    scores = RunDir(run_dir).scores
    if not training_ok:
        ray.kill(actor)
        return None
    print(f"training done; waiting for the evaluator to score {pending(run_dir)} remaining checkpoint(s) "
          f"(Ctrl-C stops it; python launch/evaluate.py watch={run_dir} resumes)", flush=True)
    actor.finish.remote()
    try:
        ray.get(ref)
    except Exception as e:  # noqa: BLE001 - the actor's own error, whatever it is: training is not lost
        from distgan.errors import first_line
        from distgan.launcher.ray_train import root_cause

        cause = root_cause(e)
        return (f"warning: the evaluator failed ({type(cause).__name__}: {first_line(cause, 200)}); "
                f"score the rest with python launch/evaluate.py watch={run_dir}")
    from distgan import checkpoint

    best = checkpoint.read_meta(RunDir(run_dir).checkpoints / checkpoint.BEST)
    shown = " ".join(f"{k}={v:.4g}" for k, v in (best.get("scores") or {}).items() if isinstance(v, (int, float)))
    return f"scores        : {scores}" + (f"  (best: step {best['step']} {shown})" if best else "")
