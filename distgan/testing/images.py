"""Image data made on the spot for tests and benchmarks, in every format distgan reads: folders of PNG and
JPEG files (mixed sizes, grayscale, RGBA, damaged files), zips of them, MNIST's idx files and CIFAR-10's
python batches. Nothing is downloaded."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "bird")


def random_image(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


TREE_IMAGES = 240  # the tests' standard tree (tests/conftest.py: the `tree` fixture), + the two extras


def make_tree(root: Path, n: int, seed: int = 0, sizes: tuple[int, int] = (20, 40), extras: bool = True) -> Path:
    """``n`` images in cat/ dog/ bird/, JPEG and PNG in turn, sides in ``sizes`` (not all square); with
    ``extras`` also one grayscale (cat/gray.png, 32 px) and one RGBA PNG (dog/rgba.png, 24x30)."""
    rng = np.random.default_rng(seed)
    lo, hi = sizes
    span = hi - lo + 1
    for k in range(n):
        d = root / CLASSES[k % 3]
        d.mkdir(parents=True, exist_ok=True)
        img = random_image(rng, lo + k % span, lo + (k * 7) % span)
        img.save(d / f"{k:04d}.{'jpg' if k % 2 else 'png'}")
    if extras:
        random_image(rng, 32, 32, "L").save(root / "cat" / "gray.png")
        random_image(rng, 24, 30, "RGBA").save(root / "dog" / "rgba.png")
    return root


def make_flat(root: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """``n`` square PNGs straight in ``root``: an unlabelled folder."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        random_image(rng, size, size).save(root / f"{k:04d}.png")
    return root


def zip_tree(tree: Path, dest: Path) -> Path:
    """The tree's files as a zip, verbatim (PNGs deflated, JPEGs stored: both kinds are read)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                method = zipfile.ZIP_DEFLATED if p.suffix == ".png" else zipfile.ZIP_STORED
                zf.write(p, p.relative_to(tree).as_posix(), compress_type=method)
    return dest


def truncated_png(path: Path, rng: np.random.Generator, size: int = 32) -> None:
    """A PNG whose header reads fine but whose pixel data is cut: it fails only when decoded."""
    random_image(rng, size, size).save(path)
    truncate(path)


def truncate(path: Path) -> None:
    """Cut a file in half, in place (its folder's mtime does not change: only entries change that)."""
    data = path.read_bytes()
    with open(path, "r+b") as f:
        f.truncate(len(data) // 2)


def write_mnist(root: Path, n: int, folder: str = "MNIST", seed: int = 0) -> Path:
    """``root/<folder>/raw`` with MNIST's four idx files (``n`` training and ``n // 2`` test images, 28 px)."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n), ("t10k", max(n // 2, 1))):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x803, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, count) + labels.tobytes())
    return root


def write_cifar10(root: Path, per_batch: int, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` as CIFAR-10's python version lays it out: data_batch_1..5 and test_batch
    (pickled dicts of an (N, 3072) uint8 array and a label list) and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in np.arange(per_batch) % 10]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
