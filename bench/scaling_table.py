"""Expected DDP all-reduce cost per step against compute, for distgan's models on 8, 64 and 512 GPUs.

    python bench/scaling_table.py                 # the table in docs/scaling.md
    python bench/scaling_table.py --batch 256     # another per-GPU batch

Parameters and FLOPs are counted on distgan's own networks (configs/model/*.yaml, torch's FlopCounterMode
on meta tensors: nothing is computed). The rest is a model with its assumptions printed at the top:
  all-reduce (ring):  t = 2(N-1)/N * bytes / bandwidth  +  alpha * 2(N-1)   per bucket
      bandwidth: NVLink (~450 GB/s per GPU) inside one 8-GPU node; the node's InfiniBand (25 or 50 GB/s)
      once the ring leaves the node. DDP all-reduces D's gradients in the D step and G's in the G step,
      in buckets (the first 1 MB, then bucket_cap_mb = 25 MB): alpha is paid per bucket.
  compute: FLOPs / (peak * MFU), but at least (ops per step) * (eager per-op overhead): small networks
      are launch-bound long before they are FLOP-bound.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from distgan.compose import CONFIG_DIR
from distgan.config import ModelConfig
from distgan.models import build_models

# (model, image size, channels): Fashion-MNIST at 28 px, CIFAR-10 at 32, a 64 px RGB set
CASES = [("mlp", 28, 1), ("dcgan", 28, 1), ("dcgan", 32, 3), ("dcgan", 64, 3), ("resnet", 32, 3), ("resnet", 64, 3)]
GPUS = (8, 64, 512)
GPUS_PER_NODE = 8
MB = 2**20


class OpCounter(TorchDispatchMode):
    """Counts ATen ops: each is at least one kernel launch plus eager dispatch overhead."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def model_config(name: str) -> ModelConfig:
    yaml = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), yaml))


def one_step(G, D, batch: int, latent: int, shape: tuple[int, ...]) -> None:
    """One generator step of distgan (n_critic = 1): D on real and on a no-grad fake, then G through
    a frozen D. Optimizer updates are left out (~10 FLOPs and one fused kernel per tensor)."""
    real = torch.randn(batch, *shape, device="meta")
    with torch.no_grad():
        fake = G(torch.randn(batch, latent, device="meta"))
    D.requires_grad_(True)
    (F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean()).backward()
    D.requires_grad_(False)
    F.softplus(-D(G(torch.randn(batch, latent, device="meta")))).mean().backward()


def measure(name: str, size: int, channels: int, batch: int) -> dict:
    cfg = model_config(name)
    shape = (channels, size, size)
    with torch.device("meta"):
        G, D = build_models(cfg, shape)
    flops, ops = FlopCounterMode(display=False), OpCounter()
    with flops:
        one_step(G, D, batch, cfg.latent_dim, shape)
    with ops:
        one_step(G, D, batch, cfg.latent_dim, shape)
    return {"name": f"{name} {size}px", "G": sum(p.numel() for p in G.parameters()),
            "D": sum(p.numel() for p in D.parameters()), "flops": flops.get_total_flops(), "ops": ops.ops}


def buckets(nbytes: float, cap_mb: float) -> int:
    """DDP's buckets for one network: a 1 MB first bucket, then ``cap_mb``."""
    return 1 + math.ceil(max(nbytes - MB, 0) / (cap_mb * MB))


def allreduce_s(nbytes: float, gpus: int, args, ib_gbs: float, cap_mb: float, tree: bool = False) -> float:
    """Ring: bandwidth term + alpha * 2(N-1) per bucket. ``tree``: the latency of NCCL's trees instead,
    alpha * 2 log2(N), which NCCL picks for small messages on many nodes."""
    bandwidth = args.nvlink_gbs if gpus <= GPUS_PER_NODE else ib_gbs
    hops = 2 * math.log2(gpus) if tree else 2 * (gpus - 1)
    return 2 * (gpus - 1) / gpus * nbytes / (bandwidth * 1e9) + buckets(nbytes, cap_mb) * args.alpha_us * 1e-6 * hops


def step_comm_s(m: dict, gpus: int, args, bytes_per_param: int, ib_gbs: float, cap_mb: float = 25,
                tree: bool = False) -> float:
    """D's gradients in the D step, G's in the G step: two separate all-reduces per generator step."""
    return sum(allreduce_s(m[net] * bytes_per_param, gpus, args, ib_gbs, cap_mb, tree) for net in ("D", "G"))


def compute_s(m: dict, args, batch_scale: float = 1.0) -> float:
    return max(m["flops"] * batch_scale / (args.peak_tflops * 1e12 * args.mfu), m["ops"] * args.op_us * 1e-6)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64, help="per-GPU batch")
    p.add_argument("--nvlink-gbs", type=float, default=450, help="NVLink bandwidth per GPU, GB/s")
    p.add_argument("--ib-gbs", default="25,50", help="InfiniBand bandwidth per node, GB/s (comma list)")
    p.add_argument("--alpha-us", type=float, default=5.0, help="per-hop latency of a ring step, µs")
    p.add_argument("--peak-tflops", type=float, default=989, help="GPU dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--mfu", type=float, default=0.35, help="fraction of peak reached by the convolutions/GEMMs")
    p.add_argument("--op-us", type=float, default=10.0, help="eager per-op overhead (launch + dispatch), µs")
    args = p.parse_args(argv)
    ibs = [float(x) for x in args.ib_gbs.split(",")]
    rows = [measure(*case, args.batch) for case in CASES]

    print(f"per-GPU batch {args.batch}; NVLink {args.nvlink_gbs:g} GB/s/GPU within {GPUS_PER_NODE}-GPU nodes, "
          f"IB {'/'.join(f'{b:g}' for b in ibs)} GB/s/node across; alpha {args.alpha_us:g} µs/hop; compute at "
          f"{args.mfu:.0%} of {args.peak_tflops:g} TFLOPS, at least {args.op_us:g} µs per op; DDP buckets 1 + 25 MB\n")
    print("| model | params G / D | grad MB/step fp32 / bf16 | GFLOP/step | ops/step | compute ms/step "
          "| per-GPU batch where FLOPs pass the op floor |")
    print("|---|---|---|---|---|---|---|")
    for m in rows:
        grad = (m["G"] + m["D"]) * 4 / MB
        flop_s = m["flops"] / (args.peak_tflops * 1e12 * args.mfu)
        print(f"| {m['name']} | {m['G'] / 1e6:.2f} M / {m['D'] / 1e6:.2f} M | {grad:.1f} / {grad / 2:.1f} | "
              f"{m['flops'] / 1e9:.1f} | {m['ops']} | {compute_s(m, args) * 1e3:.2f} | "
              f"{math.ceil(args.batch * m['ops'] * args.op_us * 1e-6 / flop_s):,} |")
    b0, b1 = ibs[0], ibs[-1]
    print(f"\n| model | GPUs | all-reduce ms/step, ring fp32 IB {b0:g} | ring fp32 IB {b1:g} | ring bf16 IB {b0:g} "
          f"| tree fp32 IB {b0:g} | comm / compute (ring fp32 IB {b0:g}) | per-GPU batch for comm = compute |")
    print("|---|---|---|---|---|---|---|---|")
    for m in rows:
        compute = compute_s(m, args)
        flop_s_per_sample = m["flops"] / args.batch / (args.peak_tflops * 1e12 * args.mfu)
        for gpus in GPUS:
            comm = step_comm_s(m, gpus, args, 4, b0)
            cells = [comm, step_comm_s(m, gpus, args, 4, b1), step_comm_s(m, gpus, args, 2, b0),
                     step_comm_s(m, gpus, args, 4, b0, tree=True)]
            # below the op floor a bigger batch costs no time, so comm = compute needs FLOPs = comm
            even = "compute-bound already" if comm <= compute else f"{math.ceil(comm / flop_s_per_sample):,}"
            print(f"| {m['name']} | {gpus} | " + " | ".join(f"{c * 1e3:.2f}" for c in cells)
                  + f" | {comm / compute:.2f} | {even} |")


if __name__ == "__main__":
    main()
