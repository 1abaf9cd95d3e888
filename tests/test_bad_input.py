"""Bad input through the real CLI: one ``error:`` line on stderr, a non-zero exit, no traceback, and
nothing created or submitted (docs/reliability.md, "Bad input"). Every row fails before Ray starts, so each
is ~2-3 s."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BASE = ["dataset=ring", "model=mlp", "model.width=4"]  # generated data: no dataset is unpacked anywhere


def _checkpoint(folder: Path, width: int, corrupt: bool = False) -> Path:
    """A real checkpoint of an mlp of ``width`` on 2D points (optionally with a flipped byte)."""
    from distgan import checkpoint
    from distgan.config import ModelConfig
    from distgan.models import build_models

    G, D = build_models(ModelConfig(name="mlp", width=width, latent_dim=100), (2,))
    path = checkpoint.save(folder, 10, {"G": G.state_dict(), "D": D.state_dict(), "step": 10, "data_shape": [2]})
    if corrupt:
        with open(path / checkpoint.STATE, "r+b") as f:
            f.seek(200)
            byte = f.read(1)
            f.seek(200)
            f.write(bytes([byte[0] ^ 0xFF]))
    return path


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fixtures")
    raw = root / "corrupt_mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + os.urandom(200))  # idx magic, then garbage
    _checkpoint(root / "other_arch", width=8)
    _checkpoint(root / "corrupt_ckpt", width=4, corrupt=True)
    _checkpoint(root / "corrupt_run" / "checkpoints", width=4, corrupt=True)
    (root / "a_file").write_text("not a folder")
    _image_fixtures(root)
    _untrusted_fixtures(root)
    _init_pickle(root / "sg2_32.pkl")
    return root


def _init_pickle(path: Path) -> None:
    """An NVIDIA-format snapshot of a 1-channel 32 px StyleGAN2 (tests/nvidia_pickle.py), for init= rows."""
    from distgan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
    from distgan.pretrained.nvidia import to_nvidia
    from tests import nvidia_pickle as nvp

    G, D = StyleGAN2Generator(32, 1, 256, 16, 2, z_dim=16, w_dim=16), StyleGAN2Discriminator(32, 1, 256, 16)
    nvp.write_snapshot(path, to_nvidia(G.state_dict(), "G", 32), to_nvidia(D.state_dict(), "D", 32),
                       nvp.g_kwargs(16, 16, 32, 1, 0, 2, 256, 16, None), nvp.d_kwargs(32, 1, 0, 256, 16, None, 4))


def _untrusted_fixtures(root: Path) -> None:
    """Untrusted data sets (docs/data.md, "Untrusted data sets"), made by tests/test_untrusted_data.py's
    helpers; those whose index builds are indexed here, like the folders above."""
    from distgan.data.index_cache import open_index
    from distgan.testing.images import make_flat
    from tests.test_untrusted_data import bomb_zip, good_labels, huge_png, labelled_folder, link_loops

    link_loops(root / "link_loops")
    labelled_folder(root / "label_huge", [["0000.png", 10 ** 12]] + good_labels()[1:])
    labelled_folder(root / "label_bool", [["0000.png", True]] + good_labels()[1:])
    labelled_folder(root / "label_ghost", good_labels() + [["ghost.png", 1]])
    bomb_zip(root / "bomb.zip")
    huge_png(make_flat(root / "bomb_image", 12) / "bomb.png", 20000, 20000)
    for source in ("link_loops", "bomb.zip", "bomb_image"):
        open_index(root / source, progress=False)


def _image_fixtures(root: Path) -> None:
    """Folders and zips of images, each indexed once here (as an earlier start would have): the index
    cached beside the data is the data's, and the rows check that nothing else is written."""
    from distgan.data.index_cache import open_index
    from distgan.testing.images import make_flat, make_tree, zip_tree

    make_tree(root / "images", 12, sizes=(32, 32), extras=False)  # 3 classes, 32 px
    make_flat(root / "flat", 12)  # unlabelled
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    (root / "not_a_zip.zip").write_bytes(b"PK but not really")
    zip_tree(make_tree(root / "mixed_tree", 6, extras=False), root / "mixed.zip")
    for source in ("images", "flat", "empty", "mixed.zip"):
        open_index(root / source, progress=False)


# (id, overrides; {F} is the fixtures folder, {RUN} the run directory)
ROWS = [
    ("unknown-model", ["model=foo"]),
    ("unknown-dataset", ["dataset=foo"]),
    ("unknown-loss", ["loss=foo"]),
    ("unknown-cluster", ["cluster=foo"]),
    ("unknown-key", ["train.foo=1"]),
    ("unknown-key-added", ["+train.foo=1"]),
    ("unknown-top-key", ["+foo=1"]),
    ("wrong-type", ["train.steps=abc"]),
    ("bad-syntax", ["train.steps"]),
    ("sweep-without-m", ["train.lr_d=1e-4,2e-4"]),
    ("bad-precision", ["train.precision=fp8"]),
    ("zero-steps", ["train.steps=0"]),
    ("negative-lr", ["train.lr_d=-1e-4"]),
    ("unknown-lr-decay", ["train.lr_decay=step"]),
    ("unknown-g-activation", ["model=mlp", "model.activation_g=gelu"]),
    ("g-activation-not-mlp", ["model=dcgan", "model.activation_g=relu"]),
    ("lr-decay-start-not-a-fraction", ["train.lr_decay_start=1.5"]),
    ("zero-batch", ["train.batch_size=0"]),
    ("unknown-eval-mode", ["train.eval_mode=later"]),
    ("unknown-features", ["metrics.features=resnet"]),
    ("too-few-eval-samples", ["metrics.num_samples=2"]),
    ("batch-not-divisible", ["train.batch_size=63", "cluster.num_workers=2"]),
    ("more-gpus-than-present", ["cluster.use_gpu=true"]),
    ("missing-dataset", ["dataset=mnist", "dataset.root=/nonexistent/distgan-data"]),
    ("corrupt-dataset-file", ["dataset=mnist", "dataset.root={F}/corrupt_mnist"]),
    ("folder-missing", ["dataset=image_folder", "dataset.root={F}/no_such_folder"]),
    ("folder-without-root", ["dataset=image_folder"]),
    ("folder-without-images", ["dataset=image_folder", "dataset.root={F}/empty"]),
    ("folder-given-a-zip", ["dataset=image_folder", "dataset.root={F}/mixed.zip"]),
    ("zip-missing", ["dataset=zip", "dataset.root={F}/no_such.zip"]),
    ("zip-not-a-zip", ["dataset=zip", "dataset.root={F}/not_a_zip.zip"]),
    ("zip-of-several-resolutions", ["dataset=zip", "dataset.root={F}/mixed.zip"]),
    ("resolution-not-a-power-of-two", ["dataset=image_folder", "dataset.root={F}/images", "dataset.resolution=48"]),
    ("resolution-above-1024", ["dataset=image_folder", "dataset.root={F}/images", "dataset.resolution=2048"]),
    ("model-size-not-supported", ["dataset=image_folder", "dataset.root={F}/images", "model=dcgan",
                                  "dataset.resolution=128"]),
    ("conditional-on-unlabelled-folder", ["dataset=image_folder", "dataset.root={F}/flat", "model.conditional=true"]),
    ("batch-larger-than-folder", ["dataset=image_folder", "dataset.root={F}/images", "train.batch_size=64"]),
    ("xflip-on-an-in-memory-set", ["dataset.xflip=true"]),
    ("stage-dir-for-a-folder", ["dataset=image_folder", "dataset.root={F}/images", "dataset.stage_dir={F}/scratch"]),
    ("run-dir-not-writable", ["hydra.run.dir=/proc/distgan-no-such-dir/run"]),
    ("run-dir-under-a-file", ["hydra.run.dir={F}/a_file/run"]),
    ("resume-missing", ["resume={F}/no_such_checkpoint"]),
    ("resume-corrupt", ["resume={F}/corrupt_ckpt/latest"]),
    ("resume-other-architecture", ["resume={F}/other_arch/latest"]),
    ("run-with-only-corrupt-checkpoints", ["hydra.run.dir={F}/corrupt_run"]),
    # StyleGAN2's sizes, gradient accumulation, augmentation, R2
    ("stylegan2-data-not-a-power-of-two", ["model=stylegan2", "dataset=fashion_mnist"]),
    ("stylegan2-resolution-not-a-power-of-two", ["model=stylegan2", "dataset=fashion_mnist", "dataset.resolution=32",
                                                 "model.resolution=48"]),
    ("stylegan2-resolution-not-the-datas", ["model=stylegan2", "dataset=fashion_mnist", "dataset.resolution=32",
                                            "model.resolution=64"]),
    ("stylegan2-conv-clamp-not-positive", ["model=stylegan2", "dataset=fashion_mnist", "dataset.resolution=32",
                                           "model.conv_clamp=-1"]),
    ("stylegan2-mbstd-span-not-a-multiple", ["model=stylegan2", "dataset=fashion_mnist", "dataset.resolution=32",
                                             "model.mbstd_span=6"]),
    ("batch-per-gpu-not-dividing", ["train.batch_size=64", "cluster.num_workers=2", "train.batch_per_gpu=12"]),
    ("unknown-augment", ["train.augment=stylish"]),
    ("r2-without-fakes-penalty", ["loss=hinge", "train.r2_gamma=1"]),
    # R3GAN's network and the schedules
    ("r3gan-width-not-divisible-by-cardinality", ["model=r3gan", "dataset=fashion_mnist", "dataset.resolution=32",
                                                  "model.cardinalities=[96,96,96,5]"]),
    ("r3gan-stages-not-reaching-the-data", ["model=r3gan", "dataset=fashion_mnist", "dataset.resolution=64"]),
    ("schedule-negative-length", ["train.schedule_kimg=-5"]),
    ("schedule-final-without-length", ["train.lr_final=1e-5"]),
    ("slurm-without-sbatch", ["cluster=slurm", "hydra.run.dir={RUN}"]),
    ("slurm-malformed-time", ["cluster=slurm", "+cluster.additional_parameters.time=1:2:3:4:5"]),
    # init= and train.freeze_d (issue 21); init rows run without BASE (its model=mlp would contradict the pickle)
    ("init-missing", ["init={F}/no_such.pkl"]),
    ("init-data-resolution", ["init={F}/sg2_32.pkl", "dataset=fashion_mnist"]),
    ("init-data-channels", ["init={F}/sg2_32.pkl", "dataset=image_folder", "dataset.root={F}/images",
                            "train.batch_size=8"]),
    ("init-contradicting-model-key", ["init={F}/sg2_32.pkl", "dataset=fashion_mnist", "dataset.resolution=32",
                                      "model.latent_dim=64"]),
    ("init-contradicting-model", ["init={F}/sg2_32.pkl", "model=dcgan"]),
    ("init-and-resume-path", ["init={F}/sg2_32.pkl", "resume={F}/other_arch/latest"]),
    ("freeze-d-without-blocks", ["train.freeze_d=2"]),
]


# what some rows must say (the rest: any one line)
MESSAGES = {"stylegan2-data-not-a-power-of-two": "supports 32, 64", "stylegan2-resolution-not-a-power-of-two":
            "not a power of two", "stylegan2-resolution-not-the-datas": "does not match the data",
            "batch-per-gpu-not-dividing": "does not divide the per-worker batch 32",
            "stylegan2-conv-clamp-not-positive": "model.conv_clamp must be positive",
            "stylegan2-mbstd-span-not-a-multiple": "must be a positive multiple of model.mbstd_group=4",
            "unknown-augment": "unknown train.augment", "r2-without-fakes-penalty": "no fakes penalty",
            "r3gan-width-not-divisible-by-cardinality": "not divisible by its cardinality 5",
            "r3gan-stages-not-reaching-the-data": "makes 32 px images, the data is 64 px",
            "schedule-negative-length": "train.schedule_kimg must be positive",
            "schedule-final-without-length": "set train.schedule_kimg"}

MESSAGES.update({"init-missing": "no such file", "init-data-resolution": "set dataset.resolution=32",
                 "init-data-channels": "set dataset.channels=1",
                 "init-contradicting-model-key": "model.latent_dim=64 contradicts",
                 "init-contradicting-model": "model=dcgan contradicts", "init-and-resume-path": "give one",
                 "freeze-d-without-blocks": "model=mlp has none"})


# untrusted data sets (issue 23; fixtures: _untrusted_fixtures)
ROWS += [
    ("folder-of-symlink-loops", ["dataset=image_folder", "dataset.root={F}/link_loops"]),
    ("labels-huge", ["dataset=image_folder", "dataset.root={F}/label_huge"]),
    ("labels-boolean", ["dataset=image_folder", "dataset.root={F}/label_bool"]),
    ("labels-for-a-missing-file", ["dataset=image_folder", "dataset.root={F}/label_ghost"]),
    ("zip-deflate-bomb", ["dataset=zip", "dataset.root={F}/bomb.zip"]),
    ("decompression-bomb-image", ["dataset=image_folder", "dataset.root={F}/bomb_image"]),
]
MESSAGES.update({"folder-of-symlink-loops": "6 entries skipped, e.g. a.png (a symbolic link loop)",
                 "labels-huge": 'label_huge/dataset.json: the label of "0000.png" is 1000000000000; labels must be',
                 "labels-boolean": 'the label of "0000.png" is true',
                 "labels-for-a-missing-file": 'labels "ghost.png", which is not an image',
                 "zip-deflate-bomb": "e.g. bomb.png (no image header in the first 16777216 bytes",
                 "decompression-bomb-image": "e.g. bomb.png (declares 400000000 pixels, more than"})


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("overrides", [r[1] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line(overrides, fixtures, tmp_path, request):
    row = request.node.callspec.id
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DISTGAN_DEBUG", None)
    if row == "more-gpus-than-present" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if row == "slurm-without-sbatch":
        env["PATH"] = str(tmp_path / "empty-bin")  # no sbatch (nor anything else) on PATH
    run_dir = tmp_path / "run"
    args = [a.format(F=fixtures, RUN=run_dir) for a in overrides]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={run_dir}")
    before_fixtures = _listing(fixtures)
    base = [] if row.startswith("init-") else BASE
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "run.py"), *base, *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(lines[0]) > len("error: ") + 15, lines[0]  # says something
    assert MESSAGES.get(row, "") in lines[0], lines[0]
    assert not run_dir.exists(), f"left behind: {_listing(run_dir)}"
    assert _listing(tmp_path) == set(), f"created: {_listing(tmp_path)}"
    assert _listing(fixtures) == before_fixtures, "changed files of an existing run or checkpoint"


def test_debug_keeps_the_traceback(tmp_path):
    """``HYDRA_FULL_ERROR=1`` is the documented way back to the full error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "run.py"), *BASE, "train.steps=0",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "train.steps must be positive" in proc.stderr
