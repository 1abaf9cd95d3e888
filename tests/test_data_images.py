"""Streamed image datasets, reading side (distgan/data/{images,index,image_files}.py): the decoding policy,
the cached index, folder and zip datasets and their one-line errors, on data made here with PIL: JPEG and
PNG of mixed sizes in class subfolders, one grayscale, one RGBA, and bad files."""

from __future__ import annotations

import io
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distgan.data import ShardedSampler, index_cache
from distgan.data import index as index_mod
from distgan.data.image_files import FolderDataset, ZipDataset
from distgan.data.images import RESAMPLER, BadImageError, check_resolution, load_image
from distgan.data.index_cache import index_paths, open_index
from distgan.data.loader import BatchLoader
from distgan.errors import UserError
from distgan.testing.images import TREE_IMAGES, make_tree, png_bytes, truncated_png, zip_tree
from distgan.testing.images import random_image as _random_image

N_IMAGES = TREE_IMAGES  # + the grayscale and the RGBA one
torch.set_num_threads(1)


def _items(ds, idx=None):
    return [ds.item(i) for i in (range(len(ds)) if idx is None else idx)]


def _same_items(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and la == lb for (x, la), (y, lb) in zip(a, b))


# ----------------------------------------------------------------------------- decoding policy
def test_load_image_channels_crop_and_pinned_resampler(tmp_path):
    rng = np.random.default_rng(1)
    rgba = _random_image(rng, 32, 32, "RGBA")
    a = load_image(png_bytes(rgba), "rgba", 3, 32)
    assert torch.equal(a, torch.from_numpy(np.asarray(rgba)[:, :, :3].copy()).permute(2, 0, 1))  # alpha dropped
    gray = _random_image(rng, 32, 32, "L")
    g = load_image(png_bytes(gray), "gray", 3, 32)
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.equal(g[0], torch.from_numpy(np.asarray(gray).copy()))
    assert load_image(png_bytes(rgba), "rgba", 1, 32).shape == (1, 32, 32)
    wide = _random_image(rng, 48, 32)  # the centre 32 columns, nothing resized
    assert torch.equal(load_image(png_bytes(wide), "wide", 3, 32),
                       torch.from_numpy(np.asarray(wide)[:, 8:40].copy()).permute(2, 0, 1))
    big = _random_image(rng, 40, 50)  # centre square 40x40 at rows 5..45, then Lanczos to 16
    want = big.crop((0, 5, 40, 45)).resize((16, 16), Image.Resampling.LANCZOS)
    other = big.crop((0, 5, 40, 45)).resize((16, 16), Image.Resampling.BILINEAR)
    got = load_image(png_bytes(big), "big", 3, 16)
    assert RESAMPLER == "LANCZOS" and torch.equal(got, torch.from_numpy(np.asarray(want).copy()).permute(2, 0, 1))
    assert not torch.equal(got, torch.from_numpy(np.asarray(other).copy()).permute(2, 0, 1))
    with pytest.raises(BadImageError, match="broken.png"):
        load_image(b"garbage", "broken.png", 3, 16)
    for r in (16, 1024):
        assert check_resolution(r) == r
    for r in (8, 48, 2048, True):
        with pytest.raises(UserError, match="power of two"):
            check_resolution(r)


# ------------------------------------------------------------------------------------- index
def test_index_cache_reused_then_rebuilt_when_a_file_is_added(tree, tmp_path, monkeypatch):
    data = shutil.copytree(tree, tmp_path / "copy")
    first = open_index(data, progress=False)
    beside = index_paths(data)[0]
    assert beside.is_file() and beside.name == "copy.distgan-index.npz"
    assert len(first) == N_IMAGES + 2 and first.classes == ["bird", "cat", "dog"] and first.resampler == RESAMPLER
    assert first.sizes()[(32, 32)] >= 1 and sorted(first.modes) == ["L", "RGB", "RGBA"]
    calls = []
    real_build = index_mod.build_index
    monkeypatch.setattr(index_cache, "build_index", lambda *a, **k: calls.append(a) or real_build(*a, **k))
    again = open_index(data, progress=False)
    assert calls == [] and np.array_equal(again.names_blob, first.names_blob)
    assert [again.name(i) for i in range(3)] == [first.name(i) for i in range(3)]
    time.sleep(0.01)  # a new mtime even on coarse clocks
    _random_image(np.random.default_rng(5), 30, 30).save(data / "bird" / "new.png")
    grown = open_index(data, progress=False)
    assert len(calls) == 1 and len(grown) == N_IMAGES + 3


def test_index_falls_back_to_the_cache_folder_when_beside_is_not_writable(tree, tmp_path, monkeypatch):
    data = shutil.copytree(tree, tmp_path / "ro")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    beside, fallback = index_paths(data)
    real_save = index_cache.save_index

    def save(index, path):
        if path == beside:
            raise PermissionError(13, "Permission denied", str(path))
        real_save(index, path)

    monkeypatch.setattr(index_cache, "save_index", save)
    open_index(data, progress=False)
    assert not beside.exists() and fallback.is_file() and str(fallback).startswith(str(tmp_path / "cache"))
    monkeypatch.setattr(index_cache, "build_index", lambda *a, **k: pytest.fail("rebuilt despite the cache"))
    assert len(open_index(data, progress=False)) == N_IMAGES + 2


# ------------------------------------------------------------------------------- datasets
def test_folder_and_zip_give_identical_items_and_batches(tree, tmp_path):
    folder = FolderDataset(tree, resolution=32, xflip=True, progress=False)
    zipped = ZipDataset(zip_tree(tree, tmp_path / "tree.zip"), resolution=32, xflip=True, one_size=False,
                        progress=False)
    assert folder.shape == zipped.shape == (3, 32, 32) and folder.num_classes == zipped.num_classes == 3
    assert len(folder) == len(zipped) == 2 * (N_IMAGES + 2)
    assert _same_items(_items(folder), _items(zipped))
    n = folder.num_images
    x, y = folder.item(n + 5)
    assert torch.equal(x, folder.item(5)[0].flip(-1)) and y == folder.item(5)[1]
    sampler = ShardedSampler(len(folder), 32, 0, 1, seed=3)
    a, b = BatchLoader(folder, sampler, "cpu"), BatchLoader(zipped, sampler, "cpu", num_workers=1)
    for c in range(3):
        (xa, ya), (xb, yb) = a(c), b(c)
        assert xa.dtype == torch.float32 and xa.shape == (32, 3, 32, 32) and -1 <= xa.min() < xa.max() <= 1
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.dtype == torch.int64
    a.close()
    b.close()


def test_zip64_members_and_data_descriptors_are_read(tree, tmp_path):
    """Local headers with zip64 extra fields, and members streamed with a data descriptor (sizes after the
    data): the reader takes sizes from the central directory and skips each local header's own extra."""
    files = sorted(p for p in (tree / "cat").iterdir() if p.is_file())[:12]
    path = tmp_path / "z64.zip"

    class Unseekable(io.RawIOBase):  # as a pipe: zipfile writes a data descriptor after each member
        def __init__(self, f):
            self.f = f

        def writable(self):
            return True

        def write(self, b):
            return self.f.write(b)

    with open(path, "wb") as raw, zipfile.ZipFile(Unseekable(raw), "w") as zf:
        for k, p in enumerate(files):
            info = zipfile.ZipInfo(p.name)
            info.compress_type = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)[k % 2]
            with zf.open(info, "w", force_zip64=k % 3 == 0) as f:
                f.write(p.read_bytes())
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        infos = zf.infolist()
        extra = []
        for i in infos:
            f.seek(i.header_offset + 28)
            extra.append(int.from_bytes(f.read(2), "little"))
    assert all(i.flag_bits & 0x08 for i in infos) and 0 < sum(e > 0 for e in extra) < len(infos)
    ds = ZipDataset(path, resolution=32, one_size=False, progress=False)
    want = [load_image(p, p.name, 3, 32) for p in files]
    assert all(torch.equal(ds.item(j)[0], w) for j, w in enumerate(want))


# ----------------------------------------------------------------------------- bad files, order
@pytest.fixture
def bad_tree(tmp_path) -> Path:
    root = make_tree(tmp_path / "bad", n=30, seed=4)
    truncated_png(root / "dog" / "cut.png", np.random.default_rng(6))
    return root


def test_a_file_unreadable_at_indexing_is_an_error_unless_skip_bad(bad_tree):
    (bad_tree / "cat" / "garbage.png").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=r"garbage\.png.*dataset\.skip_bad=true"):
        FolderDataset(bad_tree, resolution=32, progress=False)
    assert FolderDataset(bad_tree, resolution=32, skip_bad=True, progress=False).num_images == 33


def test_a_damaged_zip_member_is_reported_not_decoded(tree, tmp_path):
    path = zip_tree(tree, tmp_path / "damaged.zip")
    ds = ZipDataset(path, resolution=32, one_size=False, progress=False)
    j = next(j for j in range(ds.num_images) if ds.name(j).endswith(".jpg"))  # stored: its bytes are in the file
    ds.item(j)
    pos = int(ds.index.zip["offset"][j] + ds.index.zip["csize"][j] * 3 // 4)  # in the scan data, after the header
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x55]))
    with pytest.raises(BadImageError, match=r"damaged\.zip:.*\.jpg: CRC-32 mismatch"):
        ZipDataset(path, resolution=32, one_size=False, progress=False).item(j)


# ---------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_user_errors(tree, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notzip.zip").write_bytes(b"hello")
    mixed = zip_tree(tree, tmp_path / "mixed.zip")
    badjson = tmp_path / "badjson"
    badjson.mkdir()
    _random_image(np.random.default_rng(8), 16, 16).save(badjson / "a.png")
    (badjson / "dataset.json").write_text('{"labels": [["a.png"]]}')
    cases = [(lambda: FolderDataset(tmp_path / "missing"), "is not a folder"),
             (lambda: FolderDataset(tmp_path / "empty", progress=False), "no images found"),
             (lambda: ZipDataset(tmp_path / "missing.zip"), "is not a file"),
             (lambda: ZipDataset(tmp_path / "notzip.zip"), "is not a zip"),
             (lambda: ZipDataset(mixed, resolution=32, progress=False), "must be of one resolution"),
             (lambda: FolderDataset(tree, progress=False), "set dataset.resolution"),
             (lambda: FolderDataset(badjson, progress=False), "not StyleGAN's format"),
             (lambda: FolderDataset(tree, resolution=48, progress=False), "power of two")]
    for make, message in cases:
        with pytest.raises(UserError, match=message) as err:
            make()
        assert "\n" not in str(err.value)


def test_index_lists_a_flat_folder_unlabelled_and_skips_hidden_files(tmp_path):
    rng = np.random.default_rng(7)
    for k in range(5):
        _random_image(rng, 16, 16).save(tmp_path / f"{k}.png")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = FolderDataset(tmp_path, progress=False)
    assert len(ds) == 5 and ds.num_classes == 0 and ds.item(0)[1] == -1 and ds.shape == (3, 16, 16)


