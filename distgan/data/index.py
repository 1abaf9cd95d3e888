"""The index of an image folder or zip: every image's name, size, mode and label, built once and cached.

Listing a million files and reading their headers (never their pixels) takes minutes on a network file
system, so it is done once, by a thread pool with a progress bar, and cached:

- beside the data: ``<folder>.distgan-index.npz`` or ``<zip>.distgan-index.npz`` (a sibling file, so that
  writing it does not change the folder's own mtime, which is part of the key);
- where that is not writable: ``${XDG_CACHE_HOME:-~/.cache}/distgan/index/<hash of the path>.npz``.

A cached index is reused while its key matches (folder: the mtime of every directory listed, and of
``dataset.json``; zip: its size and mtime) and rebuilt otherwise; it is written atomically. Files whose
header cannot be read are left out and listed in ``unreadable``.

The index is a set of numpy arrays (names as one byte blob + offsets), not one Python object per file:
10^7 files take ~30 bytes each, load in a fraction of a second, and DataLoader workers forked from a
process that holds it do not copy it page by page through reference counts (pytorch/pytorch#13246).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import logging
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distgan.data.images import RESAMPLER, describe_error, is_image_name, read_header
from distgan.errors import UserError
from distgan.files import write_atomic

log = logging.getLogger("distgan")
INDEX_VERSION = 1
INDEX_SUFFIX = ".distgan-index.npz"
LABELS_FILE = "dataset.json"  # StyleGAN2-ADA's {"labels": [[name, label], ...]} or {"labels": null}
_ZIP_ARRAYS = ("offset", "csize", "method", "crc")


@dataclass
class Index:
    kind: str  # "folder" | "zip"
    source: str  # the path it was built from
    key: dict  # what must still match for the cache to be reused
    names_blob: np.ndarray  # uint8: every name (relative posix path), utf-8, concatenated in sorted order
    name_ends: np.ndarray  # int64: end of name i in names_blob
    width: np.ndarray  # int32
    height: np.ndarray  # int32
    mode: np.ndarray  # uint8 into ``modes``
    modes: list[str]
    label: np.ndarray | None  # int32 class of each image, None when unlabelled
    classes: list[str]  # class names (subfolders), or "0".."K-1" from dataset.json
    labels_from: str  # "subfolders" | "dataset.json" | "none"
    unreadable: list[list[str]] = field(default_factory=list)  # [name, reason] of files left out
    resampler: str = RESAMPLER
    zip: dict[str, np.ndarray] | None = None  # data offset, compressed size, method, crc32 of each member

    def __len__(self) -> int:
        return len(self.name_ends)

    def name(self, i: int) -> str:
        start = int(self.name_ends[i - 1]) if i else 0
        return self.names_blob[start:int(self.name_ends[i])].tobytes().decode()

    def sizes(self) -> dict[tuple[int, int], int]:
        """{(width, height): count} over all images."""
        # one int64 key per image: a flat sort, ~40x faster than unique(axis=0) at 10^7 images; same order
        keys, counts = np.unique(self.width.astype(np.int64) << 32 | self.height.astype(np.int64),
                                 return_counts=True)
        return {(int(k >> 32), int(k & 0xFFFFFFFF)): int(c) for k, c in zip(keys, counts)}

    def modes_used(self) -> list[str]:
        return [self.modes[m] for m in np.unique(self.mode)]


# ------------------------------------------------------------------------------------------ listing
def _walk(root: Path) -> tuple[list[str], dict[str, int]]:
    """Image files under ``root`` (relative posix paths, sorted) and the mtime of every directory."""
    names, dirs, seen, stack = [], {}, set(), [""]
    while stack:
        rel = stack.pop()
        st = os.stat(root / rel)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[rel] = st.st_mtime_ns
        with os.scandir(root / rel) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir():
                    stack.append(r)
                elif is_image_name(e.name) and e.is_file():
                    names.append(r)
    return sorted(names), dirs


def _labels(names: list[str], labels_json: bytes | None, where: str) -> tuple[np.ndarray | None, list[str], str]:
    """Labels from dataset.json when there is one, else from the first path component when every image
    is in a subfolder (torchvision's ImageFolder: classes in sorted order), else none."""
    if labels_json is not None:
        try:
            doc = json.loads(labels_json)
            labels, names_of_classes = doc["labels"], doc.get("classes")  # "classes": distgan's addition
            table = None if labels is None else {str(f).replace("\\", "/"): y for f, y in labels}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{where}/{LABELS_FILE} is not StyleGAN's format "
                            '{"labels": [[file, label], ...]} or {"labels": null}') from None
        if table is None:
            return None, [], "none"
        missing = [n for n in names if n not in table]
        if missing:
            raise UserError(f"{where}/{LABELS_FILE} has no label for {missing[0]} ({len(missing)} images "
                            "without one); list every image or set labels to null")
        y = [table[n] for n in names]
        if not all(isinstance(v, int) and v >= 0 for v in y):
            raise UserError(f"{where}/{LABELS_FILE}: only non-negative integer class labels are supported")
        k = max(y, default=-1) + 1
        classes = [str(c) for c in names_of_classes] if isinstance(names_of_classes, list) \
            and len(names_of_classes) >= k else [str(c) for c in range(k)]
        return np.asarray(y, dtype=np.int32), classes, LABELS_FILE
    if names and all("/" in n for n in names):
        top = [n.split("/", 1)[0] for n in names]
        classes = sorted(set(top))
        lookup = {c: i for i, c in enumerate(classes)}
        return np.asarray([lookup[t] for t in top], dtype=np.int32), classes, "subfolders"
    return None, [], "none"


def _zip_member_header(fd: int, info: zipfile.ZipInfo) -> tuple[int, int, int, str]:
    """(data offset, width, height, mode) of a member: its local header, then the image's header."""
    local = os.pread(fd, 30, info.header_offset)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError("bad zip local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    offset = info.header_offset + 30 + name_len + extra_len
    for size in (min(info.compress_size, 1 << 16), info.compress_size):  # the header is near the start
        raw = os.pread(fd, size, offset)
        data = raw if info.compress_type == zipfile.ZIP_STORED else zlib.decompressobj(-15).decompress(raw)
        try:
            return (offset, *read_header(io.BytesIO(data)))
        except Exception:  # noqa: BLE001 - retried on the whole member, then reported
            if size == info.compress_size:
                raise
    raise AssertionError("unreachable")


def _headers(fn, n: int, workers: int | None, desc: str, progress: bool) -> tuple[np.ndarray, dict, list]:
    """``fn(i) -> (offset, width, height, mode)`` for i < n in a thread pool (file reads release the GIL),
    gathered into one int64 array ``(n, 4)`` (mode as a code: see ``modes`` in the caller), and the
    reason of each failure by index. Submitted in chunks: 10^7 futures would not fit in memory."""
    out = np.zeros((n, 4), dtype=np.int64)
    errors: dict[int, str] = {}
    modes: dict[str, int] = {}

    def chunk(start: int) -> list:
        rows = []
        for i in range(start, min(start + 256, n)):
            try:
                rows.append(fn(i))
            except Exception as e:  # noqa: BLE001 - the file is listed as unreadable
                rows.append(describe_error(e))
        return rows

    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with cf.ThreadPoolExecutor(workers) as pool, tqdm(total=n, desc=desc, unit="img", disable=not progress,
                                                      mininterval=1.0, leave=False) as bar:
        for start, rows in zip(range(0, n, 256), pool.map(chunk, range(0, n, 256))):
            for i, r in enumerate(rows, start):
                if isinstance(r, str):
                    errors[i] = r
                else:
                    out[i] = (r[0], r[1], r[2], modes.setdefault(r[3], len(modes)))
            bar.update(len(rows))
    return out, errors, list(modes)


def _assemble(kind, source, key, names, headers, labels_json, where, zip_infos=None) -> Index:
    table, errors, modes = headers
    keep = np.asarray([i not in errors for i in range(len(names))], dtype=bool)
    good = [n for n, k in zip(names, keep) if k]
    label, classes, labels_from = _labels(good, labels_json, where)
    encoded = [n.encode() for n in good]
    table = table[keep]
    order = sorted(range(len(modes)), key=modes.__getitem__)  # mode codes in sorted order of the names
    recode = np.zeros(max(len(modes), 1), dtype=np.uint8)
    recode[order] = np.arange(len(order), dtype=np.uint8)
    zip_arrays = None
    if zip_infos is not None:
        infos = [z for z, k in zip(zip_infos, keep) if k]
        zip_arrays = {"offset": table[:, 0].copy(),
                      "csize": np.asarray([z.compress_size for z in infos], dtype=np.int64),
                      "method": np.asarray([z.compress_type for z in infos], dtype=np.uint8),
                      "crc": np.asarray([z.CRC for z in infos], dtype=np.uint32)}
    return Index(kind=kind, source=str(source), key=key,
                 names_blob=np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
                 name_ends=np.cumsum([len(e) for e in encoded], dtype=np.int64),
                 width=table[:, 1].astype(np.int32), height=table[:, 2].astype(np.int32),
                 mode=recode[table[:, 3]], modes=sorted(modes),
                 label=label, classes=classes, labels_from=labels_from,
                 unreadable=[[names[i], r] for i, r in sorted(errors.items())], zip=zip_arrays)


def build_index(source: str | os.PathLike, workers: int | None = None, progress: bool = True) -> Index:
    """List ``source`` (a folder or a zip) and read every image's header. Never decodes pixels."""
    src = Path(source)
    if src.is_dir():
        names, dirs = _walk(src)
        labels_path = src / LABELS_FILE
        labels_json = labels_path.read_bytes() if labels_path.is_file() else None
        headers = _headers(lambda i: (0, *read_header(src / names[i])), len(names), workers,
                           f"indexing {src.name}", progress)
        return _assemble("folder", src, folder_key(src, dirs), names, headers, labels_json, str(src))
    if not src.exists():
        raise UserError(f"{src} does not exist; point dataset.root at an image folder or a zip")
    try:
        with zipfile.ZipFile(src) as zf:
            infos = sorted((i for i in zf.infolist() if not i.is_dir() and is_image_name(i.filename)
                            and not any(p.startswith(".") or p == "__MACOSX" for p in i.filename.split("/"))),
                           key=lambda i: i.filename)
            try:
                labels_json = zf.read(LABELS_FILE)
            except KeyError:  # no dataset.json: labels from subfolders, or none
                labels_json = None
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{src} is not a readable zip ({e}); make one with launch/prepare_dataset.py") from None
    for i in infos:
        if i.flag_bits & 1:
            raise UserError(f"{src}: {i.filename} is encrypted; distgan reads unencrypted zips only")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UserError(f"{src}: {i.filename} uses zip compression method {i.compress_type}; "
                            "re-pack it with launch/prepare_dataset.py (stored PNGs)")
    fd = os.open(src, os.O_RDONLY)
    try:
        headers = _headers(lambda i: _zip_member_header(fd, infos[i]), len(infos), workers,
                           f"indexing {src.name}", progress)
    finally:
        os.close(fd)
    return _assemble("zip", src, zip_key(src), [i.filename for i in infos], headers, labels_json, str(src),
                     zip_infos=infos)


# -------------------------------------------------------------------------------------------- cache
def folder_key(root: Path, dirs: dict[str, int]) -> dict:
    labels = root / LABELS_FILE
    return {"dirs": dirs, "labels_mtime_ns": labels.stat().st_mtime_ns if labels.is_file() else None}


def zip_key(path: Path) -> dict:
    st = path.stat()  # not the path: a staged copy (same size, mtime preserved) reuses the index
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _key_matches(index: Index, src: Path) -> bool:
    try:
        if index.kind == "zip":
            return src.is_file() and index.key == zip_key(src)
        dirs = index.key["dirs"]
        return src.is_dir() and all(os.stat(src / d).st_mtime_ns == t for d, t in dirs.items()) \
            and folder_key(src, dirs) == index.key
    except OSError:  # a listed directory is gone
        return False


def index_paths(source: str | os.PathLike) -> list[Path]:
    """Where the index of ``source`` is cached: beside it, else in the user's cache folder."""
    src = Path(source).resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "distgan" / "index"
    return [src.with_name(src.name + INDEX_SUFFIX), cache / f"{hashlib.sha256(str(src).encode()).hexdigest()[:24]}.npz"]


def save_index(index: Index, path: Path) -> None:
    """Write atomically (:func:`distgan.files.write_atomic`): a reader never sees half an index."""
    meta = {"version": INDEX_VERSION, "kind": index.kind, "source": index.source, "key": index.key,
            "modes": index.modes, "classes": index.classes, "labels_from": index.labels_from,
            "unreadable": index.unreadable, "resampler": index.resampler}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), "names_blob": index.names_blob,
              "name_ends": index.name_ends, "width": index.width, "height": index.height, "mode": index.mode}
    if index.label is not None:
        arrays["label"] = index.label
    arrays.update(index.zip or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, **arrays))


def load_index(path: Path) -> Index | None:
    """The index stored at ``path``, or None when it is missing, unreadable or of another version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        meta = json.loads(a.pop("meta").tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if meta.get("version") != INDEX_VERSION or meta.get("resampler") != RESAMPLER:
        return None
    zip_arrays = {k: a[k] for k in _ZIP_ARRAYS} if meta["kind"] == "zip" else None
    return Index(kind=meta["kind"], source=meta["source"], key=meta["key"], names_blob=a["names_blob"],
                 name_ends=a["name_ends"], width=a["width"], height=a["height"], mode=a["mode"],
                 modes=meta["modes"], label=a.get("label"), classes=meta["classes"],
                 labels_from=meta["labels_from"], unreadable=meta["unreadable"], resampler=meta["resampler"],
                 zip=zip_arrays)


def cached_index(source: str | os.PathLike) -> tuple[Index, Path] | None:
    """The first cached index of ``source`` whose key still matches, and where it is."""
    src = Path(source).resolve()
    for path in index_paths(src):
        index = load_index(path) if path.is_file() else None
        if index is not None and _key_matches(index, src):
            return index, path
    return None


def open_index(source: str | os.PathLike, workers: int | None = None, progress: bool = True,
               cache: bool = True) -> Index:
    """The index of ``source``: the cached one when its key matches, else built (and cached when ``cache``)."""
    src = Path(source).resolve()
    if cache and (hit := cached_index(src)) is not None:
        return hit[0]
    if not src.exists():
        raise UserError(f"{src} does not exist; point dataset.root at an image folder or a zip")
    index = build_index(src, workers, progress)
    if cache:
        for path in index_paths(src):
            try:
                save_index(index, path)
                log.info("indexed %d images of %s into %s", len(index), src, path)
                break
            except OSError as e:  # read-only data: fall back to the user's cache folder
                log.debug("cannot write the index to %s: %s", path, e)
        else:
            log.warning("could not cache the index of %s anywhere; it will be rebuilt on the next start", src)
    return index
