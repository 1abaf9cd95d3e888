"""The throughput benchmark's plumbing: ``bench/throughput.py --quick`` runs every case and prints every
row. Correctness only; no timing is asserted (the numbers of a quick run mean nothing)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("(a) plain PyTorch", "(b) distgan, 1 worker", "(c) distgan, 2 workers")


def test_quick_benchmark_prints_every_row(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = proc.stdout
    for model in ("mlp", "dcgan", "stylegan2"):
        # the hand-written reference and distgan train the same networks
        assert re.search(rf"^{model}: parameters G/D plain ([\d,]+)/([\d,]+), distgan \1/\2$", text, re.M), text
        for row in ROWS:
            assert re.search(rf"^{model}\s+{re.escape(row)}\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\.\.[\d.]+\s+[\d.]+\s+\d+ MB$",
                             text, re.M), f"{model} {row} missing:\n{text}"
        for ratio in ("b/a", "c/b"):
            line = rf"^ratio {model}\s+{re.escape(ratio)}: [\d.]+ wall, [\d.]+ from CPU time "
            assert re.search(line, text, re.M), text
    assert re.search(r"^startup launch/run.py -> first step: [\d.]+ s median of 1 .* CPU-s; whole command [\d.]+ s",
                     text, re.M), text
    results = json.loads(out.read_text())
    assert len(results["rows"]) == 9 and all(r["img_s"] > 0 and r["img_cpu_s"] > 0 and r["rss_mb"] > 0
                                             for r in results["rows"])
    assert len(results["ratios"]) == 6 and len(results["startup"]) == 1
