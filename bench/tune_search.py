"""ASHA against a random search of the same compute (issue 25): which finds the better DCGAN, in how long?

    python bench/tune_search.py --out outputs/tune_bench          # the full run (~14 min on 2 idle cores)
    python bench/tune_search.py --quick --out /tmp/tb             # plumbing only: tiny trials, numbers meaningless

Both searches are the command a user types (``python launch/run.py tune=...``, cluster=local, 1 worker of 1
CPU per trial, 2 trials at a time on 2 cores) over the default DCGAN on Fashion-MNIST, with the same space
``{train.lr_d, train.lr_g: loguniform(5e-5,2e-3), train.r1_gamma: loguniform(0.01,10)}`` and the same
sampler seed (``train.seed``), so trial k of both searches has the same values. Every trial trains up to
``--steps`` steps and is scored by the classifier FD (``metrics.num_samples`` samples) every ``--eval-every``
steps.
  asha    ``tune=asha tune.num_trials=8``: stops the worse trials at its rungs (reduction factor 3)
  random  ``tune=random`` with as many trials as the steps ASHA spent pay for, each run to the end
Reported: each search's wall time, the training steps it spent, trials completed / stopped, the best FD
reached (the best report of any trial) and which trial reached it.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = "{train.lr_d: loguniform(5e-5,2e-3), train.lr_g: loguniform(5e-5,2e-3), train.r1_gamma: loguniform(0.01,10)}"


def search(out: Path, name: str, trials: int, a: argparse.Namespace) -> dict:
    sweep = out / name
    args = [sys.executable, str(ROOT / "launch" / "run.py"), f"tune={name}", f"tune.params={SPACE}",
            f"tune.num_trials={trials}", f"train.steps={a.steps}", f"train.eval_every={a.eval_every}",
            f"metrics.num_samples={a.num_samples}", "train.sample_every=100000",
            f"train.checkpoint_every={a.eval_every}", "train.log_every=100", "cluster.num_workers=1",
            f"hydra.run.dir={sweep}"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"error: tune={name} failed (exit {proc.returncode}); its output: {out / f'{name}.log'}")
    with open(sweep / "results.csv") as f:
        table = list(csv.DictReader(f))
    best = min((r for r in table if r["best fd"]), key=lambda r: float(r["best fd"]))
    return {"search": name, "trials": len(table), "wall_s": round(wall, 1),
            "steps": sum(int(r["step"] or 0) for r in table),
            "finished": sum(r["status"] == "finished" for r in table),
            "stopped_early": sum(r["status"] == "stopped early" for r in table),
            "best_fd": float(best["best fd"]), "best_trial": best["trial"],
            "best_params": {k: best[k] for k in ("train.lr_d", "train.lr_g", "train.r1_gamma")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="a new folder for both sweeps, their logs and results.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--trials", type=int, default=8, help="ASHA's trials")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=2000)
    a = p.parse_args()
    if a.quick:
        a.trials, a.steps, a.eval_every, a.num_samples = 3, 40, 20, 200
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=False)
    rows = [search(out, "asha", a.trials, a)]
    k = max(1, round(rows[0]["steps"] / a.steps))  # trials to the end that ASHA's steps would have paid for
    rows.append(search(out, "random", k, a))
    head = ("search", "trials", "finished", "stopped", "steps", "wall s", "best FD")
    print("{:8} {:>6} {:>8} {:>7} {:>7} {:>7} {:>8}  best trial".format(*head))
    for r in rows:
        print(f"{r['search']:8} {r['trials']:>6} {r['finished']:>8} {r['stopped_early']:>7} {r['steps']:>7} "
              f"{r['wall_s']:>7} {r['best_fd']:>8.2f}  {r['best_trial']} {r['best_params']}")
    (out / "results.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
