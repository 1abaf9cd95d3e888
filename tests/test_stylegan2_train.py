"""StyleGAN2 through the real loop (``train_worker`` in process, Fashion-MNIST at 32 px, a tiny network):
a run stopped at a checkpoint and resumed ends bit for bit where a straight run ends — ADA's p and its
partial statistic, the path-length mean, w_avg, the style-mixing and noise draws all continue; TensorBoard
gets ``aug/p``, ``aug/rt`` and ``loss/PL``; ``launch/sample.py truncation=`` truncates towards w_avg."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan import checkpoint
from distgan.compose import load_config
from distgan.launcher.preflight import check_config
from distgan.train import Hooks, train_worker
from tests.test_sample_evaluate import run_in_process

TINY = ["model=stylegan2", "dataset.resolution=32", "model.latent_dim=16", "model.w_dim=16", "model.channel_base=256",
        "model.channel_max=16", "model.mapping_layers=2", "cluster.num_workers=1", "train.batch_size=8",
        "train.steps=6", "train.log_every=2", "train.sample_every=6", "train.checkpoint_every=2",
        "train.num_sample_images=8", "train.r1_gamma=1", "train.r1_interval=2", "train.pl_weight=2",
        "train.pl_interval=2", "train.style_mixing=0.9", "train.augment=ada", "train.augment_p=0.3",
        "train.ada_kimg=0.2", "train.ada_interval=4", "train.ema_kimg=0.05", "train.lr_g=0.01", "train.lr_d=0.01"]


class _StopAt(Exception):
    pass


class StopAfter(Hooks):
    def report(self, metrics, checkpoint_dir):
        if metrics["step"] == 2:  # mid ADA interval (4 D steps): its partial sums must travel too
            raise _StopAt


def config(run_dir: Path, root: str):
    return check_config(load_config([*TINY, f"dataset.root={root}"], str(run_dir)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion_root):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("sg2")
    train_worker(config(tmp / "straight", fashion_root))
    with pytest.raises(_StopAt):
        train_worker(config(tmp / "resumed", fashion_root), StopAfter())
    stopped = checkpoint.load(tmp / "resumed" / "checkpoints")
    train_worker(config(tmp / "resumed", fashion_root))  # resume=auto: from step 2
    return tmp, stopped


def test_a_resumed_run_continues_p_the_path_length_mean_and_the_draws_exactly(runs):
    tmp, stopped = runs
    assert stopped["step"] == 2 and stopped["augment"]["count"] == 2 * 8  # two D steps into the interval
    a, b = (checkpoint.load(tmp / run / "checkpoints") for run in ("straight", "resumed"))
    assert a["step"] == b["step"] == 6
    for net in ("G", "D", "G_ema"):
        for name in a[net]:
            torch.testing.assert_close(a[net][name], b[net][name], rtol=0, atol=0, msg=f"{net}.{name}")
    assert a["augment"] == b["augment"] and a["path_length"] == b["path_length"]
    assert a["augment"]["p"] not in (0.0, 0.3) and a["path_length"]["pl_mean"] > 0  # p moved; PL ran
    assert a["G"]["mapping.w_avg"].abs().sum() > 0


def test_tensorboard_and_metrics_show_p_rt_and_the_path_length(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _ = runs
    run = tmp / "straight"
    tags = {}
    for name in ("global", "rank0"):
        acc = EventAccumulator(str(run / "tb" / name), size_guidance={"scalars": 0})
        acc.Reload()
        tags[name] = {t: [e.step for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    assert tags["global"]["aug/p"] == [2, 4, 6] and tags["global"]["aug/rt"] == [4, 6]  # from the 1st update
    assert tags["rank0"]["loss/PL"] == [2, 4, 6] and tags["rank0"]["loss/R1"] == [2, 4, 6]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["aug/p"] for x in lines][:1] == [0.3] and lines[-1]["aug/p"] == checkpoint.load(
        run / "checkpoints")["augment"]["p"]


def test_sampling_truncates_towards_w_avg_with_constant_noise(runs, tmp_path, capsys, monkeypatch):
    tmp, _ = runs
    monkeypatch.chdir(tmp_path)
    out = {}
    for psi in ("1.0", "0.5", "0"):
        code, text, err = run_in_process("sample", f"checkpoint={tmp / 'straight'}", "num_samples=6",
                                         f"out=s{psi}.npy", f"truncation={psi}", capsys=capsys)
        assert code == 0, err
        out[psi] = np.load(tmp_path / f"s{psi}.npy")
    assert "truncation 0" in text
    assert out["0"].shape == (6, 1, 32, 32)
    assert np.abs(out["0"] - out["0"][:1]).max() == 0  # psi 0: every sample is G(w_avg), noise constant
    assert np.abs(out["1.0"] - out["1.0"][:1]).max() > 1e-3  # psi 1: the latents differ
    assert 0 < np.abs(out["0.5"] - out["1.0"]).max()
    code, _, _ = run_in_process("sample", f"checkpoint={tmp / 'straight'}", "num_samples=6", "out=again.npy",
                                capsys=capsys)
    assert code == 0 and np.array_equal(np.load(tmp_path / "again.npy"), out["1.0"])  # constant noise: repeatable
