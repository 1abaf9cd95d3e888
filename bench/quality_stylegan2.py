"""StyleGAN2 and R3GAN on 2 CPU cores against the default DCGAN, each trained for the same wall-clock time
through the real CLI (``launch/run.py``, the default 2 Ray workers), then scored in one feature space.

    python bench/quality_stylegan2.py                 # 10 minutes each (~35 min with the scoring)
    python bench/quality_stylegan2.py --minutes 2 --num-samples 2000    # a shorter look
    python bench/quality_stylegan2.py --models r3gan,dcgan               # any of stylegan2,r3gan,dcgan

Each run gets a large ``train.steps``; ``--minutes`` after the command started, the benchmark writes the
run directory's STOP file, so the loop checkpoints at its next log tick and exits (the same request the
SLURM time limit uses). Every model trains on Fashion-MNIST at 32 px (StyleGAN2 and R3GAN need a power of
two; ``experiment=r3gan_fmnist32`` keeps its schedules, which are over images, not steps; the DCGAN is the
default job's — width 16, BatchNorm in D, Adam 5e-4, G_ema 5 kimg — at 32 px instead of 28 so that all are
scored by the same classifier). Scores: distgan's classifier features (docs/evaluation.md: comparable between
these runs, not with papers) on ``--num-samples`` G_ema samples.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from distgan.cli import load_generator
from distgan.data import locate
from distgan.metrics import Evaluator
from distgan.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "stylegan2": ["experiment=stylegan2_fmnist32"],
    "r3gan": ["experiment=r3gan_fmnist32"],
    "dcgan": ["dataset.resolution=32"],  # the default job (configs/config.yaml), at 32 px
}


def train_for(name: str, overrides: list[str], seconds: float, run_dir: Path) -> dict:
    """Run launch/run.py until ``seconds`` after the command started, then ask it to stop."""
    cmd = [sys.executable, str(ROOT / "launch" / "run.py"), *overrides, "train.steps=10000000",
           "train.log_every=50", "train.sample_every=1000", "train.checkpoint_every=1000000",
           f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and time.perf_counter() - start < seconds:
        time.sleep(1)
    RunDir(run_dir).stop_file.write_text("benchmark time budget")
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: launch/run.py exited with {proc.returncode}: {err.strip()[-800:]}")
    last = json.loads(RunDir(run_dir).metrics.read_text().splitlines()[-1])
    return {"wall_s": time.perf_counter() - start, "steps": last["step"], "img_s": last["img_per_sec"]}


def score(run_dir: Path, num_samples: int) -> tuple[dict, dict]:
    G, cfg, state = load_generator(str(run_dir))
    cfg.dataset = locate(cfg.dataset)
    evaluator = Evaluator(cfg, torch.device("cpu"), num_samples=num_samples, seed=0)
    return evaluator(G), evaluator.info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock training time of each model")
    p.add_argument("--num-samples", type=int, default=10000, help="G_ema samples scored per model")
    p.add_argument("--keep", help="keep the run directories under this folder (default: a temporary one)")
    p.add_argument("--models", default="stylegan2,r3gan,dcgan")
    args = p.parse_args()
    torch.set_num_threads(2)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="distgan-quality-sg2-"))
    results = {}
    for name in args.models.split(","):
        run_dir = base / name
        trained = train_for(name, RUNS[name], args.minutes * 60, run_dir)
        scores, info = score(run_dir, args.num_samples)
        results[name] = {**trained, **scores, "images": trained["steps"] * 64}
        grid = sorted(RunDir(run_dir).samples.glob("*.png"))[-1]
        print(f"{name}: {trained['steps']} steps ({trained['steps'] * 64 / 1000:.0f} kimg) in "
              f"{trained['wall_s']:.0f} s, FD {scores['fd']:.2f}; grid {grid}", flush=True)
    print(f"\nFashion-MNIST 32 px, {args.minutes:g} min each through launch/run.py (2 CPU workers); classifier "
          f"features (test accuracy {info['test_accuracy']:.4f}), {args.num_samples} G_ema samples vs 10,000 real")
    names = list(results)
    keys = ["steps", "images", "img_s", "fd", "kid", "precision", "recall", "class_coverage"]
    print(f"{'':<16}" + "".join(f"{n:>14}" for n in names))
    for k in keys:
        print(f"{k:<16}" + "".join(f"{results[n][k]:>14.4f}" if isinstance(results[n][k], float)
                                    else f"{results[n][k]:>14}" for n in names))
    print(f"run directories: {base}")


if __name__ == "__main__":
    main()
