"""distgan.files.write_atomic: the target holds its old or its new content after a crash at any instant,
and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from distgan.files import probe_writable, write_atomic

ROOT = Path(__file__).resolve().parents[1]

# a process that dies (no cleanup, no exception handling: os._exit) at the chosen point of write_atomic
CRASH = """
import os, sys
from distgan import files
target, point = sys.argv[1], sys.argv[2]
real_replace, real_fsync = os.replace, os.fsync
if point == "before-rename":
    os.replace = lambda *a: os._exit(9)
elif point == "mid-write":
    def half(f):
        f.write(b"NEW-HALF")
        f.flush()
        os._exit(9)
    files.write_atomic(target, half)
files.write_atomic(target, b"NEW CONTENT")
"""


@pytest.mark.parametrize("point", ["mid-write", "before-rename"])
def test_a_crash_before_the_rename_leaves_the_old_file(tmp_path, point):
    target = tmp_path / "state.json"
    target.write_bytes(b"OLD CONTENT")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CRASH, str(target), point], env=env)
    assert done.returncode == 9  # it really died inside write_atomic
    assert target.read_bytes() == b"OLD CONTENT"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".state.json.") and leftovers[0].endswith(".tmp")


def test_a_completed_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"OLD CONTENT")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CRASH, str(target), "none"], env=env)
    assert done.returncode == 0
    assert target.read_bytes() == b"NEW CONTENT"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_an_exception_while_writing_removes_the_temp_and_keeps_the_target(tmp_path):
    target = tmp_path / "grid.png"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_text_bytes_and_writers_and_the_private_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", "héllo")
        write_atomic(tmp_path / "b.bin", b"\x00\x01")
        write_atomic(tmp_path / "c.bin", lambda f: f.write(b"xyz"))
        write_atomic(tmp_path / "token", "secret", private=True)
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.bin").read_bytes() == b"xyz"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600


def test_probe_writable(tmp_path):
    assert probe_writable(tmp_path / "not" / "yet") == tmp_path
    assert list(tmp_path.iterdir()) == []  # the probe folder is gone again
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        probe_writable(tmp_path / "file" / "run")
