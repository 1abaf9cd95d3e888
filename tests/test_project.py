"""``launch/project.py`` on a tiny StyleGAN2 made here: projecting an image the model itself drew recovers
it (the perceptual distance falls well below where it starts, the pixels come close), the result round-trips
through ``projected_w.npz`` and ``launch/sample.py projected_w=``; bad input is one line, nothing written."""

from __future__ import annotations

import json

import imageio.v2 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from distgan.cli import load_generator
from distgan.latents import seed_z
from tests.test_sample_evaluate import run_in_process
from tests.test_video import RES, make_checkpoint


@pytest.fixture(scope="module")
def sg2(tmp_path_factory):
    torch.set_num_threads(2)
    return make_checkpoint(tmp_path_factory.mktemp("sg2p"))


@pytest.fixture(scope="module")
def drawn(sg2, tmp_path_factory):
    """A target the model drew (seed 7, constant noise), saved as a PNG."""
    G, _, _ = load_generator(str(sg2))
    with torch.no_grad():
        x = G(seed_z([7], 16))
    path = tmp_path_factory.mktemp("target") / "target.png"
    Image.fromarray(x[0].add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(path)
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float32)


@pytest.mark.inception
def test_projection_recovers_a_generated_image_and_round_trips(sg2, drawn, tmp_path, capsys):
    out = tmp_path / "proj"
    code, stdout, err = run_in_process("project", f"checkpoint={sg2}", f"target={drawn}", f"out={out}", "steps=30",
                                       "w_avg_samples=512", capsys=capsys)
    assert code == 0, err
    record = json.loads((out / "projection.json").read_text())
    assert record["distance"] == "inception-spatial" and "inception-spatial" in stdout
    assert record["final_distance"] < 0.75 * record["first_distance"], record
    target, proj = pixels(out / "target.png"), pixels(out / "proj.png")
    assert np.array_equal(target, pixels(drawn))
    # the start (the mean w's image) is far from the target; the projection much nearer
    G, _, _ = load_generator(str(sg2))
    with torch.no_grad():  # the projector's start: the mean of the w's it sampled
        z = torch.from_numpy(np.random.RandomState(123).randn(512, 16)).float()
        w_start = G.mapping(z)[:, :1].mean(0, keepdim=True).expand(1, G.num_ws, -1)
        start = G.synthesis(w_start)
    start = start[0].add(1).mul(127.5).round().clamp(0, 255).permute(1, 2, 0).numpy()
    assert np.abs(proj - target).mean() < 0.6 * np.abs(start - target).mean()
    # NVIDIA's layout, and sample.py draws exactly proj.png from it
    with np.load(out / "projected_w.npz") as f:
        assert f.files == ["w"] and f["w"].shape == (1, G.num_ws, 16) and f["w"].dtype == np.float32
    code, _, err = run_in_process("sample", f"checkpoint={sg2}", f"projected_w={out}/projected_w.npz",
                                  f"out={tmp_path}/back.npy", capsys=capsys)
    assert code == 0, err
    back = np.load(tmp_path / "back.npy")[0].transpose(1, 2, 0)
    assert np.abs((np.clip(back, -1, 1) + 1) * 127.5 - proj).max() <= 1.0
    assert pixels(out / "compare.png").shape == (RES, 2 * RES, 3)
    frames = iio.mimread(out / "proj.mp4", memtest=False)
    assert len(frames) == 30 and frames[0].shape == (RES, 2 * RES, 3)


@pytest.mark.parametrize("args, words", [
    (["target={tmp}/missing.png"], "does not exist"),
    (["target={gray}"], "grayscale"),
    (["checkpoint={dcgan}"], "no mapping network"),
    (["out={file}"], "is a file"),
    (["vgg16={tmp}/vgg16.pt"], "does not exist"),
    (["vgg16={file}"], "sha256"),
    (["distance=lpips"], "needs vgg16="),
])
def test_bad_project_input(args, words, sg2, drawn, tmp_path, capsys):
    ws = tmp_path / "inputs"
    ws.mkdir()
    Image.new("L", (40, 30), 128).save(ws / "gray.png")
    (ws / "file").write_text("x")
    dcgan = make_checkpoint(ws / "d", model="dcgan", channels=1) if "{dcgan}" in args[0] else None
    given = {a.split("=")[0]: a.format(tmp=tmp_path / "void", gray=ws / "gray.png", file=ws / "file", dcgan=dcgan)
             for a in args}
    argv = {"checkpoint": f"checkpoint={sg2}", "target": f"target={drawn}", "out": f"out={tmp_path}/out",
            "steps": "steps=2", **given}
    before = sorted(p.name for p in ws.iterdir())
    code, _, err = run_in_process("project", *argv.values(), capsys=capsys)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in ws.iterdir()) == before
