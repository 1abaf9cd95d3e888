"""The Inception benchmark's plumbing: ``bench/inception.py --quick`` runs every CPU case and prints every
row. Correctness only; no timing is asserted (the numbers of a quick run mean nothing)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.inception
def test_quick_inception_benchmark_prints_every_row(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "inception.py"), "--quick", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for size, ch in ((28, 1), (64, 3)):
        for threads in (1, 2):
            assert re.search(rf"^extract {size} px x{ch} -> 299, {threads} thread\(s\): [\d.]+ img/s", proc.stdout,
                             re.M), proc.stdout
    assert re.search(r"^stream peak RSS 40 - 8 samples: [+-][\d.]+ MB$", proc.stdout, re.M), proc.stdout
    results = json.loads(out.read_text())
    assert len(results["extraction"]) == 4 and all(r["img_s"] > 0 for r in results["extraction"])
    assert set(results["streaming"]["40"]["metrics"]) == {"fid40", "kid40", "precision", "recall"}
