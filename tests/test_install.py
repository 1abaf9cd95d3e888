"""distgan as a user installs it: a plain (non-editable) ``pip install .`` from a clean copy of the
repository into a fresh virtual environment, then ``distgan-train`` from a directory outside the copy —
the configs must come from inside the installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _clean_copy(dest: Path) -> None:
    """What a clean clone of this working tree holds: the tracked files and the untracked, not ignored ones."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    for name in filter(None, out.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def test_wheel_install_trains_from_outside_the_clone(tmp_path):
    clone, venv, elsewhere = tmp_path / "clone", tmp_path / "venv", tmp_path / "elsewhere"
    _clean_copy(clone)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # torch, Ray, Hydra, pip and setuptools come from this test's environment (a .pth line, not a copy of
    # several GB); that environment's editable distgan is not visible, since .pth files of a directory
    # added this way are not processed
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_distgan_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-cache-dir", str(clone)], env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    shutil.rmtree(clone)  # nothing of the source tree is left to find configs in

    where = subprocess.run([str(python), "-c", "import distgan, distgan.compose as c; "
                            "print(distgan.__file__); print(c.CONFIG_DIR)"],
                           env=env, capture_output=True, text=True, cwd=tmp_path, check=True).stdout.split()
    assert where[0].startswith(purelib) and where[1] == str(Path(purelib) / "distgan" / "configs"), where
    shipped = {p.relative_to(where[1]).as_posix() for p in Path(where[1]).rglob("*.yaml")}
    assert shipped == {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}

    elsewhere.mkdir()
    run = tmp_path / "run"
    out = subprocess.run([str(venv / "bin" / "distgan-train"), "model=mlp", "train.steps=20", f"hydra.run.dir={run}"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert (run / "checkpoints" / "latest" / "state.pt").is_file()
    assert (run / "config.yaml").is_file() and "name: mlp" in (run / "config.yaml").read_text()
    assert "run directory" in out.stdout
    for tool in ("distgan-sample", "distgan-evaluate"):  # the other console scripts are installed and answer
        helped = subprocess.run([str(venv / "bin" / tool), "--help"], env=env, capture_output=True, text=True)
        assert helped.returncode == 0 and "checkpoint" in helped.stdout, helped.stderr
    assert list(elsewhere.iterdir()) == []  # nothing written where the command ran
