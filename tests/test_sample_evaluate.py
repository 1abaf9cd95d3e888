"""``launch/sample.py`` and ``launch/evaluate.py`` as a user runs them (subprocesses), on checkpoints
from short in-process runs; bad input gives one ``error:`` line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan.config import Config
from distgan.metrics.mixture import mode_metrics
from distgan.train import train_worker

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, str(ROOT / "launch" / f"{name}.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def run_in_process(name: str, *args: str, capsys) -> tuple[int, str, str]:
    """The script's ``main`` through the same error wrapper, in this process (no interpreter start-up)."""
    import importlib.util

    from distgan import cli

    spec = importlib.util.spec_from_file_location(f"launch_{name}", ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = 0
    argv, sys.argv = sys.argv, [name, *args]
    try:
        cli.run_main(module.main)
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_run(run_dir: Path, dataset: str, root: str | None = None, conditional: bool = False) -> Path:
    cfg = Config()
    cfg.run_dir, cfg.resume = str(run_dir), "never"
    cfg.dataset.name, cfg.dataset.root, cfg.dataset.num_samples = dataset, root, 2000
    cfg.model.name = "mlp" if dataset == "ring" else "dcgan"
    cfg.model.width, cfg.model.latent_dim, cfg.model.conditional = 8, 8, conditional
    t = cfg.train
    t.steps, t.batch_size, t.ema_kimg = 6, 20, 0.1
    t.log_every = t.sample_every = t.checkpoint_every = 6
    train_worker(cfg)
    return run_dir


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_run(tmp_path_factory.mktemp("ring"), "ring")


def test_sample_npy_and_png_from_a_2d_checkpoint(ring_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = run_script("sample", f"checkpoint={ring_run}", "num_samples=2500", f"out={tmp_path}/s.npy", "seed=4")
    assert out.returncode == 0, out.stderr
    points = np.load(tmp_path / "s.npy")
    assert points.shape == (2500, 2) and points.dtype == np.float32
    # evaluate.py scores exactly these samples: same latents for the same (seed, sample index)
    ev = run_script("evaluate", f"checkpoint={ring_run}/checkpoints/latest", "seed=4", "--json")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["metrics"] == mode_metrics(torch.from_numpy(points), "ring")
    assert report["step"] == 6 and report["generator"] == "G_ema" and report["num_samples"] == 2500
    code, table, _ = run_in_process("evaluate", f"checkpoint={ring_run}", "seed=4", capsys=capsys)
    assert code == 0 and "reverse_kl" in table and "modes" in table
    os.chdir(tmp_path)
    code, _, err = run_in_process("sample", f"checkpoint={ring_run}/checkpoints/step_0000006", "out=grid.png",
                                  capsys=capsys)
    assert code == 0, err
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (320, 320)  # samples.render_points canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "s.npy"]  # nothing else written


@pytest.mark.parametrize("args, message", [
    (["checkpoint=/nonexistent/run", "out=x.npy"], "does not exist"),
    (["checkpoint={empty}", "out=x.npy"], "holds no checkpoint"),
    (["checkpoint={corrupt}", "out=x.npy"], "corrupt"),
    (["checkpoint={run}", "out=x.jpg"], ".png"),
    (["checkpoint={run}", "out=x.npy", "label=1"], "not class-conditional"),
    (["checkpoint={run}", "out=x.npy", "truncation=0.7"], "no mapping network"),
    (["checkpoint={run}", "out=x.npy", "colour=red"], "unknown argument"),
    (["out=x.npy"], "missing checkpoint"),
])
def test_bad_input_is_one_line_and_exit_2(ring_run, tmp_path, args, message, capsys, monkeypatch):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "state.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", corrupt=corrupt, run=ring_run) for a in args]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_in_process("sample", *args, capsys=capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "x.jpg").exists()


@pytest.mark.parametrize("script, extra", [("sample", "out={}/x.npy"), ("evaluate", "--json")])
def test_bad_checkpoint_through_the_real_cli(tmp_path, script, extra):
    out = run_script(script, f"checkpoint={tmp_path}/missing", extra.format(tmp_path))
    assert out.returncode == 2 and out.stderr.startswith("error: checkpoint") and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_image_checkpoint_conditional_sampling_and_evaluation(tmp_path, fashion_root, capsys):
    torch.set_num_threads(1)
    run = tiny_run(tmp_path / "run", "fashion_mnist", fashion_root, conditional=True)
    out = run_script("sample", f"checkpoint={run}", "num_samples=12", f"out={tmp_path}/s.npy", "label=3")
    assert out.returncode == 0, out.stderr
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (12, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    code, _, err = run_in_process("sample", f"checkpoint={run}", f"out={tmp_path}/t.npy", "label=10", capsys=capsys)
    assert code == 2 and "0..9" in err
    code, _, _ = run_in_process("sample", f"checkpoint={run}", "num_samples=20", f"out={tmp_path}/g.png",
                                capsys=capsys)
    from PIL import Image

    assert code == 0 and Image.open(tmp_path / "g.png").size == (10 * 30 + 2, 2 * 30 + 2)  # a class per row
    ev = run_script("evaluate", f"checkpoint={run}", "metrics.num_samples=200", "--json", "classifier.epochs=1",
                    "classifier.width=8", "classifier.train_samples=2000", "classifier.real_samples=300",
                    env={"DISTGAN_CLASSIFIER_CACHE": str(tmp_path / "cache")})
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    m = report["metrics"]
    assert m["fd"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["classes"] <= 10
    assert 0 < report["classifier_test_accuracy"] <= 1
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # the classifier and the real features


@pytest.mark.parametrize("shape", [(3, 20, 30), (1, 20, 30), (20, 30)])
def test_png_pixels_are_torchvisions(tmp_path, shape):
    """save_png writes with PIL (no torchvision import at load); the pixels are what save_image wrote."""
    from PIL import Image
    from torchvision.utils import save_image

    from distgan.samples import save_png

    picture = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1  # some out of [0, 1]
    save_png(picture, tmp_path / "ours.png")
    save_image(picture, tmp_path / "torchvision.png")
    ours, theirs = (Image.open(tmp_path / f"{n}.png") for n in ("ours", "torchvision"))
    assert ours.mode == theirs.mode == "RGB"
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_training_module_loads_without_torchvision():
    """torchvision's import pulls in torch._dynamo (~1.5 s): the loop's modules leave it until a grid is drawn."""
    code = "import sys, distgan.train, distgan.launcher.preflight; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
