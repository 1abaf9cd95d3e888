"""The index of an image folder or zip: every image's name, size, mode and label, built once and cached.

Listing a million files and reading their headers (never their pixels) takes minutes on a network file
system, so it is done once, by a thread pool with a progress bar, and cached:

- beside the data: ``<folder>.distgan-index.npz`` or ``<zip>.distgan-index.npz`` (a sibling file, so that
  writing it does not change the folder's own mtime, which is part of the key);
- where that is not writable: ``${XDG_CACHE_HOME:-~/.cache}/distgan/index/<hash of the path>.npz``.

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

from distgan.data.images import (
    RESAMPLER,
    ImageTooLarge,
    describe_error,
    is_image_name,
    read_header,
)
from distgan.errors import UserError
from distgan.files import write_atomic

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
            "unreadable": index.unreadable, "skipped": index.skipped, "resampler": index.resampler}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), "names_blob": index.names_blob,
              "name_ends": index.name_ends, "width": index.width, "height": index.height, "mode": index.mode}
    if index.label is not None:
        arrays["label"] = index.label
    arrays.update(index.zip or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, **arrays))


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


def _positions(blob: np.ndarray, byte: int, chunk: int = 1 << 22) -> np.ndarray:
    """Where ``byte`` occurs in ``blob``, found a chunk at a time (one small reused mask, not one the
    size of the blob)."""
    mask, parts = np.empty(min(chunk, len(blob)), dtype=bool), []
    for start in range(0, len(blob), chunk):
        part = blob[start:start + chunk]
        np.equal(part, byte, out=mask[:len(part)])
        parts.append(np.flatnonzero(mask[:len(part)]) + start)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _bad_blob(blob: np.ndarray, ends: np.ndarray) -> str:
    """:func:`bad_name` over every name of an index at once, plus: valid UTF-8, each name whole.
    Vectorized: a few passes over the arrays, about as long as reading them from disk."""
    if not len(ends):
        return "" if not len(blob) else "names without entries"
    starts = np.concatenate(([0], ends[:-1]))
    if np.any(ends - starts <= 0):
        return "an empty name"
    if int(blob.min()) == 0:
        return "a name with a NUL byte"
    if int(blob.max()) >= 0x80:  # not ASCII: the whole blob valid UTF-8, no name starting mid-character
        try:
            blob.tobytes().decode()
        except UnicodeDecodeError:
            return "a name that is not UTF-8"
        if np.any((blob[starts] & 0xC0) == 0x80):
            return "a name that is not UTF-8"
    if np.any(blob[starts] == ord("/")):
        return "an absolute path"
    if np.any(blob[ends - 1] == ord("/")):
        return "a name with an empty component"
    slashes = _positions(blob, ord("/"))
    if np.any(np.diff(slashes) == 1):
        return "a name with an empty component"
    # a '.' that begins a name or follows a '/' (never a name's last byte, checked above): '.', '..', hidden
    if np.any(blob[starts] == ord(".")) or np.any(blob[slashes + 1] == ord(".")):
        return "a name with a '.', '..' or hidden component (a path out of the folder)"
    return ""


def _check(index: Index, src: Path) -> str:
    """Why the cached ``index`` must not be used for ``src`` ('' when it may): the checks of a cache that
    may have been planted (docs/data.md, "Untrusted data sets")."""
    n = len(index.name_ends)
    arrays = [index.width, index.height, index.mode] + ([index.label] if index.label is not None else []) \
        + list((index.zip or {}).values())
    if index.kind not in ("folder", "zip") or index.kind != ("folder" if src.is_dir() else "zip"):
        return f"it indexes a {index.kind}"
    if index.names_blob.dtype != np.uint8 or index.name_ends.dtype.kind not in "iu" \
            or any(a.ndim != 1 or len(a) != n or a.dtype.kind not in "iu" for a in arrays) \
            or index.names_blob.ndim != 1 or index.name_ends.ndim != 1:
        return "its arrays do not fit together"
    if n and (np.any(np.diff(index.name_ends) < 0) or index.name_ends[0] < 0
              or int(index.name_ends[-1]) != len(index.names_blob)):
        return "its name offsets are out of order"
    if reason := _bad_blob(index.names_blob, index.name_ends.astype(np.int64)):
        return reason
    if n and (index.width.min() < 1 or index.height.min() < 1 or int(index.mode.max()) >= len(index.modes)):
        return "an image size or mode out of range"
    if index.label is not None and n and (index.label.min() < 0 or index.label.max() >= len(index.classes)):
        return "a label out of range"
    if not all(isinstance(m, str) for m in index.modes) or not all(isinstance(c, str) for c in index.classes):
        return "its modes or classes are not names"
    if index.kind == "folder":
        if index.source != str(src):  # a folder's index is made for one path (zips: see staging)
            return f"it was built for {index.source}"
        if not isinstance(index.key.get("dirs"), dict) or any(bad_name(d) for d in index.key["dirs"] if d):
            return "its key lists folders outside the root"
    else:
        z, size = index.zip, src.stat().st_size
        if set(z) != set(_ZIP_ARRAYS):
            return "its zip arrays are missing"
        if n and (z["offset"].min() < 0 or z["csize"].min() < 0
                  or int((z["offset"].astype(np.int64) + z["csize"]).max()) > size
                  or not np.isin(z["method"], (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)).all()):
            return "a member lies outside the zip"
    return ""


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``np.savez`` file, each read within the bytes it holds on disk: members must be
    stored (savez never compresses) and each array's declared shape must fit its member, so a planted
    file cannot make this allocate more than its own size. ValueError otherwise."""
    from numpy.lib import format as npformat

    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename} is not a stored .npy")
            with zf.open(info) as f:
                version = npformat.read_magic(f)
                read = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(version)
                if read is None:
                    raise ValueError(f"member {info.filename} is of .npy version {version}")
                shape, fortran, dtype = read(f, max_header_size=10000)
                if dtype.hasobject or fortran:
                    raise ValueError(f"member {info.filename} holds objects")
                count = int(np.prod(shape, dtype=np.int64)) if shape else 1
                nbytes = count * dtype.itemsize
                if count < 0 or nbytes != info.file_size - f.tell():
                    raise ValueError(f"member {info.filename} declares a shape its bytes do not hold")
                buf = bytearray(nbytes)
                if f.readinto(buf) != nbytes:
                    raise ValueError(f"member {info.filename} is cut short")
                out[info.filename[:-4]] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return out


def load_index(path: Path) -> Index | None:
    """The index stored at ``path``, or None when it is missing, unreadable or of another version;
    raises ValueError (its reason) for a file that is not a well-formed index of this version."""
    try:
        a = _read_npz(path)
        meta = json.loads(a.pop("meta").tobytes())
    except (OSError, KeyError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"it cannot be read ({type(e).__name__})") from None
    except ValueError as e:
        raise ValueError(f"it cannot be read ({e})") from None
    if not isinstance(meta, dict) or meta.get("version") != INDEX_VERSION or meta.get("resampler") != RESAMPLER:
        return None  # another version's, or another resampler's: rebuilt without a word
    try:
        zip_arrays = {k: a[k] for k in _ZIP_ARRAYS} if meta["kind"] == "zip" else None
        index = Index(kind=meta["kind"], source=meta["source"], key=meta["key"], names_blob=a["names_blob"],
                      name_ends=a["name_ends"], width=a["width"], height=a["height"], mode=a["mode"],
                      modes=list(meta["modes"]), label=a.get("label"), classes=list(meta["classes"]),
                      labels_from=meta["labels_from"], unreadable=[[str(x) for x in u] for u in meta["unreadable"]],
                      skipped=[[str(x) for x in u] for u in meta["skipped"]], resampler=meta["resampler"],
                      zip=zip_arrays)
        if not isinstance(index.key, dict) or not isinstance(index.source, str):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise ValueError("its fields are not an index's") from None
    return index


def cached_index(source: str | os.PathLike) -> tuple[Index, Path] | None:
    """The first cached index of ``source`` whose key still matches and that passes :func:`_check`, and
    where it is. One that fails the checks is ignored with a warning (it is rebuilt, never followed)."""
    src = Path(source).resolve()
    for path in index_paths(src):
        if not path.is_file():
            continue
        try:
            index = load_index(path)
            reason = "" if index is None else _check(index, src)
        except ValueError as e:
            index, reason = None, str(e)
        except Exception as e:  # noqa: BLE001 - whatever a planted file provokes, it is not used
            index, reason = None, f"it cannot be checked ({type(e).__name__})"
        if reason:
            log.warning("ignoring the cached index %s: %s; rebuilding it", path, reason)
            continue
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
