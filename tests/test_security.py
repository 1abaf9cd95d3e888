"""Ray clusters that distgan starts are usable only with the run's token (docs/reliability.md): the token is
per run, readable only by the user, and a client without it is refused.

The Ray head here is started by this test with its own --temp-dir and port and stopped by killing its
process group (never ``ray stop``: that would stop every Ray cluster on a shared machine)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from distgan.launcher.ray_train import TOKEN_FILE, secure_ray_env

CLIENT = """
import sys
import ray
try:
    ray.init(address=sys.argv[1])
    print("CONNECTED", ray.cluster_resources().get("CPU"))
except Exception as e:
    print("REFUSED", type(e).__name__, " ".join(str(e).split()))
"""


def test_token_is_per_run_private_and_stable(tmp_path, monkeypatch):
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    env = secure_ray_env(a)
    token = (a / TOKEN_FILE).read_text()
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(a / TOKEN_FILE)
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(a / TOKEN_FILE)  # set before Ray starts
    assert len(token) >= 64 and (a / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    secure_ray_env(a)
    assert (a / TOKEN_FILE).read_text() == token  # a resumed run keeps its token
    secure_ray_env(b)
    assert (b / TOKEN_FILE).read_text() != token  # another run gets another


def test_run_dir_is_private(tmp_path):
    from distgan.config import Config
    from distgan.launcher.preflight import prepare_run_dir

    run = prepare_run_dir(Config(run_dir=str(tmp_path / "run")))
    assert run.stat().st_mode & 0o777 == 0o700


def test_launchers_turn_the_dashboard_off():
    """The dashboard is an HTTP surface of its own: no Ray cluster distgan starts runs it."""
    root = Path(__file__).resolve().parents[1] / "distgan" / "launcher"
    assert "include_dashboard=False" in (root / "local.py").read_text()
    job = root / "slurm_job.py"  # the SLURM job's `ray start --head`
    if job.exists():
        assert re.search(r'"--include-dashboard",\s*"false"|--include-dashboard=false', job.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_ours(marker: str) -> None:
    """Kill the processes whose command line or environment names ``marker`` (our unique folder)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(proc.name) != os.getpid() and marker.encode() in \
                    (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.mark.slow
def test_client_without_the_token_is_refused():
    # short path: Ray's socket paths under --temp-dir must stay under 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="dg-sec-", dir="/tmp"))
    token = tmp / TOKEN_FILE
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex())
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # HOME elsewhere: a ~/.ray/auth_token of the user must not stand in for the missing token
    base = {**clean, "HOME": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
         f"--temp-dir={tmp}/ray", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
        env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        for line in head.stdout:
            if "Ray runtime started" in line or time.time() > deadline:
                break
        address = f"127.0.0.1:{port}"

        def client(env: dict) -> str:
            out = subprocess.run([sys.executable, "-c", CLIENT, address], env={**base, **env}, capture_output=True,
                                 text=True, timeout=180)
            return (out.stdout.strip().splitlines() or [""])[-1] + " | " + " ".join(out.stderr.split())[-1000:]

        with ThreadPoolExecutor(2) as pool:  # each refusal waits out Ray's ~20 s retry: run them together
            missing, wrong = pool.map(client, [{}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}])
        right = client({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        _kill_ours(str(tmp))  # workers the raylet started outside the process group
        shutil.rmtree(tmp, ignore_errors=True)
    for outcome in (missing, wrong):
        assert outcome.startswith("REFUSED"), outcome
        assert "Authentication token is missing or incorrect" in outcome, outcome  # refused for the token
    assert right.startswith("CONNECTED"), right
