"""The data benchmark's plumbing: ``bench/data.py --quick`` runs every case (plain / folder / zip at 0, 1, 2
loader workers; the small and the large zip in fresh processes) and reports every figure. Correctness
only: no timing is asserted (the numbers of a quick run mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_quick_data_benchmark_reports_every_case(tmp_path):
    out = tmp_path / "data.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "data.py"), "--quick", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    cases = {(r["case"], r["workers"]) for r in results["throughput"]}
    assert cases == {(c, w) for c in ("plain", "folder", "zip") for w in (0, 1, 2)}
    assert all(r["img_s"] > 0 for r in results["throughput"])
    assert {(r["case"], r["workers"]) for r in results["ratios"]} == {(c, w) for c in ("folder", "zip")
                                                                       for w in (0, 1, 2)}
    assert sorted(r["images"] for r in results["memory"]) == [200, 2000]
    assert all(r["rss_mb"] > 0 and r["worker_rss_mb"] > 0 for r in results["memory"])
    for workers in (0, 1, 2):
        assert f"workers {workers}: plain " in proc.stdout
    assert "memory 2000/200 images: training process" in proc.stdout
