"""Untrusted data sets and bad samples, as a user meets them (docs/data.md, "Untrusted data sets";
docs/reliability.md, "Untrusted files"): link loops, hostile ``dataset.json`` labels, deflate bombs, a
planted index cache, decompression-bomb images, NaN samples. Each is one line (an ``error:`` or, for a
bad link, a warning), in bounded memory, and what was good is still read. The CLI rows are in
tests/test_bad_input.py; the helpers here make their fixtures too."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan.data import index as index_mod
from distgan.data import index_cache
from distgan.data.image_files import FolderDataset, ZipDataset
from distgan.data.images import BadImageError, load_image
from distgan.errors import UserError
from distgan.testing.images import make_flat, png_bytes, random_image

ROOT = Path(__file__).resolve().parents[1]
BOMB_BYTES = 2 << 30  # what the bomb member inflates to: 2 GiB, from ~2 MB


# ------------------------------------------------------------------------------------------ fixtures
def link_loops(root: Path, images: int = 0) -> Path:
    """A folder of ``images`` PNGs and every kind of bad link: one to itself, two pointing at each other,
    a folder link to itself, a link back up to the folder, and a dangling one."""
    make_flat(root, images) if images else root.mkdir(parents=True, exist_ok=True)
    os.symlink("self.png", root / "self.png")
    os.symlink("b.png", root / "a.png")
    os.symlink("a.png", root / "b.png")
    os.symlink("loopdir", root / "loopdir")
    os.symlink("..", root / "up")
    os.symlink("nothere.png", root / "dangling.png")
    return root


def labelled_folder(root: Path, labels: list, n: int = 4) -> Path:
    """``n`` PNGs with a dataset.json holding ``labels`` as given (good or bad)."""
    make_flat(root, n)
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


def good_labels(n: int = 4) -> list:
    return [[f"{k:04d}.png", k % 2] for k in range(n)]


def _zip_with(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip of (name, data as stored, size inflated, method, crc) members, written byte by byte (zipfile
    cannot store a deflated stream it did not make)."""
    body, central = b"", b""
    for name, data, size, method, crc in members:
        raw = name.encode()
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data),
                               size, len(raw), 0, 0, 0, 0, 0, len(body)) + raw
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
                            len(raw), 0) + raw + data
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(body), 0)
    path.write_bytes(body + central + end)
    return path


def bomb_zip(path: Path, header: bytes = b"", total: int = BOMB_BYTES, good: int = 0) -> Path:
    """A zip whose member ``bomb.png`` is ``header`` (e.g. a real 32x32 PNG, so that it indexes as a small
    image) followed by zeros up to ``total`` bytes: deflated in 1 MiB blocks, each flushed so the block
    repeats byte for byte (2 GiB from ~2 MB, made in milliseconds); and ``good`` real 32x32 PNGs (stored)
    before it. The bomb's CRC is not computed (2 s for 2 GiB): the reader must stop long before it would
    check one."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = 1 << 20
    block = c.compress(bytes(zeros)) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == c.compress(bytes(zeros)) + c.flush(zlib.Z_FULL_FLUSH)
    count = (total - len(header)) // zeros
    members = [(f"{k:04d}.png", png, len(png), 0, zlib.crc32(png)) for k, png in
               ((k, small_png(k + 1)) for k in range(good))]
    return _zip_with(path, members + [("bomb.png", head + block * count + c.flush(), len(header) + count * zeros,
                                       8, 0)])


def huge_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's declaration) over
    a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))
                     + chunk(b"IEND", b""))
    return path


def small_png(seed: int = 0) -> bytes:
    return png_bytes(random_image(np.random.default_rng(seed), 32, 32))


# ------------------------------------------------------------------------------------------- 3: links
def test_link_loops_and_dangling_links_are_skipped_with_one_warning(tmp_path, caplog):
    root = link_loops(tmp_path / "photos", images=4)
    with caplog.at_level(logging.WARNING, logger="distgan"):
        ds = FolderDataset(root, progress=False)
    assert len(ds) == 4 and ds.item(3)[0].shape == (3, 32, 32)  # nothing good lost
    skipped = dict(ds.index.skipped)
    assert set(skipped) == {"self.png", "a.png", "b.png", "loopdir", "up", "dangling.png"}, skipped
    assert "loop" in skipped["self.png"] and "dangling" in skipped["dangling.png"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 6 entries" in warnings[0].getMessage()
    assert "a.png (a symbolic link loop)" in warnings[0].getMessage()  # names the first, sorted


def test_a_folder_of_only_bad_links_is_one_error_line(tmp_path):
    root = link_loops(tmp_path / "photos")
    with pytest.raises(UserError) as err:
        FolderDataset(root, progress=False)
    assert "no images found" in str(err.value) and "6 entries skipped, e.g. a.png" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_link_out_of_the_folder_is_followed(tmp_path):
    """docs/data.md: links are followed wherever they point (symlink farms build data sets that way)."""
    elsewhere = make_flat(tmp_path / "shared", 2, seed=5)
    root = make_flat(tmp_path / "photos", 2)
    os.symlink(elsewhere / "0001.png", root / "linked.png")
    os.symlink(elsewhere, root / "more")
    ds = FolderDataset(root, progress=False)
    names = [ds.index.name(j) for j in range(len(ds))]
    assert names == ["0000.png", "0001.png", "linked.png", "more/0000.png", "more/0001.png"]
    assert torch.equal(ds.item(2)[0], load_image(elsewhere / "0001.png", "x", 3, 32))


# ------------------------------------------------------------------------------------------ 3: labels
BAD_LABELS = {  # id: (labels, what the line must name)
    "huge": ([["0000.png", 10 ** 12]] + good_labels()[1:], "0000.png\" is 1000000000000"),
    "boolean": ([["0000.png", True]] + good_labels()[1:], "0000.png\" is true"),
    "negative": ([["0000.png", -1]] + good_labels()[1:], "0000.png\" is -1"),
    "float": ([["0000.png", 1.0]] + good_labels()[1:], "0000.png\" is 1.0"),
    "string": ([["0000.png", "1"]] + good_labels()[1:], "0000.png\" is \"1\""),
    "at-the-bound": ([["0000.png", 4]] + good_labels()[1:], "integers from 0 to 3"),
    "missing-file": (good_labels() + [["ghost.png", 0]], "labels \"ghost.png\", which is not an image"),
    "twice": (good_labels() + [["0001.png", 0]], "labels \"0001.png\" twice"),
    "not-a-pair": (good_labels() + [["0001.png"]], "entry [\"0001.png\"] is not a [file, label] pair"),
    "not-a-list": ({"0000.png": 0}, "\"labels\" is a dict, not a list"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_a_bad_label_is_one_line_naming_the_file_and_the_entry(case, tmp_path):
    labels, says = BAD_LABELS[case]
    root = labelled_folder(tmp_path / "photos", labels)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        FolderDataset(root, progress=False)
    message = str(err.value)
    assert f"{root}/dataset.json" in message and says in message, message
    assert len(message.splitlines()) == 1 and len(message) < 400
    assert time.perf_counter() - t0 < 5  # nothing is built over the label's range
    assert not index_cache.index_paths(root)[0].exists()  # no index cached for a refused folder


def test_good_labels_still_read_and_an_unreadable_file_may_keep_its_label(tmp_path):
    root = labelled_folder(tmp_path / "photos", good_labels(4) + [["cut.png", 1]])
    (root / "cut.png").write_bytes(b"not a png")  # listed, left out as unreadable with skip_bad
    ds = FolderDataset(root, progress=False, skip_bad=True)
    assert len(ds) == 4 and ds.num_classes == 2 and [ds.item(j)[1] for j in range(4)] == [0, 1, 0, 1]


def test_a_labels_file_larger_than_its_images_can_need_is_not_read(tmp_path):
    root = labelled_folder(tmp_path / "photos", good_labels())
    (root / "dataset.json").write_text(json.dumps({"labels": good_labels(), "pad": "x" * (2 << 20)}))
    with pytest.raises(UserError, match="dataset.json is larger than"):
        FolderDataset(root, progress=False)


# ---------------------------------------------------------------------------------------- 3: zip bombs
def test_a_zip_member_past_its_images_bound_is_a_bad_image_and_memory_stays_bounded(tmp_path):
    """A member that indexes as a 32x32 PNG and inflates to 2 GiB: read in a fresh process, whose peak
    RSS over the read must stay within a small margin of its RSS before it (the bound: 16 MiB of metadata
    slack + 16 B a pixel, distgan.data.images.encoded_size_bound). The peak is the kernel's high-water
    mark (VmHWM), reset just before the read; getrusage's ru_maxrss cannot be reset and, after fork and
    exec, starts at the parent's RSS (pytest's), so it is printed but not asserted on."""
    bomb = bomb_zip(tmp_path / "bomb.zip", header=small_png())
    script = f"""
import resource, sys, time
from distgan.data.image_files import ZipDataset
from distgan.data.images import BadImageError

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

ds = ZipDataset({str(bomb)!r}, resolution=32, progress=False)
with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS (Linux >= 4.0)
    f.write("5")
before = status("VmRSS")
t0 = time.perf_counter()
try:
    ds.item(0)
except BadImageError as e:
    message = str(e)
else:
    sys.exit("decoded a bomb")
print(message)
print(before, status("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, round(time.perf_counter() - t0, 3))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    message, numbers = proc.stdout.strip().splitlines()
    before_kb, peak_kb, maxrss_kb, seconds = numbers.split()
    assert "bomb.png" in message and "a decompression bomb" in message, message
    growth_mb = (int(peak_kb) - int(before_kb)) / 1024
    print(f"deflate bomb ({BOMB_BYTES >> 30} GiB from {bomb.stat().st_size >> 10} KiB): RSS "
          f"{int(before_kb) / 1024:.0f} MB before the read, peak {int(peak_kb) / 1024:.0f} MB (+{growth_mb:.0f} MB; "
          f"ru_maxrss {int(maxrss_kb) / 1024:.0f} MB), {seconds} s")
    assert growth_mb < 100 and float(seconds) < 5


def test_prepare_skips_a_bomb_member_and_keeps_the_rest(tmp_path):
    from distgan.data.prepare import prepare

    bomb = bomb_zip(tmp_path / "bomb.zip", header=small_png(), total=64 << 20, good=2)
    s = prepare(bomb, tmp_path / "out.zip", 32, workers=1, progress=False)
    assert s.images == 2 and [Path(n).name for n, _ in s.unreadable] == ["bomb.zip:bomb.png"]
    assert "a decompression bomb" in s.unreadable[0][1]
    assert len(ZipDataset(tmp_path / "out.zip", progress=False)) == 2


def test_a_member_with_no_header_in_its_first_bytes_is_unreadable_at_indexing(tmp_path):
    bomb = bomb_zip(tmp_path / "bomb.zip")  # zeros only: no image header anywhere
    t0 = time.perf_counter()
    index = index_mod.build_index(bomb, progress=False)
    assert time.perf_counter() - t0 < 10
    assert len(index) == 0 and index.unreadable[0][0] == "bomb.png"
    assert "no image header in the first" in index.unreadable[0][1]


# ------------------------------------------------------------------------------- 3: a planted index
PLANTED = {  # id: how the names of a good cache are rewritten
    "parent": lambda names: ["../secret.png"] + names[1:],
    "absolute": lambda names: ["/tmp/secret.png"] + names[1:],
    "inner-dotdot": lambda names: ["a/../../secret.png"] + names[1:],
    "nul": lambda names: ["x\0.png"] + names[1:],
    "hidden": lambda names: [".secret.png"] + names[1:],
}


def _plant(index: index_mod.Index, names: list[str], path: Path, **changes) -> None:
    encoded = [n.encode() for n in names]
    planted = index_mod.Index(**{**index.__dict__, "names_blob": np.frombuffer(b"".join(encoded), np.uint8).copy(),
                                 "name_ends": np.cumsum([len(e) for e in encoded], dtype=np.int64), **changes})
    index_cache.save_index(planted, path)


@pytest.mark.parametrize("case", list(PLANTED))
def test_a_planted_index_naming_paths_out_of_the_folder_is_ignored_and_rebuilt(case, tmp_path, caplog):
    secret = tmp_path / "secret.png"
    random_image(np.random.default_rng(9), 32, 32).save(secret)
    root = make_flat(tmp_path / "photos", 3)
    good = index_cache.open_index(root, progress=False)
    cache = index_cache.index_paths(root)[0]
    _plant(good, PLANTED[case]([good.name(j) for j in range(len(good))]), cache)
    with caplog.at_level(logging.WARNING, logger="distgan"):
        ds = FolderDataset(root, progress=False)
    assert [ds.index.name(j) for j in range(len(ds))] == ["0000.png", "0001.png", "0002.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"ignoring the cached index {cache}:"), warnings
    assert index_cache.load_index(cache).name(0) == "0000.png"  # rebuilt over the planted one


def test_a_planted_index_of_another_folder_or_inconsistent_arrays_is_ignored(tmp_path, caplog):
    root = make_flat(tmp_path / "photos", 3)
    good = index_cache.open_index(root, progress=False)
    cache = index_cache.index_paths(root)[0]
    names = [good.name(j) for j in range(3)]
    for changes, says in (({"source": "/home/someone/photos"}, "it was built for /home/someone/photos"),
                          ({"width": np.asarray([32, 32], np.int32)}, "arrays do not fit together"),
                          ({"mode": np.asarray([0, 0, 7], np.uint8)}, "size or mode out of range")):
        _plant(good, names, cache, **changes)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="distgan"):
            assert len(index_cache.open_index(root, progress=False)) == 3
        assert says in caplog.text, caplog.text


def test_a_planted_index_declaring_a_huge_array_allocates_nothing(tmp_path, caplog):
    """An .npy header inside the cache declaring 10^12 names: refused from the header, before any read."""
    root = make_flat(tmp_path / "photos", 2)
    index_cache.open_index(root, progress=False)
    cache = index_cache.index_paths(root)[0]
    import zipfile

    with zipfile.ZipFile(cache) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    blob = members["names_blob.npy"]
    members["names_blob.npy"] = blob.replace(b"'shape': (16,)", b"'shape': (1000000000000,)")
    assert members["names_blob.npy"] != blob
    with zipfile.ZipFile(cache, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with caplog.at_level(logging.WARNING, logger="distgan"):
        assert len(index_cache.open_index(root, progress=False)) == 2
    assert "declares a shape its bytes do not hold" in caplog.text


def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(BadImageError, match="not a regular file"):
        load_image(fifo, str(fifo), 3, 32)
    assert time.perf_counter() - t0 < 2


# ------------------------------------------------------------------------------ 3: decompression bombs
@pytest.mark.parametrize("side", [9000, 20000])  # above distgan's limit (and PIL's warning); above PIL's error
def test_an_image_declaring_too_many_pixels_is_a_bad_image(side, tmp_path, recwarn):
    root = make_flat(tmp_path / "photos", 2)
    huge_png(root / "bomb.png", side, side)
    with pytest.raises(UserError) as err:
        FolderDataset(root, progress=False)
    assert "bomb.png" in str(err.value) and "decompression bomb" in str(err.value)
    ds = FolderDataset(root, progress=False, skip_bad=True)
    assert len(ds) == 2
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(root / "bomb.png", "bomb.png", 3, 32)
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


# --------------------------------------------------------------------------------------- 4: bad samples
def test_npy_samples_holding_nan_or_inf_are_one_line(tmp_path):
    from distgan.metrics.sources import npy_batches

    x = np.zeros((10, 1, 8, 8), np.float32)
    x[7, 0, 3, 3] = np.nan
    x[9, 0, 0, 0] = np.inf
    np.save(tmp_path / "s.npy", x)
    n, batches = npy_batches(tmp_path / "s.npy", batch_size=4)
    assert n == 10 and next(batches)[1].shape == (4, 1, 8, 8)  # the finite ones still read
    with pytest.raises(UserError) as err:
        list(batches)
    assert str(err.value).startswith(f"samples={tmp_path}/s.npy holds non-finite values (NaN or Inf) at sample 7 ")


def test_a_generator_producing_non_finite_images_is_one_line():
    from distgan.metrics.sources import generator_fn, index_batches

    class Broken(torch.nn.Module):
        def forward(self, z):
            x = torch.zeros(len(z), 1, 8, 8)
            x[z[:, 0] > 0] = float("nan")
            return x

    with pytest.raises(UserError, match="the generator produced non-finite images"):
        list(index_batches(generator_fn(Broken(), 4, seed=0), 16, 8))


def test_evaluating_nan_samples_through_the_cli_is_one_line(tmp_path, fashion_root):
    """``launch/evaluate.py samples=x.npy``: a NaN reached the Fréchet distance and died in a 24-line
    LinAlgError; now one line naming the sample, exit 2."""
    x = np.random.default_rng(0).uniform(-1, 1, (8, 1, 28, 28)).astype(np.float32)
    x[3, 0, 5, 5] = np.nan
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"), f"samples={tmp_path}/x.npy",
                           "dataset=fashion_mnist", f"dataset_root={fashion_root}", "metrics.features=inception",
                           "metrics.num_samples=8", "metrics.num_real=10"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path)})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == (f"error: samples={tmp_path}/x.npy holds non-finite values (NaN or Inf) at sample 3 (1 of "
                        "this batch of 8); expected N x C x H x W floats in [-1, 1]; regenerate them or drop those "
                        "samples")
    assert np.isnan(np.load(tmp_path / "x.npy")[3, 0, 5, 5])  # the file is left as it was


@pytest.mark.parametrize("bad", ["bomb", "garbage"])
def test_a_bad_file_in_a_samples_folder_is_one_line(bad, tmp_path):
    from distgan.metrics.sources import folder_batches

    folder = make_flat(tmp_path / "samples", 3)
    if bad == "bomb":
        huge_png(folder / "0001.png", 20000, 20000)
    else:
        (folder / "0001.png").write_bytes(b"not a png")
    n, batches = folder_batches(folder, batch_size=2)
    with pytest.raises(UserError) as err:
        list(batches)
    assert str(err.value).startswith(f"samples={folder}: cannot decode {folder}/0001.png: ")
    assert len(str(err.value).splitlines()) == 1


def test_a_dataset_json_bomb_in_a_zip_is_not_inflated(tmp_path):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    zipped = bomb_zip(tmp_path / "data.zip", header=small_png(), total=1 << 20, good=2)
    members = [(f"{k:04d}.png", png, len(png), 0, zlib.crc32(png)) for k, png in ((k, small_png(k + 1))
                                                                                   for k in range(2))]
    _zip_with(zipped, members + [("dataset.json", block * 1024 + c.flush(), 1 << 30, 8, 0)])
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"data.zip:dataset.json is larger than \d+ bytes"):
        ZipDataset(zipped, progress=False)
    assert time.perf_counter() - t0 < 5
