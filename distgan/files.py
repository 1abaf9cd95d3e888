"""Files that are never seen half-written: one atomic write for the whole house, and one writable-folder
probe.

:func:`write_atomic` writes to a temporary file in the target's own folder (so the rename cannot cross a
file system), flushes and fsyncs it, renames it over the target, and fsyncs the folder, so that after a
crash at any instant the target holds either its old or its new content, never a torn mix. A failure
before the rename removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def temp_name(target: Path) -> Path:
    """A fresh hidden temporary name beside ``target`` (unique per process and call)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def temp_owner(path: Path) -> int | None:
    """The pid that made ``path`` with :func:`temp_name` (``.<name>.<pid>.<token>.tmp``), None if it is not
    such a name: for cleaning up the temporary files of killed writers."""
    parts = path.name.split(".")
    try:
        return int(parts[-3]) if path.name.endswith(TEMP_SUFFIX) and len(parts) >= 4 else None
    except ValueError:
        return None


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a creation inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder: the rename is then as durable as it gets
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], None], *,
                 private: bool = False) -> Path:
    """Replace ``path`` by ``data`` (bytes, text written as UTF-8, or a function that writes into the
    open binary file) in one rename. ``private`` creates the file readable by its owner only (0600);
    else the process's umask applies as for any new file. Returns ``path``."""
    path = Path(path)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a log record: metrics.jsonl) durably: flushed and fsynced. A torn last line that a
    crash left (no newline at the end) is cut off first, so the file stays one whole record per line and
    the next record is never glued onto a fragment."""
    with open(path, "ab+") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(max(end - 1, 0))
            if f.read(1) != b"\n":
                f.seek(0)
                body = f.read()
                f.truncate(body.rfind(b"\n") + 1)
        f.write(line.rstrip("\n").encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def probe_writable(path: str | Path) -> Path:
    """The nearest existing folder at or above ``path``, proved writable by creating and removing a folder
    in it (``os.access`` says yes to root on read-only mounts). Raises ``NotADirectoryError`` when that
    nearest existing entry is a file, else the ``OSError`` of the failed creation."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{probe} is not a folder")
    Path(tempfile.mkdtemp(prefix=".distgan-probe-", dir=probe)).rmdir()
    return probe
