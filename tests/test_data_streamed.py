"""Streamed image datasets (distgan/data/{images,index,folder,zipdata,stream,prepare,stage}.py) on data made here
with PIL: JPEG and PNG of mixed sizes in class subfolders, one grayscale, one RGBA, and bad files."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
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

from distgan.data import ShardedSampler
from distgan.data import index as index_mod
from distgan.data import stage as stage_mod
from distgan.data.folder import FolderDataset
from distgan.data.images import RESAMPLER, BadImageError, check_resolution, load_image
from distgan.data.index import index_paths, open_index
from distgan.data.prepare import prepare
from distgan.data.stream import BatchStream, StreamOrderError
from distgan.data.zipdata import ZipDataset
from distgan.errors import UserError
from distgan.testing import gloo

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 240  # + the grayscale and the RGBA one
torch.set_num_threads(1)


def _random_image(rng, w: int, h: int, mode: str = "RGB") -> Image.Image:
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def make_tree(root: Path, n: int = N_IMAGES, seed: int = 0) -> Path:
    """n images in cat/ dog/ bird/: JPEG and PNG, 20..40 px, not all square; plus one L and one RGBA PNG."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        d = root / ("cat", "dog", "bird")[k % 3]
        d.mkdir(parents=True, exist_ok=True)
        img = _random_image(rng, 20 + k % 21, 20 + (k * 7) % 21)
        img.save(d / f"{k:04d}.{'jpg' if k % 2 else 'png'}")
    _random_image(rng, 32, 32, "L").save(root / "cat" / "gray.png")
    _random_image(rng, 24, 30, "RGBA").save(root / "dog" / "rgba.png")
    return root


def zip_tree(tree: Path, dest: Path) -> Path:
    """The tree's files as a zip, verbatim (PNGs deflated, JPEGs stored: both kinds are read)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                method = zipfile.ZIP_DEFLATED if p.suffix == ".png" else zipfile.ZIP_STORED
                zf.write(p, p.relative_to(tree).as_posix(), compress_type=method)
    return dest


def truncated_png(path: Path, rng) -> None:
    """A PNG whose header reads fine but whose pixel data is cut: fails only when decoded."""
    _random_image(rng, 32, 32).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("data") / "tree")


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("prepared") / "tree32.zip"
    prepare(tree, dest, 32, workers=2, progress=False)
    return dest


def _items(ds, idx=None):
    return [ds.item(i) for i in (range(len(ds)) if idx is None else idx)]


def _same_items(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and la == lb for (x, la), (y, lb) in zip(a, b))


# ----------------------------------------------------------------------------- decoding policy
def test_load_image_channels_crop_and_pinned_resampler(tmp_path):
    rng = np.random.default_rng(1)
    rgba = _random_image(rng, 32, 32, "RGBA")
    a = load_image(_png(rgba), "rgba", 3, 32)
    assert torch.equal(a, torch.from_numpy(np.asarray(rgba)[:, :, :3].copy()).permute(2, 0, 1))  # alpha dropped
    gray = _random_image(rng, 32, 32, "L")
    g = load_image(_png(gray), "gray", 3, 32)
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.equal(g[0], torch.from_numpy(np.asarray(gray).copy()))
    assert load_image(_png(rgba), "rgba", 1, 32).shape == (1, 32, 32)
    wide = _random_image(rng, 48, 32)  # the centre 32 columns, nothing resized
    assert torch.equal(load_image(_png(wide), "wide", 3, 32),
                       torch.from_numpy(np.asarray(wide)[:, 8:40].copy()).permute(2, 0, 1))
    big = _random_image(rng, 40, 50)  # centre square 40x40 at rows 5..45, then Lanczos to 16
    want = big.crop((0, 5, 40, 45)).resize((16, 16), Image.Resampling.LANCZOS)
    other = big.crop((0, 5, 40, 45)).resize((16, 16), Image.Resampling.BILINEAR)
    got = load_image(_png(big), "big", 3, 16)
    assert RESAMPLER == "LANCZOS" and torch.equal(got, torch.from_numpy(np.asarray(want).copy()).permute(2, 0, 1))
    assert not torch.equal(got, torch.from_numpy(np.asarray(other).copy()).permute(2, 0, 1))
    with pytest.raises(BadImageError, match="broken.png"):
        load_image(b"garbage", "broken.png", 3, 16)
    for r in (16, 1024):
        assert check_resolution(r) == r
    for r in (8, 48, 2048, True):
        with pytest.raises(UserError, match="power of two"):
            check_resolution(r)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


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
    monkeypatch.setattr(index_mod, "build_index", lambda *a, **k: calls.append(a) or real_build(*a, **k))
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
    real_save = index_mod.save_index

    def save(index, path):
        if path == beside:
            raise PermissionError(13, "Permission denied", str(path))
        real_save(index, path)

    monkeypatch.setattr(index_mod, "save_index", save)
    open_index(data, progress=False)
    assert not beside.exists() and fallback.is_file() and str(fallback).startswith(str(tmp_path / "cache"))
    monkeypatch.setattr(index_mod, "build_index", lambda *a, **k: pytest.fail("rebuilt despite the cache"))
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
    a, b = BatchStream(folder, sampler, "cpu"), BatchStream(zipped, sampler, "cpu", num_workers=1)
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


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------- world-size invariance
def _global_batches(zip_path: str, counters: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    ds = ZipDataset(zip_path, xflip=True, progress=False)
    sampler = ShardedSampler(len(ds), batch, rank, world, seed=11)
    with BatchStream(ds, sampler, "cpu", num_workers=rank % 2) as stream:  # 0 and 1 loader workers
        out = [stream(c) for c in range(counters)]
    flipped = sum(int((sampler.indices(c) >= ds.num_images).sum()) for c in range(counters))
    return out, flipped


def test_one_and_two_gloo_workers_see_the_same_global_batches_with_xflip(prepared):
    (one, flips_one), = gloo.run(_global_batches, 1, str(prepared), 4, 16)
    two = gloo.run(_global_batches, 2, str(prepared), 4, 16)
    assert flips_one > 0, "no flipped sample in the batches: the test would not see xflip"
    assert flips_one == two[0][1] + two[1][1]
    for c in range(4):
        x = torch.cat([two[0][0][c][0], two[1][0][c][0]])
        y = torch.cat([two[0][0][c][1], two[1][0][c][1]])
        assert torch.equal(x, one[c][0]) and torch.equal(y, one[c][1])


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


@pytest.mark.parametrize("workers", [0, 1])
def test_a_decode_failure_while_streaming_names_the_file(bad_tree, workers):
    ds = FolderDataset(bad_tree, resolution=32, progress=False)
    with BatchStream(ds, ShardedSampler(len(ds), len(ds), 0, 1, seed=0), "cpu", num_workers=workers) as s:
        with pytest.raises(BadImageError, match=r"dog/cut\.png.*batch 0.*dataset\.skip_bad=true"):
            s(0)


def test_skip_bad_substitutes_deterministically_and_counts(bad_tree):
    ds = FolderDataset(bad_tree, resolution=32, xflip=True, progress=False)
    bad = [i for i in range(ds.num_images) if ds.name(i).endswith("cut.png")]
    sampler = ShardedSampler(len(ds), len(ds), 0, 1, seed=0)
    batches = []
    for workers in (0, 1):
        with BatchStream(ds, sampler, "cpu", num_workers=workers, skip_bad=True) as s:
            x, _ = s(0)
            assert s.skipped == 2 and len(s.bad_files) == 1  # the image and its flip
            batches.append(x)
    assert torch.equal(batches[0], batches[1])
    order = sampler.indices(0).tolist()
    for i in (bad[0], bad[0] + ds.num_images):
        row = batches[0][order.index(i)]
        assert torch.equal(row, ds.item(i + 1)[0].float().div(127.5).sub(1.0))  # the next sample
        assert row.abs().sum() > 0


def test_out_of_order_counters_raise_and_close_stops_the_workers(tree):
    ds = FolderDataset(tree, resolution=32, progress=False)
    s = BatchStream(ds, ShardedSampler(len(ds), 8, 0, 1, seed=0), "cpu", first=5, num_workers=2)
    with pytest.raises(StreamOrderError, match="expected counter 5, got 4"):
        s(4)
    s(5)
    with pytest.raises(StreamOrderError, match="expected counter 6, got 7"):
        s(7)
    x6, y6 = s(6)  # exactly the sampler's samples of counter 6, whatever ``first`` was
    want = [ds.item(i) for i in ShardedSampler(len(ds), 8, 0, 1, seed=0).indices(6).tolist()]
    assert torch.equal(x6, torch.stack([w[0] for w in want]).float().div(127.5).sub(1.0))
    assert y6.tolist() == [w[1] for w in want]
    assert s.wait_ms >= 0 and s.take_wait_ms() > 0 and s.take_wait_ms() == 0
    pids = s.worker_pids
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    s.close()
    assert not any(_alive(p) for p in pids)
    with pytest.raises(StreamOrderError, match="closed"):
        s(7)


EXIT_WITHOUT_CLOSE = """
import sys
from distgan.data import ShardedSampler
from distgan.data.folder import FolderDataset
from distgan.data.stream import BatchStream
ds = FolderDataset(sys.argv[1], resolution=32, progress=False)
s = BatchStream(ds, ShardedSampler(len(ds), 8, 0, 1, seed=0), "cpu", num_workers=2)
s(0)
print(" ".join(map(str, s.worker_pids)))
"""


def test_a_process_that_exits_without_close_neither_hangs_nor_orphans_workers(tree):
    proc = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(tree)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


# ------------------------------------------------------------------------------------ staging
def _stage_and_log(zip_path, stage_dir, log_path, barrier):
    real = stage_mod._copy

    def counted(*a, **k):
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.2)  # hold the lock long enough for the other caller to arrive
        return real(*a, **k)

    stage_mod._copy = counted
    barrier.wait()
    print(stage_mod.stage(zip_path, stage_dir), flush=True)


def test_staging_copies_once_with_two_concurrent_callers(prepared, tmp_path):
    ZipDataset(prepared, progress=False)  # the source's index, cached beside it, travels with the copy
    ctx = mp.get_context("fork")
    barrier, log_path = ctx.Barrier(2), tmp_path / "copies"
    procs = [ctx.Process(target=_stage_and_log, args=(str(prepared), str(tmp_path / "scratch"), str(log_path),
                                                      barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log_path.read_text().split()) == 1, "the zip was copied more than once"
    dest = stage_mod.stage(prepared, tmp_path / "scratch")  # a third caller: reuses it without copying
    assert len(log_path.read_text().split()) == 1 and dest.read_bytes() == prepared.read_bytes()
    record = json.loads(dest.with_name(dest.name + ".sha256").read_text())
    assert record["sha256"] == hashlib.sha256(prepared.read_bytes()).hexdigest()
    assert not list(dest.parent.glob(".*.tmp"))
    assert index_paths(dest)[0].is_file()  # the index came along: no re-indexing on the node
    ZipDataset(dest, progress=False)
    dest.write_bytes(dest.read_bytes()[:100])  # a damaged copy is not reused
    assert stage_mod.stage(prepared, tmp_path / "scratch").read_bytes() == prepared.read_bytes()


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
             (lambda: FolderDataset(tree, resolution=48, progress=False), "power of two"),
             (lambda: prepare(tree, tmp_path / "x.zip", 2048, progress=False), "power of two"),
             (lambda: prepare(tmp_path / "missing", tmp_path / "x.zip", 32, progress=False), "does not exist")]
    for make, message in cases:
        with pytest.raises(UserError, match=message) as err:
            make()
        assert "\n" not in str(err.value)
    assert not (tmp_path / "x.zip").exists()


def test_index_lists_a_flat_folder_unlabelled_and_skips_hidden_files(tmp_path):
    rng = np.random.default_rng(7)
    for k in range(5):
        _random_image(rng, 16, 16).save(tmp_path / f"{k}.png")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = FolderDataset(tmp_path, progress=False)
    assert len(ds) == 5 and ds.num_classes == 0 and ds.item(0)[1] == -1 and ds.shape == (3, 16, 16)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

