"""Multi-node behaviour on the real local SLURM cluster: nodes on their own network (netns mode: one network
namespace, address and hostname per node; slurm/local_cluster_net.sh), a wrong interface, a requeue by the
scheduler, and a node that goes down mid-run. The mode that ran is in each test's id ([netns] or [loopback])."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_slurm import ROOT, TINY, _cluster_up, _steps, _wait_for, assert_job_gone, job_ids, run_cli, tb_steps

NETWORK_FILE = Path("/run/slurm-distgan/network.json")


def _network() -> dict:
    try:
        return json.loads(NETWORK_FILE.read_text())
    except (OSError, ValueError):
        return {"mode": "unknown", "nodes": {}}


NET = _network()
MODE = NET["mode"]
NODES = NET["nodes"]
pytestmark = [pytest.mark.slow, pytest.mark.slurm,
              pytest.mark.skipif(not os.environ.get("CI") and not _cluster_up(),
                                 reason="local SLURM test cluster is not up (run slurm/local_cluster_up.sh as root)"),
              pytest.mark.parametrize("mode", [MODE])]  # shows in the test id which network mode ran
netns_only = pytest.mark.skipif(MODE != "netns", reason="needs the namespaced test network (netns mode)")


def _job_field(job: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True).stdout
    found = re.search(rf"\b{name}=(\S*)", out)
    return found.group(1) if found else ""


def _queued(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _alive(pid: str) -> bool:
    """Running, not a zombie (this machine's init may not reap daemons' zombies)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _namespace_leftovers() -> dict[str, list[str]]:
    """Processes in each node's namespace other than its slurmd (netns mode)."""
    left = {}
    for name, node in NODES.items():
        if not node.get("netns"):
            continue
        slurmd = Path(f"/run/slurm-distgan/slurmd-{name}.pid").read_text().strip()
        pids = subprocess.run(["ip", "netns", "pids", node["netns"]], capture_output=True, text=True).stdout.split()
        others = [p for p in pids if p != slurmd and _alive(p)]
        if others:
            left[name] = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80] for p in others]
    return left


def assert_nothing_left(job: str) -> None:
    assert_job_gone(job)
    try:
        _wait_for(lambda: not _namespace_leftovers(), 60, "the nodes' namespaces to hold only slurmd")
    except AssertionError:
        raise AssertionError(f"left running in the node namespaces: {_namespace_leftovers()}") from None


def start_cli(*overrides: str) -> subprocess.Popen:
    """``launch/run.py cluster=slurm cluster.wait=true …`` in the background (it follows the job)."""
    return subprocess.Popen([sys.executable, str(ROOT / "launch" / "run.py"), "cluster=slurm", "cluster.wait=true",
                             *overrides], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def submitted_job(run: Path, cli: subprocess.Popen) -> str:
    def find():
        if cli.poll() is not None:
            raise AssertionError(f"the CLI ended early: {cli.communicate()}")
        return next((p.name.split("_")[0] for p in (run / "slurm").glob("*_submitted.pkl")), None)
    return _wait_for(find, 120, "the submission")


def newest_checkpoint(run: Path) -> int:
    return max((int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*")), default=0)


def placements(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "workers").glob("rank*.json"))]


def test_two_node_job_talks_between_the_node_addresses(tmp_path, fashion_root, mode):
    """Ranks on two nodes; gloo's connections really go between the two nodes' addresses (netns: two
    namespaces); every Ray port in cluster.port_range; per-rank curves; nothing left running."""
    run = tmp_path / "run"
    out = run_cli(f"hydra.run.dir={run}", f"dataset.root={fashion_root}", *TINY, "train.steps=20",
                  "cluster.nodes=2", "cluster.port_range=47000-47127", "cluster.wait=true")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (job,) = job_ids(out.stdout)
    ranks = placements(run)
    assert [p["rank"] for p in ranks] == [0, 1]  # world size 2
    assert len({p["slurm_node"] for p in ranks}) == 2 and all(p["slurm_job"] == job for p in ranks)
    for me, other in ((ranks[0], ranks[1]), (ranks[1], ranks[0])):
        own, peer = NODES[me["slurm_node"]]["address"], NODES[other["slurm_node"]]["address"]
        assert me["gloo_interface"] == NODES[me["slurm_node"]]["interface"]
        assert me["gloo_local"] == [own] and me["gloo_peers"] == [peer], me
    if mode == "netns":
        assert [p["node_ip"] for p in ranks] == [NODES[p["slurm_node"]]["address"] for p in ranks]  # Ray's too
        assert ranks[0]["gloo_local"] != ranks[1]["gloo_local"]  # two machines, two addresses
        assert {p["host"] for p in ranks} == {p["slurm_node"] for p in ranks}  # each node's own hostname
        for node in NODES.values():  # nothing routed beyond the test network
            routes = subprocess.run(["ip", "-n", node["netns"], "-4", "route"], capture_output=True, text=True)
            assert routes.stdout.split()[0] == NET["subnet"] and "default" not in routes.stdout
    head = json.loads((run / "slurm" / f"head-{job}-0.json").read_text())
    assert 47000 <= head["port"] < 47064 and head["ip"] == NODES[head["node"]]["address"]
    for rank in (0, 1):
        assert tb_steps(run / "tb" / f"rank{rank}") == [10, 20]
    assert_nothing_left(job)


@pytest.mark.parametrize("interface, message", [
    ("nosuch0", "has no interface 'nosuch0'"),
    pytest.param("lo", "cannot reach the Ray head at 127.0.0.1:", marks=netns_only),  # exists, wrong network
], ids=["missing", "lo"])
def test_wrong_interface_is_one_line_within_60_s(tmp_path, fashion_root, mode, interface, message):
    run = tmp_path / "run"
    t0 = time.monotonic()
    out = run_cli(f"hydra.run.dir={run}", f"dataset.root={fashion_root}", *TINY, "train.steps=20",
                  "cluster.nodes=2", f"cluster.network_interface={interface}", "cluster.wait=true", timeout=180)
    elapsed = time.monotonic() - t0
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and interface in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert_nothing_left(job_ids(out.stdout)[0])


def kill_job_processes(job: str, node: str) -> list[str]:
    """SIGKILL what the job's step runs on ``node`` (its task, the Ray node, the workers), as if the node's
    processes had died; slurmd and slurmstepd stay, so SLURM still sees a healthy node."""
    killed = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            if (f"SLURM_JOB_ID={job}".encode() in environ and f"SLURMD_NODENAME={node}".encode() in environ
                    and b"SLURM_STEP_ID=0" in environ and (proc / "comm").read_text().strip() != "slurmstepd"):
                os.kill(int(proc.name), 9)
                killed.append(proc.name)
        except (OSError, ValueError):
            continue
    return killed


def test_requeue_node_down_and_dead_node_processes_resume(tmp_path, fashion_root, mode):
    """One 2-node job meets what clusters do to jobs, each mid-run: a requeue by the scheduler (SIGTERM
    without warning, SIGKILL KillWait later), a node marked down (SLURM requeues the job: distgan submits
    with --requeue), and a node whose processes die while SLURM still thinks it healthy (the head sees its
    Ray node gone and requeues). Each time the attempt ends within cluster.node_failure_timeout_s, the job
    comes back (on healthy nodes), resumes from the last checkpoint and the curves continue without a
    repeated or missing step; all three count against cluster.max_requeues (SLURM's restart count)."""
    run, steps, timeout_s = tmp_path / "run", 200, 60
    cli = start_cli(f"hydra.run.dir={run}", f"dataset.root={fashion_root}", *TINY, f"train.steps={steps}",
                    "cluster.nodes=2", "cluster.max_requeues=3", f"cluster.node_failure_timeout_s={timeout_s}")
    job = submitted_job(run, cli)
    down, resumes = None, []  # (checkpoint the next attempt resumes from, metrics lines logged before it)

    def attempt_training(restart: int) -> tuple[str, str]:
        """Wait until attempt ``restart`` trains past a checkpoint of its own; its (head node, other node)."""
        start = resumes[-1][0] if resumes else 0
        _wait_for(lambda: len(ranks := placements(run)) == 2 and all(p["restart"] == restart for p in ranks)
                  and newest_checkpoint(run) > start, 300, f"attempt {restart} to train past a checkpoint", poll=0.5)
        assert _steps(run)[-1] < steps, "the job finished before it was interrupted: raise train.steps"
        head = json.loads((run / "slurm" / f"head-{job}-{restart}.json").read_text())["node"]
        return head, next(p["slurm_node"] for p in placements(run) if p["slurm_node"] != head)

    def interrupted(action) -> float:
        t0 = time.monotonic()
        action()
        _wait_for(lambda: _queued(job) == "PENDING", timeout_s, "the interrupted attempt to end")
        resumes.append((newest_checkpoint(run), len(_steps(run))))  # that attempt is gone: nothing more logged
        return time.monotonic() - t0

    try:
        attempt_training(0)
        interrupted(lambda: subprocess.run(["scontrol", "requeue", job], check=True))
        _, down = attempt_training(1)
        ended = interrupted(lambda: subprocess.run(["scontrol", "update", f"NodeName={down}", "State=DOWN",
                                                    "Reason=distgan-test"], check=True))
        assert ended < timeout_s
        head, other = attempt_training(2)
        assert down not in (head, other), "the requeued job ran on the node that is down"
        ended = interrupted(lambda: kill_job_processes(job, other))
        assert ended < timeout_s
        stdout, stderr = cli.communicate(timeout=600)
    finally:
        cli.kill()
        subprocess.run(["scancel", job], capture_output=True)
        if down:
            subprocess.run(["scontrol", "update", f"NodeName={down}", "State=RESUME"], capture_output=True)
    assert cli.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert _job_field(job, "JobState") == "COMPLETED" and _job_field(job, "Restarts") == "3"
    logged, task0_log = _steps(run), (run / "slurm" / f"{job}_0_log.out").read_text()
    for resume_at, logged_before in resumes:
        assert logged[logged_before] == resume_at + 10, f"resumed at {logged[logged_before]}, not {resume_at}+10"
        assert f"training from step_{resume_at:07d}" in task0_log
    for rank in (0, 1):
        assert tb_steps(run / "tb" / f"rank{rank}") == list(range(10, steps + 1, 10))  # no repeat, no gap
    lost = re.search(rf"node {other} \((\S+)\) of SLURM job {job} was lost", (run / "train.log").read_text())
    assert lost and (mode != "netns" or lost.group(1) == NODES[other]["address"])  # loopback: Ray's pick
    assert_nothing_left(job)
    _wait_for(lambda: re.search(rf"^{down} idle", subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout, re.M), 60, "the node back")


def test_requeue_beyond_max_requeues_is_refused(tmp_path, fashion_root, mode):
    """cluster.max_requeues=0: the requeued attempt refuses to run and says why in one line."""
    run = tmp_path / "run"
    cli = start_cli(f"hydra.run.dir={run}", f"dataset.root={fashion_root}", *TINY, "train.steps=2000",
                    "cluster.max_requeues=0")
    job = submitted_job(run, cli)
    try:
        _wait_for(lambda: _queued(job) == "RUNNING", 120, "the job to start")
        subprocess.run(["scontrol", "requeue", job], check=True)
        _, stderr = cli.communicate(timeout=300)
    finally:
        cli.kill()
        subprocess.run(["scancel", job], capture_output=True)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert cli.returncode != 0 and len(errors) == 1, stderr[-3000:]
    assert "requeued this job 1 time, more than cluster.max_requeues=0" in errors[0]
    assert_nothing_left(job)


@pytest.mark.skipif(os.geteuid() != 0 or not NETWORK_FILE.exists(), reason="needs root and a cluster the script built")
def test_cluster_scripts_remove_the_test_network_and_rebuild_it(mode):
    """local_cluster_down.sh leaves no namespace, veth, bridge, daemon or hosts line; up brings it all back."""
    env = {**os.environ, "DISTGAN_SLURM_NETWORK": mode, "DISTGAN_SLURM_NODES": str(len(NODES))}
    down = subprocess.run(["bash", "slurm/local_cluster_down.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    try:
        assert down.returncode == 0, down.stderr
        assert "distgan-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        assert not re.search(r"^dg", links, re.M), links
        assert "# distgan-local-cluster" not in Path("/etc/hosts").read_text()
        slurmds = subprocess.run(["pgrep", "-x", "slurmd"], capture_output=True, text=True).stdout.split()
        assert not [p for p in slurmds if _alive(p)], "a slurmd survived local_cluster_down.sh"
    finally:
        up = subprocess.run(["bash", "slurm/local_cluster_up.sh"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert json.loads(NETWORK_FILE.read_text()) == NET
