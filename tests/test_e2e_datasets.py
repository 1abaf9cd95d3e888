"""Every ``dataset=`` option end to end through the real CLI (launch/run.py -> Hydra -> Ray, 2 DDP workers),
on data made here in that format: MNIST's idx files, CIFAR-10's python batches, the 2D grid, an image
folder (second start: the cached index; a file damaged since: one error line naming it and the last
checkpoint, no process left) and a zip written by launch/prepare_dataset.py (staged, mirrored, decoded by
DataLoader workers). Fashion-MNIST and the ring run through the CLI in the files named in ELSEWHERE."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distgan.compose import CONFIG_DIR
from distgan.data import DATASETS, ShardedSampler
from distgan.data.image_files import FolderDataset
from distgan.data.index_cache import index_paths
from distgan.testing.images import make_tree, truncate, write_cifar10, write_mnist

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TINY = ["cluster.num_workers=2", "model.width=4", "model.latent_dim=8", "train.steps=4", "train.batch_size=8",
        "train.log_every=2", "train.sample_every=4", "train.checkpoint_every=2", "train.num_sample_images=4"]
FORMATS = {"mnist": lambda root: write_mnist(root, 64), "cifar10": lambda root: write_cifar10(root, 12),
           "grid": lambda root: None}
ELSEWHERE = {"fashion_mnist": ("test_e2e_local.py", "fashion_root"), "ring": ("test_reliability.py", "dataset=ring")}


def run_cli(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "run.py"), *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def check_trained(run: Path, steps: list[int]) -> list[dict]:
    """A checkpoint, and every log tick in metrics.jsonl and TensorBoard with the data wait."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (run / "checkpoints" / "latest" / "state.pt").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == steps and all(x["data_wait_ms"] >= 0 for x in lines)
    acc = EventAccumulator(str(run / "tb" / "global"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("perf/data_wait_ms")] == steps
    return lines


def test_every_dataset_option_runs_through_the_cli_in_the_suite():
    covered = set(FORMATS) | {"image_folder", "zip"} | set(ELSEWHERE)
    assert covered == set(DATASETS) == {p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml")}
    for name, (test_file, marker) in ELSEWHERE.items():
        text = (ROOT / "tests" / test_file).read_text()
        assert 'launch" / "run.py"' in text and marker in text, f"{name}: no CLI run in {test_file}"


@pytest.mark.parametrize("name", FORMATS)
def test_dataset_trains_through_the_cli(name, tmp_path):
    root, run = tmp_path / "data", tmp_path / "run"
    FORMATS[name](root)
    model = ["model=mlp", "dataset.num_samples=2000"] if name == "grid" else ["model=dcgan", f"dataset.root={root}"]
    out = run_cli(f"dataset={name}", *model, *TINY, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    check_trained(run, [2, 4])


def _processes_with(text: str) -> list[int]:
    """Processes (Ray's, DataLoader workers forked from them) whose environment names ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone, or not ours
            pass
    return found


def test_image_folder_restarts_on_its_index_and_a_damaged_file_stops_the_run_in_one_line(tmp_path):
    root, run = make_tree(tmp_path / "images", 40), tmp_path / "run"  # mixed sizes, a grayscale, an RGBA
    common = ["dataset=image_folder", f"dataset.root={root}", "dataset.resolution=32", "model=dcgan", *TINY,
              f"hydra.run.dir={run}"]
    first = run_cli(*common)
    assert first.returncode == 0, first.stderr[-3000:]
    check_trained(run, [2, 4])
    index = index_paths(root)[0]
    built = index.stat().st_mtime_ns
    assert "resolution: 32" in (run / "config.yaml").read_text()

    ds = FolderDataset(root, resolution=32, progress=False)
    victim = Path(ds.name(int(ShardedSampler(len(ds), 8, 0, 1, 0).indices(4)[0])))  # drawn at step 5
    truncate(victim)  # its header still reads (and the folder's mtime is unchanged): the cached index holds
    second = run_cli(*common, "train.steps=8", "train.checkpoint_every=100", "dataset.loader_workers=1")
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-3000:]
    errors = [x for x in second.stderr.splitlines() if x.startswith("error:")]  # above it: the progress bar
    assert len(errors) == 1 and second.stderr.strip().splitlines()[-1] == errors[0], second.stderr[-3000:]
    assert "Traceback" not in second.stdout + second.stderr
    assert errors[0].startswith(f"error: cannot decode image {victim}: "), errors[0]
    assert errors[0].endswith(f"last good checkpoint: {run / 'checkpoints' / 'step_0000004'}"), errors[0]
    assert "resuming from checkpoints/step_0000004" in second.stdout
    assert index.stat().st_mtime_ns == built, "the second start rebuilt the index"
    deadline = time.time() + 30
    while _processes_with(str(run)) and time.time() < deadline:
        time.sleep(0.5)
    assert not _processes_with(str(run)), "processes of the failed run outlived it"


def test_prepared_zip_trains_through_the_cli_staged_and_mirrored(tmp_path):
    photos = make_tree(tmp_path / "photos", 40)
    (photos / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    zip_path, scratch, run = tmp_path / "data.zip", tmp_path / "scratch", tmp_path / "run"
    prep = subprocess.run([sys.executable, str(ROOT / "launch" / "prepare_dataset.py"), f"source={photos}",
                           f"dest={zip_path}", "resolution=32", "workers=2", "progress=false"],
                          capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert f"wrote 42 images (3x32x32, 3 classes) to {zip_path}" in prep.stdout
    assert f"skipped (unreadable): {photos / 'cat' / 'broken.jpg'}: " in prep.stdout
    out = run_cli("dataset=zip", f"dataset.root={zip_path}", "dataset.xflip=true", f"dataset.stage_dir={scratch}",
                  "dataset.loader_workers=1", "model=dcgan", "model.conditional=true", *TINY, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    check_trained(run, [2, 4])
    copies = list(scratch.glob("*.zip"))  # one copy for the node's two workers, verified and indexed
    assert len(copies) == 1 and hashlib.sha256(copies[0].read_bytes()).digest() == \
        hashlib.sha256(zip_path.read_bytes()).digest()
    assert index_paths(copies[0])[0].is_file()
