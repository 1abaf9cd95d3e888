"""``prepare`` (distgan/data/prepare.py): a folder or zip of images -> a StyleGAN2-ADA zip, its skips and its
atomic write, on data made here with PIL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distgan.data.image_files import FolderDataset, ZipDataset
from distgan.data.prepare import prepare
from distgan.errors import UserError
from distgan.testing.images import TREE_IMAGES, truncated_png
from distgan.testing.images import alive as _alive
from distgan.testing.images import random_image as _random_image
from tests.test_sample_evaluate import run_in_process

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = TREE_IMAGES  # + the grayscale and the RGBA one
torch.set_num_threads(1)


def _items(ds, idx=None):
    return [ds.item(i) for i in (range(len(ds)) if idx is None else idx)]


def _same_items(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and la == lb for (x, la), (y, lb) in zip(a, b))


def test_prepared_zip_is_stylegan_format_and_matches_the_folder(tree, prepared, tmp_path):
    with zipfile.ZipFile(prepared) as zf:
        names = zf.namelist()
        doc = json.loads(zf.read("dataset.json"))
        assert names[0] == "00000/img00000000.png" and names[-1] == "dataset.json"
        assert all(Image.open(zf.open(n)).size == (32, 32) for n in names[:-1:37])
    assert [n for n, _ in doc["labels"]] == names[:-1] and doc["classes"] == ["bird", "cat", "dog"]
    ds = ZipDataset(prepared, progress=False)
    assert ds.resolution == 32 and ds.num_classes == 3 and ds.index.labels_from == "dataset.json"
    assert _same_items(_items(ds), _items(FolderDataset(tree, resolution=32, progress=False)))


def test_prepare_skips_unreadable_and_tiny_files_and_counts_them(tree, tmp_path):
    src = shutil.copytree(tree, tmp_path / "src")
    (src / "cat" / "garbage.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    truncated_png(src / "dog" / "cut.png", np.random.default_rng(2))
    _random_image(np.random.default_rng(3), 4, 5).save(src / "bird" / "tiny.png")
    s = prepare(src, tmp_path / "out.zip", 32, workers=1, progress=False)  # tiny: shorter side < 32 // 4
    assert s.images == N_IMAGES + 2 and s.skipped == 3
    assert sorted(Path(n.split(":")[-1]).name for n, _ in s.unreadable) == ["cut.png", "garbage.jpg"]
    assert [Path(n).name for n, *_ in s.tiny] == ["tiny.png"] and "skipped 2 unreadable and 1 tiny" in str(s)
    assert ZipDataset(tmp_path / "out.zip", progress=False).shape == (3, 32, 32)
    with pytest.raises(UserError, match="exists"):
        prepare(src, tmp_path / "out.zip", 32, progress=False)
    s = prepare(src, tmp_path / "out.zip", 32, workers=1, labels=False, overwrite=True, progress=False)
    assert s.num_classes == 0 and ZipDataset(tmp_path / "out.zip", progress=False).num_classes == 0


KILLED_PREPARE = """
import multiprocessing, os, sys, time, zipfile
from distgan.data.prepare import prepare
real, marker, count = zipfile.ZipFile.writestr, sys.argv[3], [0]
def slow(self, *a, **k):
    count[0] += 1
    if count[0] == 20:  # mid-write: tell the test who the pool workers are, then hang until killed
        with open(marker + ".tmp", "w") as f:
            f.write(" ".join(str(p.pid) for p in multiprocessing.active_children()))
        os.replace(marker + ".tmp", marker)
        time.sleep(600)
    return real(self, *a, **k)
zipfile.ZipFile.writestr = slow
prepare(sys.argv[1], sys.argv[2], 32, workers=2, progress=False)
"""


def test_a_killed_prepare_leaves_no_zip_and_no_workers(tree, tmp_path):
    dest, marker = tmp_path / "killed.zip", tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PREPARE, str(tree), str(dest), str(marker)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"prepare never reached the middle of its write (rc {proc.poll()})"
    temps = list(tmp_path.glob(".killed.zip.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0 and not dest.exists()
    workers = [int(p) for p in marker.read_text().split()]
    assert workers, "the pool had no workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not dest.exists()
    deadline = time.time() + 10
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "prepare's pool workers outlived it"
    s = prepare(tree, dest, 32, workers=1, progress=False)  # the next run cleans up and completes
    assert s.images == N_IMAGES + 2 and not list(tmp_path.glob(".killed.zip.*.tmp"))




def test_bad_input_is_one_line_and_writes_nothing(tree, tmp_path):
    (tmp_path / "exists.zip").write_bytes(b"keep me")
    cases = [(lambda: prepare(tree, tmp_path / "x.zip", 2048, progress=False), "power of two"),
             (lambda: prepare(tmp_path / "missing", tmp_path / "x.zip", 32, progress=False), "does not exist"),
             (lambda: prepare(tree, tmp_path / "x.tar", 32, progress=False), "must end in .zip"),
             (lambda: prepare(tree, tmp_path / "no" / "x.zip", 32, progress=False), "does not exist"),
             (lambda: prepare(tree, tmp_path / "exists.zip", 32, progress=False), "overwrite=true")]
    for make, message in cases:
        with pytest.raises(UserError, match=message) as err:
            make()
        assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.zip"]
    assert (tmp_path / "exists.zip").read_bytes() == b"keep me"


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """``launch/prepare_dataset.py`` in this process, through the same one-line error wrapper."""
    return run_in_process("prepare_dataset", *args, capsys=capsys)


def test_the_command_prints_a_summary_and_every_skipped_file(tree, tmp_path, capsys):
    src = shutil.copytree(tree, tmp_path / "src")
    (src / "cat" / "garbage.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _random_image(np.random.default_rng(3), 4, 5).save(src / "bird" / "tiny.png")
    dest = tmp_path / "out.zip"
    code, out, err = _cli(capsys, f"source={src}", f"dest={dest}", "resolution=32", "workers=2", "channels=1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"wrote {N_IMAGES + 2} images (1x32x32, 3 classes) to {dest} in {lines[0].split(' in ')[1]}"
    assert lines[0].endswith("; skipped 1 unreadable and 1 tiny files")
    assert lines[1].startswith(f"skipped (unreadable): {src / 'cat' / 'garbage.jpg'}: ")
    assert lines[2] == f"skipped (tiny, 4x5 px): {src / 'bird' / 'tiny.png'}"
    assert lines[3] == f"train on it: python launch/run.py dataset=zip dataset.root={dest}"
    assert "prepare out.zip: 100%" in err and "img/s" in err  # the progress bar (its ETA while it runs)
    assert ZipDataset(dest, progress=False).shape == (1, 32, 32)
    for args, message in ((["resolution=16"], "missing source=..., dest=..."),
                          ([f"source={src}", f"dest={dest}", "resolution=16"], "overwrite=true"),
                          ([f"source={src}", f"dest={tmp_path / 'b.zip'}", "resolution=100"], "power of two"),
                          ([f"source={src}", f"dest={tmp_path / 'b.zip'}", "resolution=16", "channels=2"], "channels"),
                          (["src=x"], "unknown argument 'src=x'")):
        code, out, err = _cli(capsys, *args, "progress=false")
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "b.zip").exists()
