"""distgan/launcher/network.py and recovery.py: interfaces, reachability with a deadline, ports, requeue budget."""

from __future__ import annotations

import json
import socket
import time

import pytest

from distgan.config import ClusterConfig, Config
from distgan.errors import UserError
from distgan.launcher import network, recovery
from distgan.launcher.preflight import check_config
from distgan.testing import gloo


def test_loopback_is_listed_with_its_address():
    assert network.interfaces()["lo"] == "127.0.0.1"
    assert network.interface_address("lo") == "127.0.0.1"
    assert network.choose("lo") == network.Endpoint("lo", "127.0.0.1")
    assert network.choose("lo").env() == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}


def test_unknown_interface_is_one_line_naming_it_and_what_the_node_has():
    with pytest.raises(network.NetworkError) as e:
        network.choose("nosuch0")
    message = str(e.value)
    assert "\n" not in message and "'nosuch0'" in message and "lo 127.0.0.1" in message
    assert isinstance(e.value, UserError)  # launchers print it as `error: ...`


def test_route_follows_the_peer():
    assert network.route_to("127.0.0.1") == network.Endpoint("lo", "127.0.0.1")
    assert network.choose(None, ["no-such-host.invalid", "127.0.0.1"]) == network.Endpoint("lo", "127.0.0.1")
    assert network.route_to("no-such-host.invalid") is None
    own = network.choose(None, [])  # no peer: the default route's interface, else loopback
    assert network.interfaces()[own.interface] == own.address


def test_reachable_port_returns_and_closed_port_fails_within_the_deadline():
    lo = network.Endpoint("lo", "127.0.0.1")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        network.wait_reachable("127.0.0.1", server.getsockname()[1], lo, 5)
        port = server.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(network.NetworkError) as e:
        network.wait_reachable("127.0.0.1", port, lo, 1.5)
    assert time.monotonic() - t0 < 10  # retried until the deadline, then gave up: no hang
    message = str(e.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "interface lo" in message
    assert "within 2 s" in message and "refused" in message.lower()


def test_tcp_connections_of_this_process():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            local = client.getsockname()
            assert (*local, *server.getsockname()) in network.tcp_connections()
        assert (*local, *server.getsockname()) not in network.tcp_connections()


def _gloo_probe():
    # a connection open before the probe (as Ray's are) is not gloo's: it must not be reported
    with socket.socket() as server:
        server.bind(("127.0.0.2", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), source_address=("127.0.0.3", 0)):
            return network.gloo_endpoints()


def test_gloo_endpoints_are_the_connections_of_a_gloo_group():
    ranks = gloo.run(_gloo_probe, 2)
    for info in ranks:
        assert info == {"gloo_local": ["127.0.0.1"], "gloo_peers": ["127.0.0.1"]}
    assert gloo.run(_gloo_probe, 1) == [{}]  # no group, nothing to probe


def test_ray_ports_stay_in_each_nodes_slice_of_the_range():
    head = network.ray_ports("40000-40063", 0, 2, head=True)
    other = network.ray_ports("40000-40063", 1, 2, head=False)
    assert set(network.HEAD_PORTS) | set(network.NODE_PORTS) <= set(head)
    assert all(40000 <= p < 40032 for p in head.values()) and all(40032 <= p < 40064 for p in other.values())
    services = [p for k, p in head.items() if "worker" not in k]
    assert len(set(services)) == len(services) and head["--min-worker-port"] > max(services)
    assert network.port_flags({"--port": 1})[:2] == ["--port", "1"]
    with socket.socket() as busy:  # a port in use is skipped
        busy.bind(("", 40032))
        assert 40032 not in network.ray_ports("40000-40063", 1, 2, head=False).values()
    assert all(p > 1023 for p in network.ray_ports(None, 0, 1, head=True).values())


@pytest.mark.parametrize("key, value, message", [
    ("port_range", "20000", "must be LO-HI"),
    ("port_range", "900-2000", "must be LO-HI"),
    ("port_range", "20000-20040", "need at least 32 each"),
    ("node_failure_timeout_s", 5, "node_failure_timeout_s must be >= 10"),
])
def test_bad_network_settings_are_one_line(key, value, message):
    cluster = ClusterConfig(name="slurm", nodes=2, cpus_per_task=1, **{key: value})
    with pytest.raises(UserError, match=message):
        check_config(Config(cluster=cluster, train=Config().train))


def test_requeue_budget_counts_slurms_restarts(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    recovery.check_budget(0, tmp_path)
    assert recovery.budget_left(1) and not recovery.budget_left(0)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    recovery.check_budget(2, tmp_path)
    assert not recovery.budget_left(2)
    with pytest.raises(recovery.RequeueBudgetError, match="requeued this job 2 times, more than "
                                                          "cluster.max_requeues=1"):
        recovery.check_budget(1, tmp_path)


def test_first_failure_of_an_attempt_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert recovery.record_failure(tmp_path, "7", "node n2 has no\ninterface x", task=1)
    assert not recovery.record_failure(tmp_path, "7", "a later, secondary error")
    assert recovery.read_failure(tmp_path, "7", 1)["message"] == "node n2 has no interface x"
    assert recovery.read_failure(tmp_path, "7", 0) is None
    assert recovery.read_failure(tmp_path, "7")["task"] == 1
    (tmp_path / "slurm" / "failed-7-0.json").write_text(json.dumps({"message": "older"}))
    assert recovery.read_failure(tmp_path, "7")["message"] == "node n2 has no interface x"  # the latest attempt


@pytest.mark.parametrize("timeout_s", [10, 30, 120, 600])
def test_ray_declares_a_silent_node_dead_within_half_the_budget(timeout_s):
    env = recovery.ray_failure_env(timeout_s)
    worst_ms = int(env["RAY_health_check_failure_threshold"]) * (
        int(env["RAY_health_check_period_ms"]) + int(env["RAY_health_check_timeout_ms"]))
    assert worst_ms <= max(timeout_s, 10) * 1000 / 2 + 1
    assert int(env["RAY_gcs_rpc_server_reconnect_timeout_s"]) <= max(timeout_s, 10) / 2


def test_last_step_reads_the_progress_file(tmp_path):
    assert recovery.last_step(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text('{"step": 10}\n{"step": 20}\n')
    assert recovery.last_step(tmp_path) == 20


@pytest.mark.parametrize("outcome, says", [("requeued", "the job is requeued (restart 1 of cluster.max_requeues=3)"),
                                           ("spent", "not requeued (cluster.max_requeues=3 spent)"),
                                           ("refused", "not requeued (scontrol requeue 7 failed")])
def test_lost_node_line_names_the_node_and_what_happens(monkeypatch, tmp_path, outcome, says):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    line = recovery.lost_node_message("n2", "198.18.0.12", "7", 140, outcome, 3, tmp_path)
    assert line.startswith("node n2 (198.18.0.12) of SLURM job 7 was lost at step 140; ") and says in line
    assert "\n" not in line and str(tmp_path / "checkpoints") in line
