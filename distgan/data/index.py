"""The index of an image folder or zip: every image's name, size, mode and label, built once and cached.

Listing a million files and reading their headers (never their pixels) takes minutes on a network file
system, so it is done once, by a thread pool with a progress bar, and cached:

- beside the data: ``<folder>.distgan-index.npz`` or ``<zip>.distgan-index.npz`` (a sibling file, so that
  writing it does not change the folder's own mtime, which is part of the key);
- where that is not writable: ``${XDG_CACHE_HOME:-~/.cache}/distgan/index/<hash of the path>.npz``.

The cache is distgan/data/index_cache.py (its ``open_index`` is the entry point: cached, else built here).
A cached index is reused while its key matches (folder: the mtime of every directory listed, and of
``dataset.json``; zip: its size and mtime) and rebuilt otherwise; it is written atomically. Files whose
header cannot be read are left out and listed in ``unreadable``; entries that cannot be listed (a
symbolic link loop, a dangling link, a second link to a folder already listed) in ``skipped``.

Untrusted input (docs/data.md, "Untrusted data sets"): a cached index is read member by member within
the bytes it holds on disk and checked before use (its names relative, normalized, inside the root, its
arrays consistent, a folder's built for this very folder); one that fails is ignored with a warning and
rebuilt, never followed. ``dataset.json`` is read within a bound and its labels must be integers in
[0, number of images). Zip members are inflated only as far as their declared image can need.

The index is a set of numpy arrays (names as one byte blob + offsets), not one Python object per file:
10^7 files take ~30 bytes each, load in a fraction of a second, and DataLoader workers forked from a
process that holds it do not copy it page by page through reference counts (pytorch/pytorch#13246).
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
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

from distgan.data.images import (
    RESAMPLER,
    ImageTooLarge,
    describe_error,
    is_image_name,
    read_header,
)
from distgan.errors import UserError

log = logging.getLogger("distgan")
INDEX_VERSION = 2  # 2: entries skipped while listing (``skipped``); a checked cache
INDEX_SUFFIX = ".distgan-index.npz"
LABELS_FILE = "dataset.json"  # StyleGAN2-ADA's {"labels": [[name, label], ...]} or {"labels": null}
_ZIP_ARRAYS = ("offset", "csize", "method", "crc")
HEADER_BYTES = 16 << 20  # a zip member is inflated at most this far to find its image's header
_CHUNK = 1 << 20  # compressed bytes read at a time when inflating a member


def labels_bound(num_files: int) -> int:
    """The most bytes ``dataset.json`` may take for ``num_files`` listed images (1 MiB + 512 B each):
    StyleGAN's entries take ~40 B; the bound keeps a planted file from exhausting memory in json.loads."""
    return (1 << 20) + 512 * num_files


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
    skipped: list[list[str]] = field(default_factory=list)  # [name, reason] of entries not listed (bad links)
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
def _link_problem(path: Path, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symbolic link loop"
    if e.errno == errno.ENOENT and os.path.islink(path):
        return f"a dangling symbolic link (to {os.readlink(path)})"
    return f"cannot be listed: {e.strerror or e}"


def _walk(root: Path) -> tuple[list[str], dict[str, int], list[list[str]]]:
    """Image files under ``root`` (relative posix paths, sorted), the mtime of every directory, and the
    entries skipped: links that lead nowhere (a loop, a dangling link), to a folder already listed, or to
    the root or a folder above it (which would list the file system above the data set). Other links
    are followed, wherever they point (docs/data.md, "Untrusted data sets")."""
    names, dirs, seen, stack, skipped = [], {}, set(), [""], []
    real_root = os.path.realpath(root)
    while stack:
        rel = stack.pop()
        try:
            st = os.stat(root / rel)
            if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already listed: a loop, or a copy
                skipped.append([rel, "a folder already listed under another name (a link loop, or a second link)"])
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(root / rel))
        except OSError as e:  # a folder gone, unreadable, or a link loop met on the way down
            if not rel:
                raise UserError(f"{root} cannot be listed: {e.strerror or e}") from None
            skipped.append([rel, _link_problem(root / rel, e)])
            continue
        dirs[rel] = st.st_mtime_ns
        for e in entries:
            if e.name.startswith("."):
                continue
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                if e.is_dir():
                    if e.is_symlink():
                        target = os.path.realpath(root / r)
                        if real_root == target or real_root.startswith(target.rstrip("/") + "/"):
                            skipped.append([r, f"a symbolic link to {target}, the root or a folder above it "
                                               "(a loop)"])
                            continue
                    stack.append(r)
                elif e.is_file():
                    if is_image_name(e.name):
                        names.append(r)
                elif e.is_symlink():  # a link to nothing (is_file is False for it)
                    skipped.append([r, _link_problem(root / r, FileNotFoundError(errno.ENOENT, "dangling"))])
            except OSError as err:  # ELOOP: a link to itself, or links that point at each other
                skipped.append([r, _link_problem(root / r, err)])
    return sorted(names), dirs, sorted(skipped)


def _labels(names: list[str], labels_json: bytes | None, where: str, listed: set[str] | None = None
            ) -> tuple[np.ndarray | None, list[str], str]:
    """Labels from dataset.json when there is one, else from the first path component when every image
    is in a subfolder (torchvision's ImageFolder: classes in sorted order), else none. ``listed``: every
    file the folder or zip holds (also those left out as unreadable), which dataset.json may name.

    dataset.json's labels must be integers (not booleans) in [0, number of images) for files that exist,
    each listed once; anything else is one UserError naming the file and the entry."""
    if labels_json is not None:
        where_json = f"{where}/{LABELS_FILE}"
        fmt = 'StyleGAN\'s format {"labels": [[file, label], ...]} or {"labels": null}'
        try:
            doc = json.loads(labels_json)
            labels, names_of_classes = doc["labels"], doc.get("classes")  # "classes": distgan's addition
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise UserError(f"{where_json} is not {fmt}") from None
        if labels is None:
            return None, [], "none"
        if not isinstance(labels, list):
            raise UserError(f"{where_json} is not {fmt}: \"labels\" is a {type(labels).__name__}, not a list")
        listed = set(names) if listed is None else listed
        n = max(len(listed), 1)  # every file listed, not only the readable ones: skip_bad keeps the bound
        table: dict[str, int] = {}
        for entry in labels:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise UserError(f"{where_json} is not {fmt}: entry {_short(entry)} is not a [file, label] pair")
            f, y = entry[0].replace("\\", "/"), entry[1]
            if type(y) is not int or not 0 <= y < n:
                raise UserError(f"{where_json}: the label of {_short(f)} is {_short(y)}; labels must be integers "
                                f"from 0 to {n - 1} (class indices, fewer than the {n} images)")
            if f not in listed:
                raise UserError(f"{where_json} labels {_short(f)}, which is not an image in {where}; remove "
                                "the entry or add the file")
            if f in table:
                raise UserError(f"{where_json} labels {_short(f)} twice; list each image once")
            table[f] = y
        missing = [name for name in names if name not in table]
        if missing:
            raise UserError(f"{where_json} has no label for {missing[0]} ({len(missing)} images "
                            "without one); list every image or set labels to null")
        y = [table[name] for name in names]
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


def _short(v: object, width: int = 60) -> str:
    """``v`` for a message: its JSON form, cut to ``width`` characters."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def read_bounded(f, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of the open file ``f``; a UserError when it holds more."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{what} is larger than {limit} bytes, more than its images can need; it is not read")
    return data


def member_prefix(fd: int, offset: int, csize: int, method: int, size: int) -> bytes:
    """The first ``size`` bytes (or fewer, all there are) of a zip member's content: ``csize`` bytes at
    ``offset`` of ``fd``, stored or deflated. Reads and inflates no further than that."""
    if method == zipfile.ZIP_STORED:
        return os.pread(fd, min(csize, size), offset)
    d, out, pos, end = zlib.decompressobj(-15), bytearray(), offset, offset + csize
    while len(out) < size and not d.eof:
        if d.unconsumed_tail:
            raw = d.unconsumed_tail
        else:
            raw = os.pread(fd, min(_CHUNK, end - pos), pos) if pos < end else b""
            if not raw:
                break  # cut short: the CRC check or the decoder reports it
            pos += len(raw)
        out += d.decompress(raw, size - len(out))
    return bytes(out)


def inflate_member(fd: int, offset: int, csize: int, method: int, limit: int) -> bytes:
    """A zip member's content, inflated at most to ``limit`` bytes: more raises :class:`ImageTooLarge`
    without inflating the rest, so a small deflate bomb costs ``limit`` bytes of memory, not what it
    expands to."""
    data = member_prefix(fd, offset, csize, method, limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"zip member holds more than {limit} bytes, more than its declared image can need "
                            "(distgan.data.images.encoded_size_bound): a decompression bomb")
    return data


def _zip_member_header(fd: int, info: zipfile.ZipInfo) -> tuple[int, int, int, str]:
    """(data offset, width, height, mode) of a member: its local header, then the image's header, found in
    the first 64 KiB of the member, else in its first :data:`HEADER_BYTES` (never by inflating it all)."""
    local = os.pread(fd, 30, info.header_offset)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError("bad zip local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    offset = info.header_offset + 30 + name_len + extra_len
    for size in (1 << 16, HEADER_BYTES):
        data = member_prefix(fd, offset, info.compress_size, info.compress_type, size + 1)
        whole = len(data) <= size
        try:
            return (offset, *read_header(io.BytesIO(data[:size])))
        except ImageTooLarge:
            raise
        except Exception:  # noqa: BLE001 - retried on a longer prefix, then reported
            if whole:
                raise
    raise ImageTooLarge(f"no image header in the first {HEADER_BYTES} bytes of the member: a decompression "
                        "bomb, or not an image")


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


def _assemble(kind, source, key, names, headers, labels_json, where, zip_infos=None, skipped=()) -> Index:
    table, errors, modes = headers
    keep = np.asarray([i not in errors for i in range(len(names))], dtype=bool)
    good = [n for n, k in zip(names, keep) if k]
    label, classes, labels_from = _labels(good, labels_json, where, {*names, *(n for n, _ in skipped)})
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
                 unreadable=[[names[i], r] for i, r in sorted(errors.items())], skipped=[list(x) for x in skipped],
                 zip=zip_arrays)


def build_index(source: str | os.PathLike, workers: int | None = None, progress: bool = True) -> Index:
    """List ``source`` (a folder or a zip) and read every image's header. Never decodes pixels."""
    src = Path(source)
    if src.is_dir():
        names, dirs, skipped = _walk(src)
        labels_path = src / LABELS_FILE
        labels_json = None
        if labels_path.is_file():
            with open(labels_path, "rb") as f:
                labels_json = read_bounded(f, labels_bound(len(names)), str(labels_path))
        headers = _headers(lambda i: (0, *read_header(src / names[i])), len(names), workers,
                           f"indexing {src.name}", progress)
        return _assemble("folder", src, folder_key(src, dirs), names, headers, labels_json, str(src),
                         skipped=skipped)
    if not src.exists():
        raise UserError(f"{src} does not exist; point dataset.root at an image folder or a zip")
    try:
        with zipfile.ZipFile(src) as zf:
            infos, skipped = [], []
            for i in zf.infolist():
                if i.is_dir() or not is_image_name(i.filename) \
                        or any(p.startswith(".") or p == "__MACOSX" for p in i.filename.split("/")[:-1]):
                    continue
                if i.filename.split("/")[-1].startswith("."):
                    continue
                reason = bad_name(i.filename)
                if reason:  # never a path here (members are read by offset), but an index holds none
                    skipped.append([i.filename, f"an unsafe member name ({reason})"])
                else:
                    infos.append(i)
            infos.sort(key=lambda i: i.filename)
            try:
                with zf.open(LABELS_FILE) as f:
                    labels_json = read_bounded(f, labels_bound(len(infos)), f"{src}:{LABELS_FILE}")
            except KeyError:  # no dataset.json: labels from subfolders, or none
                labels_json = None
    except (zipfile.BadZipFile, OSError, zlib.error) as e:
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
                     zip_infos=infos, skipped=sorted(skipped))


# -------------------------------------------------------------------------------------------- cache
def folder_key(root: Path, dirs: dict[str, int]) -> dict:
    labels = root / LABELS_FILE
    return {"dirs": dirs, "labels_mtime_ns": labels.stat().st_mtime_ns if labels.is_file() else None}


def zip_key(path: Path) -> dict:
    st = path.stat()  # not the path: a staged copy (same size, mtime preserved) reuses the index
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def bad_name(name: str) -> str:
    """Why ``name`` cannot be an index entry ('' when it can): an entry is a relative, normalized posix
    path inside the root: no empty, ``.``, ``..`` or hidden component, no leading ``/``, no NUL."""
    if not name:
        return "empty"
    if "\0" in name:
        return "a NUL byte"
    if name.startswith("/"):
        return "an absolute path"
    if any(p in ("", ".", "..") or p.startswith(".") for p in name.split("/")):
        return "not a normalized path inside the folder (an empty, '.', '..' or hidden component)"
    return ""
