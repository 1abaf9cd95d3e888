"""``stage``: one verified copy of a dataset zip per node, on node-local storage (``dataset.stage_dir``).

Network file systems are slow for the random reads of training, so each node copies the zip once to
local scratch. Every process of the node may call :func:`stage` at once: exactly one copies, under a
file lock beside the copy (node-local, so ``flock`` is reliable there); the others wait and reuse it.
The copy is hashed (SHA-256) while it is read from the source and again when read back; it is
written to a temp file and renamed into place, so a half copy is never used. The hash is written
beside it (``<copy>.sha256``) so later calls check only the sizes. The copy keeps the source's mtime
and gets the source's cached index, so the index is not rebuilt on every node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from distgan.data.index_cache import cached_index, index_paths
from distgan.errors import UserError
from distgan.files import TEMP_SUFFIX, fsync_dir, temp_name, write_atomic

log = logging.getLogger("distgan")
_BLOCK = 16 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _copy(src: Path, dst: Path, size: int, progress: bool) -> str:
    """Copy ``src`` to ``dst`` (fsynced), returning the SHA-256 of the bytes read."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout, \
            tqdm(total=size, desc=f"staging {src.name}", unit="B", unit_scale=True, disable=not progress) as bar:
        while block := fin.read(_BLOCK):
            h.update(block)
            fout.write(block)
            bar.update(len(block))
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _ready(dest: Path, record: Path, size: int, mtime_ns: int) -> bool:
    try:
        meta = json.loads(record.read_text())
        st = dest.stat()
    except (OSError, ValueError):
        return False
    return meta.get("size") == size == st.st_size and st.st_mtime_ns == mtime_ns and bool(meta.get("sha256"))


def staged_path(zip_path: str | os.PathLike, stage_dir: str | os.PathLike) -> Path:
    """Where :func:`stage` puts ``zip_path``: named after the source's path, size and mtime, so a changed
    source gets a fresh copy."""
    src = Path(os.path.expanduser(str(zip_path))).resolve()
    st = src.stat()
    tag = hashlib.sha256(f"{src}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(os.path.expandvars(os.path.expanduser(str(stage_dir)))) / f"{src.stem}-{tag}{src.suffix}"


def stage(zip_path: str | os.PathLike, stage_dir: str | os.PathLike, progress: bool = False) -> Path:
    """The path of this node's verified copy of ``zip_path`` under ``stage_dir``, copying it if needed."""
    src = Path(os.path.expanduser(str(zip_path))).resolve()
    if not src.is_file():
        raise UserError(f"dataset.root={src} is not a file; only a zip can be staged (dataset.stage_dir)")
    st = src.stat()
    dest = staged_path(src, stage_dir)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"dataset.stage_dir={dest.parent} cannot be created: {e.strerror}") from None
    record = dest.with_name(dest.name + ".sha256")
    lock = FileLock(str(dest) + ".lock")
    try:
        lock.acquire(timeout=1)
    except Timeout:
        log.info("waiting for another process of this node to stage %s into %s", src, dest)
        lock.acquire()
    try:
        if _ready(dest, record, st.st_size, st.st_mtime_ns):
            return dest
        if shutil.disk_usage(dest.parent).free < st.st_size:
            raise UserError(f"dataset.stage_dir={dest.parent} has less free space than {src} needs "
                            f"({st.st_size / 1e9:.1f} GB); free some or point it elsewhere")
        for stale in dest.parent.glob(f".{dest.name}.*{TEMP_SUFFIX}"):  # left by a copier that was killed
            stale.unlink(missing_ok=True)
        # not write_atomic: the copy is read back and checked against the source under its temp name,
        # before it may take the final one, and write_atomic's callable sees only the open handle
        tmp = temp_name(dest)
        try:
            digest = _copy(src, tmp, st.st_size, progress)
            now = src.stat()
            if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise UserError(f"{src} changed while it was being staged; start again once it is complete")
            if tmp.stat().st_size != st.st_size or _sha256(tmp) != digest:
                raise UserError(f"the copy of {src} in {dest.parent} does not match it (size or SHA-256); "
                                "check the local disk, or unset dataset.stage_dir")
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # the zip's index key: size + mtime
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(dest.parent)
        write_atomic(record, json.dumps({"sha256": digest, "size": st.st_size, "source": str(src),
                                         "source_mtime_ns": st.st_mtime_ns}))
        hit = cached_index(src)
        if hit is not None:  # same size and mtime: the source's index is valid for the copy
            write_atomic(index_paths(dest)[0], hit[1].read_bytes())
        log.info("staged %s into %s (sha256 %s)", src, dest, digest[:16])
        return dest
    finally:
        lock.release()
