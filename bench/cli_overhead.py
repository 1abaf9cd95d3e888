"""The path a user runs: ``python launch/run.py`` (Ray Train and all) beside a plain loop, for the blog post's
MLP GAN, and where the per-step difference goes (docs/benchmarks.md, "Through launch/run.py").

    python bench/cli_overhead.py            # the full run: 3 alternating rounds, 1 and 2 workers
    python bench/cli_overhead.py --quick    # a few steps of every case: checks the plumbing only

Model and data as bench/throughput.py's mlp case (Fashion-MNIST in memory, global batch 64, Adam 2e-4, 1 torch
thread per process, no G_ema). Every case is a fresh process tree; the cases alternate within a round (then in
reverse). Each case reports the median of its per-tick img/s over the second half of ``--steps`` steps (the
figure TensorBoard shows as perf/img_per_sec; the first half holds start-up and warm-up):
  plain-1     a hand-written loop, no distgan, no Ray (bench/plain_loops.py)
  loop-1      distgan's training loop (train_worker) in one process: no Ray
  run.py-1    python launch/run.py … cluster.num_workers=1: Ray, Ray Train's controller, the worker actor
  plain-2     a hand-written 2-process gloo DDP loop (the same global batch, 32 per process)
  loop-2      train_worker in 2 gloo processes
  run.py-2    python launch/run.py … cluster.num_workers=2
Attribution (the loop-1 variants): ``loop-1 no-guard`` skips the non-finite guard's per-update check,
``loop-1 tick=10x`` logs every 10 × ``--tick`` steps (timed between its 1st and 2nd tick). The CPU seconds
that the Ray processes (GCS, raylet, the controller, the driver) spend beside the workers during the timed
half are measured from /proc (``ray CPU-s``): on 2 cores they are taken from the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from plain_loops import plain_models, real_batches  # beside this file
from throughput import ROOT, _tree_cpu_s, distgan_config, in_processes

CASES = ("plain-1", "loop-1", "run.py-1", "plain-2", "loop-2", "run.py-2", "loop-1 no-guard", "loop-1 tick=10x")


def plain_ddp_worker(root: str, batch: int, tick: int, steps: int) -> dict:
    """The plain loop, DDP-wrapped when a gloo group is up (bench/plain_loops.py's arithmetic)."""
    import torch.distributed as tdist
    import torchvision
    from torch.nn import functional as F

    world = tdist.get_world_size() if tdist.is_initialized() else 1
    torch.manual_seed(0)
    x = torch.as_tensor(torchvision.datasets.FashionMNIST(root, train=True).data).unsqueeze(1)
    G, D, nz = plain_models("mlp")
    if world > 1:
        G, D = (torch.nn.parallel.DistributedDataParallel(m) for m in (G, D))  # no buffers in these MLPs
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    b = batch // world
    ones, zeros = torch.ones(b), torch.zeros(b)
    reals, times = real_batches(x, b), []
    for step in range(1, steps + 1):
        real = next(reals)
        with torch.no_grad():
            fake = G(torch.randn(b, nz))
        loss_d = F.binary_cross_entropy_with_logits(D(real), ones) + F.binary_cross_entropy_with_logits(D(fake), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        D.requires_grad_(False)
        loss_g = F.binary_cross_entropy_with_logits(D(G(torch.randn(b, nz))), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        if step % tick == 0:
            loss_d.item()
            times.append(time.perf_counter())
    return {"times": times}


def loop_worker(cfg, variant: str) -> dict:
    from distgan import nonfinite
    from distgan.train import Hooks, train_worker

    if variant == "no-guard":
        nonfinite.NonFiniteGuard.ok = lambda self, phase, opt, loss: True

    class Timing(Hooks):
        def __init__(self):
            self.times: list[float] = []

        def report(self, metrics, checkpoint_dir):
            self.times.append(time.perf_counter())

    hooks = Timing()
    train_worker(cfg, hooks)
    return {"times": hooks.times}


def tick_rates(times: list[float], images_per_tick: int) -> list[float]:
    return [images_per_tick / (b - a) for a, b in zip(times, times[1:])]


def second_half(rates: list[float]) -> float:
    return statistics.median(rates[len(rates) // 2:])


def run_cli(workers: int, root: str, args) -> dict:
    """launch/run.py as a user types it; img/s per tick from rank 0's metrics.jsonl; the CPU seconds of the
    driver's process tree (Ray's processes, the workers) in the timed half, from /proc."""
    with tempfile.TemporaryDirectory(prefix="distgan-bench-cli-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "launch" / "run.py"), "model=mlp", f"dataset.root={root}",
               f"cluster.num_workers={workers}", "cluster.cpus_per_worker=1", f"train.batch_size={args.batch}",
               f"train.steps={args.steps}", f"train.log_every={args.tick}", f"train.sample_every={args.steps}",
               f"train.checkpoint_every={args.steps}", "train.lr_g=2e-4", "train.lr_d=2e-4", "train.ema_kimg=0",
               f"hydra.run.dir={run_dir}"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        half, snaps = args.steps // 2, []
        metrics = run_dir / "metrics.jsonl"
        try:
            while proc.poll() is None:
                last = _last_step(metrics)
                if (not snaps and last >= half) or (len(snaps) == 1 and last >= args.steps - args.tick):
                    snaps.append((_tree_cpu_s(proc.pid), _worker_cpu(run_dir), time.perf_counter()))
                time.sleep(0.05)
            err = proc.communicate(timeout=args.timeout)[1]
        except BaseException:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"launch/run.py exited with {proc.returncode}: {err.strip()[-800:]}")
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        rates = [x["img_per_sec"] for x in lines if "img_per_sec" in x and x.get("step", 0) < args.steps]
        out = {"img_s": second_half(rates)}
        if len(snaps) == 2 and None not in (*snaps[0][:2], *snaps[1][:2]):
            out["ray_cpu_s"] = (snaps[1][0] - snaps[0][0]) - (snaps[1][1] - snaps[0][1])
            out["timed_s"] = snaps[1][2] - snaps[0][2]
        return out


def _last_step(metrics: Path) -> int:
    """The step of rank 0's newest metrics.jsonl line (0 before the first; a torn last line is skipped)."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except ValueError:
            continue
    return 0


def _worker_cpu(run_dir: Path) -> float | None:
    """CPU seconds of the Ray Train worker processes (their pids: run_dir/workers/rank*.json)."""
    total = 0.0
    for f in (run_dir / "workers").glob("rank*.json"):
        try:
            pid = json.loads(f.read_text())["pid"]
            fields = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError, KeyError):
            return None
        fields = fields[fields.rfind(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_case(case: str, root: str, args) -> dict:
    name, _, variant = case.partition(" ")
    kind, workers = name.rsplit("-", 1)
    workers = int(workers)
    if kind == "run.py":
        return run_cli(workers, root, args)
    per_tick = args.tick * args.batch
    if kind == "plain":
        outs = in_processes(plain_ddp_worker, (root, args.batch, args.tick, args.steps), workers, args.timeout)
        return {"img_s": second_half(tick_rates(outs[0]["times"], per_tick))}
    tick = 10 * args.tick if variant == "tick=10x" else args.tick
    # one tick more than timed: the last one also writes samples and a checkpoint
    steps = 3 * tick if variant == "tick=10x" else args.steps + tick
    with tempfile.TemporaryDirectory(prefix="distgan-bench-") as run_dir:
        cfg = distgan_config("mlp", root, args.batch, workers, 1, steps, tick, run_dir)
        outs = in_processes(loop_worker, (cfg, variant), workers, args.timeout)
    times = outs[0]["times"]
    if variant == "tick=10x":
        return {"img_s": tick * args.batch / (times[1] - times[0])}
    return {"img_s": second_half(tick_rates(times[:args.steps // tick], per_tick))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--tick", type=int, default=25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.tick = 1, 60, 10
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from distgan import data
    from distgan.config import DatasetConfig

    root = data.locate(DatasetConfig(name="fashion_mnist")).root
    cases = args.cases.split(",")
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for c in cases if r % 2 == 0 else cases[::-1]:
            runs[c].append(run_case(c, root, args))
            extra = f"  ray CPU-s {runs[c][-1]['ray_cpu_s']:.1f}" if "ray_cpu_s" in runs[c][-1] else ""
            print(f"round {r + 1}/{args.rounds}  {c:18s} {runs[c][-1]['img_s']:8.1f} img/s{extra}", flush=True)
        load.append(os.getloadavg()[0])
    med = {c: statistics.median(x["img_s"] for x in runs[c]) for c in cases}
    print(f"\nmlp, Fashion-MNIST, global batch {args.batch}, 1 thread per process, median per-tick img/s of the "
          f"second half of {args.steps} steps, {args.rounds} alternating rounds; 1-min load {max(load):.2f} at most")
    ref = {"1": med.get("plain-1"), "2": med.get("plain-2")}
    for c in cases:
        base = ref[c.split(" ")[0][-1]]
        ratio = f"x{med[c] / base:.2f} vs plain-{c.split(' ')[0][-1]}" if base else ""
        ray = [x["ray_cpu_s"] for x in runs[c] if "ray_cpu_s" in x]
        ray_s = f"  Ray processes {statistics.median(ray):.1f} CPU-s in the timed half" if ray else ""
        print(f"{c:18s} {med[c]:8.1f} img/s  {ratio}{ray_s}")
    result = {"cases": runs, "median": med, "load": load, "args": vars(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
