"""The index's cache: where it lies (beside the data, else the user's cache folder), writing it atomically,
and reading one back as untrusted input — member by member within the bytes on disk, its names and arrays
checked, a folder's key matched against this very folder — before :func:`open_index` reuses it; one that
fails is ignored with a warning and rebuilt (distgan/data/index.py builds it; docs/data.md, "Untrusted data
sets").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from distgan.data.images import RESAMPLER
from distgan.data.index import (
    _ZIP_ARRAYS,
    INDEX_SUFFIX,
    INDEX_VERSION,
    Index,
    bad_name,
    build_index,
    folder_key,
    zip_key,
)
from distgan.errors import UserError
from distgan.files import write_atomic

log = logging.getLogger("distgan")


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
