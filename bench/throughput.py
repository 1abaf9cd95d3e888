"""Throughput of distgan side by side with a plain PyTorch loop, and the CLI's time to the first step.

    python bench/throughput.py            # the full run (docs/benchmarks.md, "Throughput")
    python bench/throughput.py --quick    # a few steps of every case: checks the plumbing only

Cases, per model (mlp, dcgan at 28 px; stylegan2 at 32 px), all on Fashion-MNIST held in memory, global
batch 64:
  (a) plain    a hand-written PyTorch loop (bench/plain_loops.py): no Ray, no DDP, no distgan import in
               the loop (stylegan2: distgan's G and D modules, the networks being the point, driven by a
               hand-written loop of the same phases with batch-wise torch.randn draws)
  (b) distgan  ``distgan.train.train_worker`` in one process, same threads and batch
  (c) distgan  two plain gloo processes (1 thread each), the same global batch split 2 x 32
Every case runs in a fresh process, and the cases alternate within a round (a b c, then c b a in
the next round) so that drift of a shared machine falls on all of them alike. Steady-state img/s is
timed between log ticks after a warm-up (distgan's ticks include its all-gather, TensorBoard and
metrics.jsonl writes: they are part of the loop the user runs); the last tick of a distgan run, which
also writes samples and a checkpoint, is left out. Peak RSS is each worker process's VmHWM.
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
from plain_loops import SG2_OVERRIDES, param_counts, peak_rss_mb, plain_models, plain_worker  # beside this file

from distgan.testing import gloo  # the gloo process runner the DDP tests use

ROOT = Path(__file__).resolve().parents[1]

CASES = ("plain", "distgan-1", "distgan-2")
LABELS = {"plain": "(a) plain PyTorch", "distgan-1": "(b) distgan, 1 worker", "distgan-2": "(c) distgan, 2 workers"}


# ----------------------------------------------------------------------------- (b, c) distgan
def distgan_config(model: str, root: str, batch: int, workers: int, threads: int, steps: int, tick: int,
                   run_dir: str, extra: tuple[str, ...] = ()):
    """distgan's own config (configs/ composed by Hydra, as launch/run.py does), for a timed run."""
    from distgan.compose import load_config
    from distgan.launcher.preflight import check_config

    overrides = [f"model={model}", "dataset=fashion_mnist", f"dataset.root={root}", "resume=never",
                 f"cluster.num_workers={workers}", f"cluster.cpus_per_worker={threads}",
                 f"train.batch_size={batch}", f"train.steps={steps}", f"train.log_every={tick}",
                 f"train.sample_every={steps}", f"train.checkpoint_every={steps}",
                 # dcgan: the network of plain_models (width 64, no norm in D, no G_ema), not the default
                 # model's width-16 recipe, so that (a) and (b) train the same networks
                 *(("model.width=64", "model.norm_d=none") if model == "dcgan" else ()),
                 *(SG2_OVERRIDES if model == "stylegan2" else ()),
                 # the plain loop's optimiser and no G_ema (the default job's tuned settings are not the point)
                 *(() if model == "stylegan2" else ("train.lr_g=2e-4", "train.lr_d=2e-4")), "train.ema_kimg=0", *extra]
    return check_config(load_config(overrides, run_dir))


def distgan_worker(cfg) -> dict:
    from distgan.train import Hooks, train_worker

    class Timing(Hooks):
        """Wall time of every log tick; ``report`` is the loop's existing per-tick hook."""

        def __init__(self):
            self.times: list[float] = []
            self.cpu: list[float] = []

        def report(self, metrics, checkpoint_dir):
            self.times.append(time.perf_counter())
            self.cpu.append(time.process_time())  # all threads of this process: compute, gloo, TensorBoard

    hooks = Timing()
    train_worker(cfg, hooks)
    return {"times": hooks.times, "cpu": hooks.cpu, "rss_mb": peak_rss_mb()}


def in_processes(fn, args, world: int, timeout: float, inline: bool = False) -> list[dict]:
    """``fn(*args)`` in ``world`` fresh processes (a gloo group when world > 1), in rank order, forked
    from one process that imported torch once (tests/gloo.py). ``inline``: one worker runs in this
    process (``--quick``: saves a torch start-up; RSS then means little)."""
    if inline and world == 1:
        return [fn(*args)]
    return gloo.run(fn, world, *args, timeout=timeout, start_method="forkserver",
                    preload=("torch", "torch._dynamo", "distgan.train", "torchvision"))


def steady_rate(times: list[float], warm: int, measure: int, images_per_tick: int) -> float:
    """img/s between tick ``warm`` and tick ``warm + measure`` (1-based ticks)."""
    return measure * images_per_tick / (times[warm + measure - 1] - times[warm - 1])


def same_networks(model: str, root: str) -> tuple[list[int], list[int]]:
    """Parameter counts of G and D: the reference's and distgan's (they must be equal)."""
    from distgan.models import build_models

    with tempfile.TemporaryDirectory() as tmp:
        cfg = distgan_config(model, root, 64, 1, 1, 1, 1, tmp)
    shape = (1, 32, 32) if model == "stylegan2" else (1, 28, 28)
    return param_counts(*plain_models(model)[:2]), param_counts(*build_models(cfg.model, shape))


def run_case(case: str, model: str, args, root: str) -> dict:
    tick, warm, measure = args.tick[model], args.warm, args.measure
    if case == "plain":
        [out] = in_processes(plain_worker, (model, root, args.batch, args.threads, tick, warm + measure), 1,
                             args.timeout, args.quick)
        results = [out]
    else:
        workers = 1 if case == "distgan-1" else 2
        with tempfile.TemporaryDirectory(prefix="distgan-bench-") as run_dir:
            # one tick more than timed: the last one also writes samples and a checkpoint
            cfg = distgan_config(model, root, args.batch, workers, args.threads if workers == 1 else 1,
                                 tick * (warm + measure + 1), tick, run_dir)
            results = in_processes(distgan_worker, (cfg,), workers, args.timeout, args.quick)
    images = measure * tick * args.batch
    cpu_s = sum(r["cpu"][warm + measure - 1] - r["cpu"][warm - 1] for r in results)  # all workers together
    return {"img_s": steady_rate(results[0]["times"], warm, measure, tick * args.batch),
            "img_cpu_s": images / cpu_s, "rss_mb": max(r["rss_mb"] for r in results)}


# ------------------------------------------------------------------------------------- start-up
def time_cli_startup(steps: int, timeout: float, stop_at_first: bool = False) -> dict:
    """Seconds from spawning ``python launch/run.py`` to its first metrics.jsonl line (written after
    step 1 with train.log_every=1), and to its exit. The real CLI, Ray included. ``stop_at_first``:
    interrupt it (Ctrl-C, which it handles) once the first step is seen."""
    with tempfile.TemporaryDirectory(prefix="distgan-bench-cli-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "launch" / "run.py"), "model=mlp", f"train.steps={steps}",
               "train.log_every=1", f"train.sample_every={steps}", f"train.checkpoint_every={steps}",
               f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first, cpu = None, None
        while proc.poll() is None and time.perf_counter() - start < timeout:
            if first is None and (run_dir / "metrics.jsonl").exists():
                first = time.perf_counter() - start
                cpu = _tree_cpu_s(proc.pid)
                if stop_at_first:
                    proc.send_signal(signal.SIGINT)
                    break
            time.sleep(0.02)
        try:
            err = proc.communicate(timeout=max(timeout - (time.perf_counter() - start), 60))[1]
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # Ray's processes go down with the driver's ray.shutdown()
            err = proc.communicate()[1]
        total = time.perf_counter() - start
        if proc.returncode != 0 and not (stop_at_first and first is not None):
            raise RuntimeError(f"launch/run.py exited with {proc.returncode}: {err.strip()[-500:]}")
        if first is None and (run_dir / "metrics.jsonl").exists():
            first = total  # finished between two polls
        return {"first_step_s": first, "total_s": total, "cpu_s": cpu}


def _tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) spent so far by ``pid`` and its live descendants (Linux /proc): the
    start-up's work, which unlike its wall time hardly depends on what else the machine runs."""
    try:
        names = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return None
    parent, cpu = {}, {}
    for name in names:
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, …, utime, stime
        parent[int(name)], cpu[int(name)] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(children)
        frontier = children
    return sum(cpu.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------- main
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few steps per case: plumbing only, numbers meaningless")
    p.add_argument("--models", default="mlp,dcgan,stylegan2")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads of (a) and (b); (c) uses 1 per worker")
    p.add_argument("--warm", type=int, default=2, help="warm-up log ticks, not timed")
    p.add_argument("--measure", type=int, default=6, help="timed log ticks")
    p.add_argument("--tick-mlp", type=int, default=25, help="steps per log tick, mlp")
    p.add_argument("--tick-dcgan", type=int, default=10, help="steps per log tick, dcgan")
    p.add_argument("--tick-stylegan2", type=int, default=16, help="steps per log tick, stylegan2 (one lazy R1 each)")
    p.add_argument("--startup-runs", type=int, default=None, help="CLI start-up timings (default: one per round)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warm, args.measure, args.tick_mlp, args.tick_dcgan, args.tick_stylegan2 = 1, 1, 1, 2, 2, 2
    args.tick = {"mlp": args.tick_mlp, "dcgan": args.tick_dcgan, "stylegan2": args.tick_stylegan2}
    args.startup_runs = args.rounds if args.startup_runs is None else args.startup_runs
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally clauses: stop the workers
    from distgan import data
    from distgan.config import DatasetConfig

    root = data.locate(DatasetConfig(name="fashion_mnist")).root
    models = args.models.split(",")
    load = [os.getloadavg()[0]]
    runs: dict[tuple[str, str], list[dict]] = {(m, c): [] for m in models for c in CASES}
    startup: list[dict] = []
    for m in models:
        plain, ours = same_networks(m, root)
        print(f"{m}: parameters G/D plain {plain[0]:,}/{plain[1]:,}, distgan {ours[0]:,}/{ours[1]:,}"
              f"{'' if plain == ours else '  (DIFFERENT networks: the ratios are not comparable)'}", flush=True)
    for r in range(args.rounds):
        order = [(m, c) for m in models for c in CASES]
        for m, c in order if r % 2 == 0 else order[::-1]:  # a b c … then … c b a: linear drift cancels
            runs[m, c].append(run_case(c, m, args, root))
            print(f"round {r + 1}/{args.rounds}  {m:5s} {c:9s}  {runs[m, c][-1]['img_s']:8.1f} img/s", flush=True)
        if r < args.startup_runs:
            startup.append(time_cli_startup(3 if args.quick else 5, args.timeout, stop_at_first=args.quick))
            print(f"round {r + 1}/{args.rounds}  launch/run.py first step after {_f(startup[-1]['first_step_s'])} s "
                  f"({_f(startup[-1]['cpu_s'])} CPU-s)", flush=True)
        load.append(os.getloadavg()[0])
    return report(args, models, runs, startup, load)


def _f(x: float | None) -> str:
    return "?" if x is None else f"{x:.1f}"


def report(args, models, runs, startup, load) -> dict:
    out = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "torch": torch.__version__,
           "cpus": os.cpu_count(), "load_1min": load, "rows": [], "ratios": [], "startup": startup}
    print(f"\nThroughput, Fashion-MNIST 28 px (stylegan2: 32 px), global batch {args.batch}, {args.rounds} alternating "
          f"round(s), median; 1-min load {min(load):.2f}..{max(load):.2f}")
    print(f"{'model':6s} {'case':24s} {'workers':>7s} {'threads':>7s} {'img/s':>8s} {'min..max':>15s} "
          f"{'img/CPU-s':>10s} {'peak RSS/worker':>15s}")
    med, cpu = {}, {}
    for m in models:
        for c in CASES:
            rates = [x["img_s"] for x in runs[m, c]]
            med[m, c] = statistics.median(rates)
            cpu[m, c] = statistics.median(x["img_cpu_s"] for x in runs[m, c])
            workers, threads = (2, 1) if c == "distgan-2" else (1, args.threads)
            rss = max(x["rss_mb"] for x in runs[m, c])
            print(f"{m:6s} {LABELS[c]:24s} {workers:7d} {threads:7d} {med[m, c]:8.1f} "
                  f"{min(rates):7.1f}..{max(rates):<7.1f} {cpu[m, c]:10.1f} {rss:12.0f} MB")
            out["rows"].append({"model": m, "case": c, "workers": workers, "threads": threads, "img_s": med[m, c],
                                "img_s_runs": rates, "img_cpu_s": cpu[m, c], "rss_mb": rss})
    # CPU time is what a busy shared machine disturbs least: with one thread per worker, an idle core runs
    # img/CPU-s images a second, so (b)/(a) and 2 x (c)/(b) of it predict the ratios on idle cores
    # (the 2-worker figure leaves out waiting for the slower rank).
    for m in models:
        for name, num, den, target, cores in (("b/a", "distgan-1", "plain", 0.97, 1),
                                              ("c/b", "distgan-2", "distgan-1", 1.8, 2)):
            wall, by_cpu = med[m, num] / med[m, den], cores * cpu[m, num] / cpu[m, den]
            print(f"ratio {m:6s} {name}: {wall:.3f} wall, {by_cpu:.3f} from CPU time  (target >= {target}: "
                  f"{'met' if wall >= target else 'MISSED'} wall, {'met' if by_cpu >= target else 'MISSED'} CPU)")
            out["ratios"].append({"model": m, "ratio": name, "value": wall, "from_cpu_time": by_cpu, "target": target})
    firsts = [s["first_step_s"] for s in startup if s["first_step_s"] is not None]
    if firsts:
        first, total = statistics.median(firsts), statistics.median(s["total_s"] for s in startup)
        verdict = "met" if first <= 15 else "MISSED"
        cpus = [s["cpu_s"] for s in startup if s["cpu_s"] is not None]
        cpu = f"{statistics.median(cpus):.1f}" if cpus else "?"
        print(f"startup launch/run.py -> first step: {first:.1f} s median of {len(firsts)} "
              f"({', '.join(f'{f:.1f}' for f in firsts)}), {cpu} CPU-s; whole command {total:.1f} s  "
              f"(target <= 15 s: {verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
