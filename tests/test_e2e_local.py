"""End to end through the real CLI: launch/run.py -> Hydra -> Ray (local) -> 2 DDP workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_cli(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "launch" / "run.py"), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def scalars(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_train_two_workers_then_resume(tmp_path, fashion_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distgan.compose import load_config

    run = tmp_path / "run"
    common = [f"hydra.run.dir={run}", f"dataset.root={fashion_root}", "cluster.num_workers=2",
              "model.width=8", "train.batch_size=16", "train.log_every=5", "train.sample_every=10",
              "train.checkpoint_every=10"]
    first = run_cli(*common, "train.steps=20")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "tensorboard --logdir" in first.stdout
    # the start-up summary comes first, and the same text is TensorBoard's first text entry
    from distgan.models import build_models
    from distgan.startup import parameters

    G, D = build_models(load_config(common, run).model, (1, 28, 28))
    summary = [f"model: dcgan, G {parameters(G):,} / D {parameters(D):,} parameters, loss=bce",
               "data: dataset=fashion_mnist, 60,000 images of 1x28x28, 10 classes",
               "batch: 2 workers x batch 8 = global batch 16, 20 steps, fp32 on cpu",
               f"run directory: {run}", f"tensorboard --logdir {run}/tb"]
    assert first.stdout.splitlines()[:5] == summary
    text = EventAccumulator(str(run / "tb" / "global"), size_guidance={"tensors": 0})
    text.Reload()
    entry = text.Tensors("run/text_summary")
    assert entry[0].step == 0
    assert entry[0].tensor_proto.string_val[0].decode().splitlines() == [f"    {line}" for line in summary]

    # per-rank curves for both ranks, global means, an image, a checkpoint, the resolved config
    for rank in (0, 1):
        assert scalars(run / "tb" / f"rank{rank}", "loss/D") == [5, 10, 15, 20]
        assert scalars(run / "tb" / f"rank{rank}", "loss/G") == [5, 10, 15, 20]
    assert scalars(run / "tb" / "global", "perf/img_per_sec") == [5, 10, 15, 20]
    acc = EventAccumulator(str(run / "tb" / "global"), size_guidance={"images": 0})
    acc.Reload()
    assert "samples" in acc.Tags()["images"]
    assert (run / "checkpoints" / "latest" / "state.pt").exists()
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_0000010.png", "step_0000020.png"]
    assert "num_workers: 2" in (run / "config.yaml").read_text()
    assert oct((run).stat().st_mode & 0o777) == "0o700"

    assert "resuming" not in first.stdout
    # resume=auto (the default) in the same run directory continues from step 20, and says so
    second = run_cli(*common, "train.steps=30")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from checkpoints/step_0000020 (step 20 of 30)" in second.stdout.splitlines()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30], steps
    assert scalars(run / "tb" / "rank1", "loss/D") == [5, 10, 15, 20, 25, 30]
    assert (run / "checkpoints" / "latest").resolve().name == "step_0000030"
