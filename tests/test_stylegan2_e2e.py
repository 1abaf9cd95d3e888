"""StyleGAN2 end to end through the real CLI: launch/run.py model=stylegan2 -> Hydra -> Ray (local) -> 2 DDP
workers, with R1, path length, ADA, style mixing and gradient accumulation; then launch/sample.py with
truncation on its checkpoint."""

from __future__ import annotations

import json

import pytest

from distgan import checkpoint
from tests.test_e2e_local import ROOT, run_cli, scalars

pytestmark = pytest.mark.slow


def test_stylegan2_trains_on_two_ray_workers_and_samples(tmp_path, fashion_root):
    import subprocess
    import sys

    run = tmp_path / "run"
    proc = run_cli(f"hydra.run.dir={run}", f"dataset.root={fashion_root}", "cluster.num_workers=2", "model=stylegan2",
                   "dataset.resolution=32", "model.latent_dim=16", "model.w_dim=16", "model.channel_base=256",
                   "model.channel_max=16", "model.mapping_layers=2", "train.batch_size=16", "train.batch_per_gpu=4",
                   "train.steps=4", "train.log_every=2", "train.sample_every=4", "train.checkpoint_every=4",
                   "train.r1_gamma=1", "train.r1_interval=2", "train.pl_weight=2", "train.pl_interval=2",
                   "train.style_mixing=0.9", "train.augment=ada", "train.augment_p=0.2", "train.ada_interval=2",
                   "train.ema_kimg=0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4] and all("aug/p" in x and "mean/loss/PL" in x for x in lines)
    assert scalars(run / "tb" / "rank1", "loss/PL") == [2, 4] and scalars(run / "tb" / "global", "aug/p") == [2, 4]
    state = checkpoint.load(run / "checkpoints")
    assert state["augment"]["p"] == lines[-1]["aug/p"] and state["path_length"]["pl_mean"] > 0
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "sample.py"), f"checkpoint={run}", "num_samples=8",
                          f"out={tmp_path / 'grid.png'}", "truncation=0.7"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "truncation 0.7" in out.stdout, out.stderr
    assert (tmp_path / "grid.png").stat().st_size > 0
