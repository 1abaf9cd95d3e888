"""GPU throughput of distgan: DCGAN at 64 px, global batch 256, one GPU, fp32 eager against bf16 (+ compile).

    python bench/throughput_gpu.py                  # needs CUDA; results go to docs/benchmarks.md
    python bench/throughput_gpu.py --rounds 5 --json gpu.json

On CUDA distgan always runs conv models channels_last (``distgan.step.accelerate``), so the variants are:
  fp32          train.precision=fp32                    (TF32 off: PyTorch's default for matmuls)
  bf16          train.precision=bf16                    (autocast; fp32 master weights and gradients)
  bf16+compile  train.precision=bf16 train.compile=true (torch.compile of G and D; the first ticks compile)
Each variant is a fresh process, the variants alternate within a round (then in reverse), steady-state
img/s is timed between log ticks after a warm-up (the tick reads the stats back: the only host sync),
exactly as bench/throughput.py does on CPU. Peak GPU memory comes from torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from throughput import distgan_config, in_processes, steady_rate  # bench/throughput.py, beside this file

VARIANTS = {"fp32": ("train.precision=fp32",), "bf16": ("train.precision=bf16",),
            "bf16+compile": ("train.precision=bf16", "train.compile=true")}


def gpu_worker(cfg) -> dict:
    import time

    import torch

    from distgan.train import Hooks, train_worker

    class Timing(Hooks):
        def __init__(self):
            self.times: list[float] = []

        def report(self, metrics, checkpoint_dir):
            self.times.append(time.perf_counter())

    hooks = Timing()
    train_worker(cfg, hooks)
    cuda = torch.cuda.is_available()
    return {"times": hooks.times, "gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
            "device": torch.cuda.get_device_name() if cuda else "CPU"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=64, help="image size (Fashion-MNIST resized)")
    p.add_argument("--tick", type=int, default=20, help="steps per log tick")
    p.add_argument("--warm", type=int, default=3, help="untimed ticks (compilation happens here)")
    p.add_argument("--measure", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json")
    p.add_argument("--allow-cpu", action="store_true", help="plumbing check without a GPU: numbers meaningless")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("error: bench/throughput_gpu.py needs a CUDA GPU")
    from distgan import data
    from distgan.config import DatasetConfig

    root = data.locate(DatasetConfig(name="fashion_mnist")).root
    names = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in names}
    for r in range(args.rounds):
        for v in names if r % 2 == 0 else names[::-1]:
            with tempfile.TemporaryDirectory(prefix="distgan-bench-gpu-") as run_dir:
                cfg = distgan_config("dcgan", root, args.batch, 1, 1, args.tick * (args.warm + args.measure + 1),
                                     args.tick, run_dir, (f"dataset.resolution={args.size}",
                                                          *VARIANTS[v]))
                [out] = in_processes(gpu_worker, (cfg,), 1, timeout=1800)
            runs[v].append({**out, "img_s": steady_rate(out["times"], args.warm, args.measure, args.tick * args.batch)})
            print(f"round {r + 1}/{args.rounds}  {v:13s} {runs[v][-1]['img_s']:9.1f} img/s", flush=True)
    print(f"\nDCGAN {args.size} px, Fashion-MNIST, batch {args.batch}, 1 GPU ({runs[names[0]][0]['device']}), "
          f"{args.rounds} alternating rounds, median; 1-min load {os.getloadavg()[0]:.2f}")
    base = statistics.median(x["img_s"] for x in runs[names[0]])
    for v in names:
        rates = [x["img_s"] for x in runs[v]]
        print(f"{v:13s} {statistics.median(rates):9.1f} img/s  ({min(rates):.1f}..{max(rates):.1f})  "
              f"x{statistics.median(rates) / base:.2f} vs {names[0]}  peak GPU memory "
              f"{max(x['gpu_mb'] for x in runs[v]):.0f} MB")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({v: [{k: x[k] for k in ("img_s", "gpu_mb")} for x in runs[v]]
                                               for v in names}, indent=1))


if __name__ == "__main__":
    main()
