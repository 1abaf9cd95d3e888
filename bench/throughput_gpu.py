"""GPU throughput of distgan: DCGAN at 64 px, global batch 256, one GPU, fp32 eager against bf16 (+ compile);
or StyleGAN2 at 256 px, batch 16, one GPU, bf16, in s/kimg (``--model stylegan2``).

    python bench/throughput_gpu.py                  # needs CUDA; results go to docs/benchmarks.md
    python bench/throughput_gpu.py --rounds 5 --json gpu.json
    python bench/throughput_gpu.py --model stylegan2 --variants bf16 --rounds 3   # s/kimg, peak memory

``--model stylegan2``: the network and phases of configs/experiment/stylegan2_256.yaml (channel_base 16384,
channel_max 512, mapping 8, z and w 512; lazy R1 gamma 1 / 16, path length 2 / 4, style mixing 0.9, ADA,
G_ema 20 kimg) with minibatch-std groups of 4, on Fashion-MNIST resized to 256 px (1 channel: only the
fromRGB/toRGB layers are thinner than FFHQ's). bf16+compile leaves G and D uncompiled (double backward of
R1 and path length), so it equals bf16 there.

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

# the stylegan2_256 recipe's network and phases, on top of bench/throughput.py's 32 px stylegan2 settings
STYLEGAN2_256 = ("model.channel_base=16384", "model.channel_max=512", "model.mapping_layers=8", "model.latent_dim=512",
                 "model.w_dim=512", "model.mbstd_group=4", "train.r1_gamma=1", "train.r1_interval=16",
                 "train.pl_weight=2", "train.pl_interval=4", "train.style_mixing=0.9", "train.augment=ada",
                 "train.ema_kimg=20")
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
    p.add_argument("--model", default="dcgan", choices=("dcgan", "stylegan2"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="global batch (default: dcgan 256, stylegan2 16)")
    p.add_argument("--size", type=int, default=None, help="image size, Fashion-MNIST resized (dcgan 64, stylegan2 256)")
    p.add_argument("--tick", type=int, default=None, help="steps per log tick (dcgan 20, stylegan2 16)")
    p.add_argument("--warm", type=int, default=3, help="untimed ticks (compilation happens here)")
    p.add_argument("--measure", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json")
    p.add_argument("--allow-cpu", action="store_true", help="plumbing check without a GPU: numbers meaningless")
    args = p.parse_args(argv)
    sg2 = args.model == "stylegan2"
    args.batch = args.batch or (16 if sg2 else 256)
    args.size = args.size or (256 if sg2 else 64)
    args.tick = args.tick or (16 if sg2 else 20)
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
                cfg = distgan_config(args.model, root, args.batch, 1, 1, args.tick * (args.warm + args.measure + 1),
                                     args.tick, run_dir, (f"dataset.resolution={args.size}",
                                                          *(STYLEGAN2_256 if sg2 else ()), *VARIANTS[v]))
                [out] = in_processes(gpu_worker, (cfg,), 1, timeout=1800)
            runs[v].append({**out, "img_s": steady_rate(out["times"], args.warm, args.measure, args.tick * args.batch)})
            print(f"round {r + 1}/{args.rounds}  {v:13s} {runs[v][-1]['img_s']:9.1f} img/s", flush=True)
    print(f"\n{args.model} {args.size} px, Fashion-MNIST, batch {args.batch}, 1 GPU ({runs[names[0]][0]['device']}), "
          f"{args.rounds} alternating rounds, median; 1-min load {os.getloadavg()[0]:.2f}")
    base = statistics.median(x["img_s"] for x in runs[names[0]])
    for v in names:
        rates = [x["img_s"] for x in runs[v]]
        print(f"{v:13s} {statistics.median(rates):9.1f} img/s  ({min(rates):.1f}..{max(rates):.1f})  "
              f"{1000 / statistics.median(rates):.2f} s/kimg  x{statistics.median(rates) / base:.2f} vs {names[0]}  "
              "peak GPU memory "
              f"{max(x['gpu_mb'] for x in runs[v]):.0f} MB")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({v: [{k: x[k] for k in ("img_s", "gpu_mb")} for x in runs[v]]
                                               for v in names}, indent=1))


if __name__ == "__main__":
    main()
