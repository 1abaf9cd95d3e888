"""``launch/video.py`` (latent walks, training timelapses), ``launch/style_mix.py`` and the truncation sweep
of ``launch/sample.py`` on tiny checkpoints made here: frame counts and sizes read back with imageio, the
timelapse's order, the style-mixing layout; bad input is one ``error:`` line with nothing written."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from distgan import checkpoint
from distgan.config import Config, to_dict
from distgan.latents import loop_walk, parse_seeds, seed_z, slerp
from distgan.models import build_models
from distgan.state import TrainState
from tests.test_sample_evaluate import run_in_process, run_script

RES = 32


def make_checkpoint(folder: Path, model: str = "stylegan2", channels: int = 3, seed: int = 0) -> Path:
    """A freshly initialised, untrained generator saved as a distgan checkpoint (no training: fast).
    StyleGAN2's w_avg is set to the mean w of 256 latents, so truncation means something."""
    torch.manual_seed(seed)
    cfg = Config()
    cfg.dataset.name, cfg.dataset.resolution = "fashion_mnist", RES
    m = cfg.model
    m.name, m.latent_dim = model, 16
    if model == "stylegan2":
        m.w_dim, m.channel_base, m.channel_max, m.mapping_layers, m.norm_g, m.norm_d = 16, 256, 16, 2, "none", "none"
    else:
        m.width = 8
    shape = (channels, RES, RES)
    G, D = build_models(m, shape, 0)
    if model == "stylegan2":
        with torch.no_grad():
            G.mapping.w_avg.copy_(G.mapping(torch.randn(256, m.latent_dim))[:, 0].mean(0))
            for name, p in G.named_parameters():  # untrained noise strengths are 0: give the noise maps a say
                if name.endswith("noise_strength"):
                    p.fill_(0.1)
    state = TrainState(G=G.state_dict(), D=D.state_dict(), step=100, config=to_dict(cfg), data_shape=list(shape))
    return checkpoint.save(folder / "checkpoints", 100, state.to_dict())


@pytest.fixture(scope="module")
def sg2(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_checkpoint(tmp_path_factory.mktemp("sg2"))


@pytest.fixture(scope="module")
def dcgan(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("dcgan"), model="dcgan", channels=1)


def read_frames(path: Path) -> list[np.ndarray]:
    return [np.asarray(f)[..., :3] for f in iio.mimread(path, memtest=False)]


# ------------------------------------------------------------------------------------------ latents
def test_seed_parsing_and_nvidia_convention():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,5,9-11") == [1, 5, 9, 10, 11]
    assert parse_seeds(7) == [7]
    z = seed_z([85], 16)
    assert torch.equal(z[0], torch.from_numpy(np.random.RandomState(85).randn(16)).float())


def test_slerp_keeps_the_ends_and_the_norm():
    a, b = torch.randn(2, 64), torch.randn(2, 64)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid.norm(dim=1), (a.norm(dim=1) + b.norm(dim=1)) / 2, atol=1e-4)
    walk = loop_walk(a, 4, spherical=True)
    assert walk.shape == (8, 64) and torch.equal(walk[0], a[0]) and torch.equal(walk[4], a[1])


# ------------------------------------------------------------------------------------- latent walks
def test_walk_mp4_frame_count_size_and_content(sg2, tmp_path, monkeypatch):
    out = tmp_path / "walk.mp4"
    proc = run_script("video", f"checkpoint={sg2}", "seeds=0-3", "frames=3", "grid=2x1", f"out={out}", "fps=10")
    assert proc.returncode == 0, proc.stderr
    reader = iio.get_reader(out)
    assert reader.get_meta_data()["fps"] == 10
    frames = read_frames(out)
    assert len(frames) == 2 * 3  # 2 seeds per walk x 3 frames each, looping back
    assert frames[0].shape == (RES, 2 * RES, 3)
    # frame 0: cell 0 shows seed 0, cell 1 seed 2 (seeds dealt out in order); H.264 is lossy
    from distgan.cli import load_generator
    from distgan.commands.video import to_uint8

    G, _, _ = load_generator(str(sg2))
    want = to_uint8(G(seed_z([0, 2], 16)))
    got = frames[0].astype(np.float32)
    def err(a, b):
        return float(np.abs(a - b.astype(np.float32)).mean())

    assert err(got[:, :RES], want[0]) < 0.5 * err(got[:, :RES], want[1])
    assert err(got[:, RES:], want[1]) < 0.5 * err(got[:, RES:], want[0])
    assert list(tmp_path.iterdir()) == [out]  # no scratch file left beside it


def test_walk_gif_in_w_with_truncation(sg2, tmp_path, capsys):
    out = tmp_path / "walk.gif"
    code, stdout, err = run_in_process("video", f"checkpoint={sg2}", "seeds=3,4,5", "frames=2", "space=w",
                                       "truncation=0.5", f"out={out}", capsys=capsys)
    assert code == 0, err
    frames = read_frames(out)
    assert len(frames) == 6 and frames[0].shape == (RES, RES, 3)
    assert "6 frames" in stdout and "w space" in stdout


def test_walk_of_a_grayscale_dcgan(dcgan, tmp_path, capsys):
    out = tmp_path / "d.gif"
    code, _, err = run_in_process("video", f"checkpoint={dcgan}", "seeds=0-1", "frames=2", f"out={out}",
                                  capsys=capsys)
    assert code == 0, err
    assert len(read_frames(out)) == 4


# ---------------------------------------------------------------------------------------- timelapse
def test_timelapse_is_in_step_order_with_captions(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  batch_size: 64\n")
    steps = [1000, 20, 300, 10000000]  # file names do not sort by step once the number outgrows its padding
    for i, step in enumerate(sorted(steps)):
        Image.new("RGB", (34, 34), (40 * (i + 1),) * 3).save(run / "samples" / f"step_{step:07d}.png")
    (run / "samples" / "notes.txt").write_text("not a grid")
    out = tmp_path / "progress.gif"
    code, stdout, err = run_in_process("video", f"run={run}", f"out={out}", "fps=4", capsys=capsys)
    assert code == 0, err
    frames = read_frames(out)
    assert len(frames) == 4 and frames[0].shape == (34 + 14, 34, 3)
    levels = [float(f[:34].mean()) for f in frames]
    assert levels == sorted(levels) and levels[0] < levels[-1]
    assert all(f[34:].max() > 128 for f in frames)  # the caption band carries white text
    assert "steps 20..10000000" in stdout


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, words", [
    (["seeds=5-2"], "runs backwards"),
    (["seeds=a"], "not a seed"),
    (["grid=2x2", "seeds=0-2"], "multiple of 4"),
    (["out={tmp}/walk.avi"], ".mp4 or .gif"),
    (["space=w", "checkpoint={dcgan}"], "no mapping network"),
    (["truncation=0.5", "checkpoint={dcgan}"], "no mapping network"),
    (["run={tmp}"], "one of them"),
    (["checkpoint={tmp}/nothing"], "checkpoint"),
])
def test_bad_video_input_is_one_line_and_writes_nothing(args, words, sg2, dcgan, tmp_path, capsys):
    given = {a.split("=")[0]: a.format(tmp=tmp_path, dcgan=dcgan) for a in args}
    argv = {"checkpoint": f"checkpoint={sg2}", "out": f"out={tmp_path}/walk.mp4", **given}
    code, _, err = run_in_process("video", *argv.values(), capsys=capsys)
    assert code == 2, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []


def test_timelapse_of_a_folder_without_grids(tmp_path, capsys):
    code, _, err = run_in_process("video", f"run={tmp_path}", f"out={tmp_path}/p.mp4", capsys=capsys)
    assert code == 2 and "no sample grids" in err and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- style mixing
def cells(path: Path, n_rows: int, n_cols: int) -> np.ndarray:
    """A figure's tiles: (rows + 1, cols + 1, RES, RES, 3)."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    assert img.shape == ((n_rows + 1) * RES, (n_cols + 1) * RES, 3)
    return img.reshape(n_rows + 1, RES, n_cols + 1, RES, 3).transpose(0, 2, 1, 3, 4)


def test_style_mix_layout(sg2, tmp_path, capsys):
    # styles empty: every cell is its row seed's image (the row's coarse styles, and all the rest, are its own)
    code, _, err = run_in_process("style_mix", f"checkpoint={sg2}", "rows=85,100", "cols=55,821,1789", "styles=",
                                  f"out={tmp_path}/none.png", capsys=capsys)
    assert code == 0, err
    t = cells(tmp_path / "none.png", 2, 3)
    assert t[0, 0].max() == 0  # blank corner
    for r in (1, 2):
        for c in (1, 2, 3):
            assert np.array_equal(t[r, c], t[r, 0])
    assert not np.array_equal(t[1, 0], t[2, 0]) and not np.array_equal(t[0, 1], t[0, 2])
    # every layer from the column: every cell is its column seed's image
    code, _, err = run_in_process("style_mix", f"checkpoint={sg2}", "rows=85,100", "cols=55,821,1789", "styles=0-7",
                                  f"out={tmp_path}/all.png", capsys=capsys)
    assert code == 0, err
    a = cells(tmp_path / "all.png", 2, 3)
    assert np.array_equal(a[:, :1], t[:, :1]) and np.array_equal(a[:1], t[:1])  # the same headers
    for r in (1, 2):
        for c in (1, 2, 3):
            assert np.abs(a[r, c] - a[0, c]).max() <= 1  # the same w's in a different batch: float noise only
    # the coarse styles alone: a mix, neither parent
    code, _, err = run_in_process("style_mix", f"checkpoint={sg2}", "rows=85", "cols=55", "styles=0-1",
                                  f"out={tmp_path}/coarse.png", capsys=capsys)
    assert code == 0, err
    m = cells(tmp_path / "coarse.png", 1, 1)
    assert not np.array_equal(m[1, 1], m[1, 0]) and not np.array_equal(m[1, 1], m[0, 1])


@pytest.mark.parametrize("args, words", [
    (["checkpoint={dcgan}"], "no mapping network"),
    (["styles=0-99"], "w layers 0..7"),
    (["rows=x"], "rows=x"),
    (["out={tmp}/mix.jpg"], ".png"),
])
def test_bad_style_mix_input(args, words, sg2, dcgan, tmp_path, capsys):
    given = {a.split("=")[0]: a.format(tmp=tmp_path, dcgan=dcgan) for a in args}
    argv = {"checkpoint": f"checkpoint={sg2}", "out": f"out={tmp_path}/mix.png", **given}
    code, _, err = run_in_process("style_mix", *argv.values(), capsys=capsys)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- truncation sweep
def test_truncation_sweep_one_row_per_psi(sg2, tmp_path, capsys):
    code, _, err = run_in_process("sample", f"checkpoint={sg2}", "num_samples=3", "truncation=1,0.5,0",
                                  f"out={tmp_path}/sweep.npy", capsys=capsys)
    assert code == 0, err
    x = torch.from_numpy(np.load(tmp_path / "sweep.npy"))
    assert x.shape == (9, 3, RES, RES)
    assert torch.allclose(x[6], x[7], atol=1e-5) and torch.allclose(x[7], x[8], atol=1e-5)  # psi 0: w_avg
    assert not torch.allclose(x[0], x[1])
    code, _, err = run_in_process("sample", f"checkpoint={sg2}", "num_samples=3", "truncation=0.5",
                                  f"out={tmp_path}/half.npy", capsys=capsys)
    assert code == 0, err
    assert torch.allclose(torch.from_numpy(np.load(tmp_path / "half.npy")), x[3:6], atol=1e-5)  # row 2 = psi 0.5
    code, _, err = run_in_process("sample", f"checkpoint={sg2}", "num_samples=3", "truncation=1,0.5",
                                  f"out={tmp_path}/sweep.png", capsys=capsys)
    assert code == 0, err
    w, h = Image.open(tmp_path / "sweep.png").size
    assert (w, h) == (2 + 3 * (RES + 2), 2 + 2 * (RES + 2))  # make_grid's 2-px padding: 3 columns, 2 rows


def test_truncation_sweep_needs_a_mapping_network(dcgan, tmp_path, capsys):
    code, _, err = run_in_process("sample", f"checkpoint={dcgan}", "truncation=1,0.5", f"out={tmp_path}/s.png",
                                  capsys=capsys)
    assert code == 2 and "no mapping network" in err and list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------- TensorBoard strip
def test_walk_strip_latents():
    from distgan.latents import walk_strip

    z = torch.randn(4, 16)
    walk, y = walk_strip(z, torch.tensor([3, 1, 2, 0]), frames=8)
    assert walk.shape == (8, 16)
    assert torch.allclose(walk[0], z[0], atol=1e-5) and torch.allclose(walk[-1], z[1], atol=1e-5)
    assert y.tolist() == [3] * 8


def test_sample_tick_writes_a_walk_strip_to_tensorboard(tmp_path, fashion_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_sample_evaluate import tiny_run

    run = tiny_run(tmp_path / "run", "fashion_mnist", root=fashion_root)
    acc = EventAccumulator(str(run / "tb" / "global"), size_guidance={"images": 0})
    acc.Reload()
    strips = acc.Images("samples/walk")
    assert [s.step for s in strips] == [6]
    assert (strips[0].width, strips[0].height) == (2 + 8 * 30, 2 + 30)  # 8 frames of 28 px, make_grid's padding


def test_layering_of_the_looking_at_code():
    """latents imports only torch, numpy and distgan.errors/rng; metrics never imports commands or cli."""
    import ast

    root = Path(__file__).resolve().parents[1] / "distgan"

    def imports(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        return names

    allowed = {"__future__", "re", "numpy", "torch", "distgan.errors", "distgan.rng"}
    assert imports(root / "latents.py") <= allowed
    for path in (root / "metrics").glob("*.py"):
        bad = {n for n in imports(path) if n.startswith(("distgan.commands", "distgan.cli"))}
        assert not bad, f"{path.name} imports {bad}"
