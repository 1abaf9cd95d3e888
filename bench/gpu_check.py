"""Throughput of distgan on one GPU, the figures of ``bash bench/gpu_check.sh`` (docs/benchmarks.md, "GPU check"):

    python bench/gpu_check.py --out DIR          # needs CUDA; writes DIR/gpu_check.json and DIR/gpu_check.md
    python bench/gpu_check.py --out DIR --quick  # a few steps of every case (plumbing; --allow-cpu on a CPU)

Cases (each variant a fresh process, timed between log ticks after warm-up ticks, as bench/throughput.py):
  dcgan64     DCGAN 64 px, global batch 256: fp32 vs bf16 vs bf16 + train.compile
  stylegan2   the stylegan2_256 recipe's network at 256 px, batch 16, bf16: model.fused_modconv=false (what
              the default ``auto`` trains with) vs true (the grouped conv); s/kimg and peak GPU memory
  r3gan       the r3gan_cifar10 recipe at R3GAN's per-GPU batch (64), R1 + R2 every step: its bf16 stages
              (R3GAN's) against bf16 autocast everywhere
  inception   TF-Inception pool features on CUDA (TF32 off, distgan's extractor), img/s
Data are made on the spot (random Fashion-MNIST-format and CIFAR-10-format files): speed does not depend on
the pixels, and the GPU machine has no data sets. Nothing here needs Ray, submitit or a network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

from throughput import in_processes, steady_rate  # bench/throughput.py, beside this file
from throughput_gpu import STYLEGAN2_256, gpu_worker  # bench/throughput_gpu.py

DCGAN_VARIANTS = {"fp32": ("train.precision=fp32",), "bf16": ("train.precision=bf16",),
                  "bf16+compile": ("train.precision=bf16", "train.compile=true")}
R3_VARIANTS = {"bf16 stages (R3GAN's, the recipe)": (),
               "bf16 autocast": ("model.bf16_stages=0", "train.precision=bf16")}
SG2_VARIANTS = {"non-fused (auto)": ("model.fused_modconv=false",), "fused": ("model.fused_modconv=true",)}


def config(run_dir: str, root: str, dataset: str, batch: int, steps: int, tick: int, overrides: tuple[str, ...]):
    from distgan.compose import load_config
    from distgan.launcher.preflight import check_config

    return check_config(load_config([f"dataset={dataset}", f"dataset.root={root}", "resume=never",
                                     "cluster.num_workers=1", "cluster.cpus_per_worker=4", *overrides,
                                     f"train.batch_size={batch}", f"train.steps={steps}", f"train.log_every={tick}",
                                     f"train.sample_every={steps}", f"train.checkpoint_every={steps}"], run_dir))


def timed(root: str, dataset: str, batch: int, tick: int, warm: int, measure: int, overrides: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory(prefix="distgan-gpu-check-") as run_dir:
        cfg = config(run_dir, root, dataset, batch, tick * (warm + measure + 1), tick, overrides)
        t = time.perf_counter()
        [out] = in_processes(gpu_worker, (cfg,), 1, timeout=900)
    rate = steady_rate(out["times"], warm, measure, tick * batch)
    return {"img_s": rate, "s_per_kimg": 1000 / rate, "gpu_mb": out["gpu_mb"], "device": out["device"],
            "wall_s": time.perf_counter() - t}


def inception_rate(images: int, batch: int, device: str) -> dict:
    import torch

    from distgan.metrics.inception import InceptionFeatures

    ex = InceptionFeatures(device=device, batch_size=batch)
    x = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ex(x[:batch])  # warm-up (cuDNN's algorithm choice)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    f = ex(x)
    f.sum().item()
    return {"img_s": images / (time.perf_counter() - t), "batch": batch, "weights": ex.info["weights"]}


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"GPU check: {env['device']}, torch {env['torch']}, CUDA {env['cuda']}, {env['date']}", "",
             "| case | variant | img/s | s/kimg | peak GPU memory | vs first |", "|---|---|---|---|---|---|"]
    for case, variants in results["cases"].items():
        first = None
        for name, r in variants.items():
            if "error" in r:
                lines.append(f"| {case} | {name} | failed: {r['error'][:80]} | | | |")
                continue
            first = first or r["img_s"]
            mem = f"{r['gpu_mb'] / 1024:.2f} GiB" if r.get("gpu_mb") else ""
            lines.append(f"| {case} | {name} | {r['img_s']:,.0f} | {1000 / r['img_s']:.2f} | {mem} | "
                         f"×{r['img_s'] / first:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--quick", action="store_true", help="a few steps of each case: checks the plumbing only")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (numbers meaningless)")
    p.add_argument("--cases", default="dcgan64,stylegan2,r3gan,inception")
    args = p.parse_args(argv)
    import torch

    from distgan.testing.images import write_cifar10, write_mnist

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("error: bench/gpu_check.py needs a CUDA GPU (--allow-cpu checks the plumbing)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    q = args.quick
    results = {"environment": {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "CPU",
                               "torch": torch.__version__, "cuda": torch.version.cuda, "quick": q,
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, "cases": {}}
    data = Path(tempfile.mkdtemp(prefix="distgan-gpu-data-"))
    fmnist = str(write_mnist(data, 512 if q else 8192, folder="FashionMNIST"))
    cifar = str(write_cifar10(data, 64 if q else 1024))
    warm, measure = (1, 1) if q else (3, 5)

    def save():
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
        (out / "gpu_check.md").write_text(markdown(results))

    plan = {
        "dcgan64": [(name, lambda o=o: timed(fmnist, "fashion_mnist", 32 if q else 256, 2 if q else 20, warm, measure,
                                             ("model=dcgan", "dataset.resolution=64", "train.lr_g=2e-4",
                                              "train.lr_d=2e-4", "train.ema_kimg=0", *o)))
                    for name, o in DCGAN_VARIANTS.items()],
        "stylegan2": [(name, lambda o=o: timed(fmnist, "fashion_mnist", 8 if q else 16, 2 if q else 16, warm, measure,
                                               ("model=stylegan2", "dataset.resolution=256", "model.resolution=256",
                                                "train.lr_g=0.0025",
                                                "train.lr_d=0.0025", "train.beta1=0", "train.beta2=0.99",
                                                "train.pl_batch_shrink=2", "train.precision=bf16", *STYLEGAN2_256, *o)))
                      for name, o in SG2_VARIANTS.items()],
        "r3gan": [(f"cifar10 {name}, batch 64", lambda o=o: timed(cifar, "cifar10", 8 if q else 64, 2 if q else 10,
                                                                  warm, measure, ("experiment=r3gan_cifar10", *o)))
                  for name, o in R3_VARIANTS.items()],
        "inception": [("fp32, batch 250", lambda: inception_rate(64 if q else 5000, 32 if q else 250,
                                                                  "cuda" if cuda else "cpu"))],
    }
    failed = 0
    for case in args.cases.split(","):
        results["cases"][case] = {}
        for name, fn in plan[case]:
            t = time.perf_counter()
            try:
                r = fn()
            except Exception as e:  # noqa: BLE001 - every case is reported, the check goes on
                failed += 1
                r = {"error": str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__,
                     "traceback": traceback.format_exc()[-4000:]}
            r["seconds"] = round(time.perf_counter() - t, 1)
            results["cases"][case][name] = r
            shown = f"{r['img_s']:,.1f} img/s" if "img_s" in r else f"FAILED {r['error'][:200]}"
            print(f"{case:10s} {name:24s} {shown}  ({r['seconds']} s)", flush=True)
            save()
    print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
