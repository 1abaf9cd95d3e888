"""What runs inside the SLURM job: every task (one per node) calls :class:`SlurmJob`.

Task 0 starts the Ray head and the driver, tasks 1.. join the head; they meet through a file in the run
directory (shared storage), so no SLURM node name has to resolve in DNS. Every task first picks its
:class:`~distgan.launcher.network.Endpoint` (``cluster.network_interface``, else the interface that routes to
the head) and hands it to Ray, gloo and NCCL; a joiner checks that the head answers on it before starting
Ray, so a wrong network is one line within seconds, not a hang. When training ends the driver writes a
``done`` marker: every task then stops its own Ray processes (never ``ray stop``, which would kill every
Ray process on a shared host) and exits, so the job completes instead of hanging in ``ray start --block``.

Time limit: SLURM sends SIGUSR2 ``cluster.signal_delay_s`` before the limit; submitit calls
:meth:`SlurmJob.checkpoint` on task 0, which asks the training loop to checkpoint and stop, waits for it,
and hands submitit a requeue of the same job; the requeued job resumes in the same run directory.

A lost node (its Ray processes died, or it stopped answering): the task that notices — the head for a
worker node, a worker node for the head — requeues the job within ``cluster.node_failure_timeout_s``
(distgan/launcher/recovery.py says what counts against ``cluster.max_requeues``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

import distgan
from distgan import checkpoint
from distgan.config import Config
from distgan.errors import UserError, first_line
from distgan.files import write_atomic
from distgan.launcher import network, recovery
from distgan.launcher.backends import workers_per_node
from distgan.launcher.network import Endpoint
from distgan.launcher.ray_train import RAY_ENV, RAY_SYSTEM_CONFIG, root_cause, secure_ray_env
from distgan.rundir import RunDir

log = logging.getLogger("distgan")
RENDEZVOUS_TIMEOUT_S = 300
REACH_TIMEOUT_S = 15  # a joiner's wait for the head's port: well inside the 60 s a wrong network may cost


@dataclass(frozen=True)
class RayNode:
    name: str  # the SLURM node (ray start --node-name)
    address: str
    port: int = 0  # its raylet's port: answers as long as the node's Ray lives


def _as_ray_child() -> None:
    """In ``ray start`` before exec: survive SIGUSR2 (SLURM signals every process of the step; it is meant
    for submitit), and die with this task (PR_SET_PDEATHSIG), taking the Ray node with it (Ray's own
    processes share the fate of ``ray start --block``): a killed task leaves no Ray node behind, and the
    other nodes see it gone."""
    import ctypes

    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _one_line(error: BaseException) -> str:
    cause = root_cause(error)
    if isinstance(cause, UserError):
        return " ".join(str(cause).split())
    return f"{type(cause).__name__}: {first_line(cause)}"


def _job_nodes() -> list[str]:
    """Host names of this job's nodes (``scontrol show hostnames``); [] if SLURM cannot say."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.split() if out.returncode == 0 else []


class SlurmJob(submitit.helpers.Checkpointable):
    def __init__(self, cfg: Config):
        self.cfg = cfg

    # ------------------------------------------------------------------------------------ paths
    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def slurm_dir(self) -> Path:
        return RunDir(self.cfg.run_dir).slurm

    def _attempt(self) -> str:
        env = submitit.JobEnvironment()
        return f"{env.job_id}-{recovery.restart_count()}"

    def _marker(self, kind: str) -> Path:
        return recovery.marker(self.run_dir, kind, submitit.JobEnvironment().job_id)

    def _failure(self) -> str | None:
        record = recovery.read_failure(self.run_dir, submitit.JobEnvironment().job_id,
                                       recovery.restart_count())
        return record["message"] if record else None

    # ------------------------------------------------------------------------------------- entry
    def __call__(self) -> str:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][task %(process)d] %(message)s")
        env = submitit.JobEnvironment()
        log.info("task %d of job %s (restart %d) on %s, distgan from %s", env.global_rank, env.job_id,
                 recovery.restart_count(), network.node_name(), Path(distgan.__file__).parent)
        self.slurm_dir.mkdir(parents=True, exist_ok=True)
        secure_ray_env(self.run_dir)
        os.environ.update(recovery.ray_failure_env(self.cfg.cluster.node_failure_timeout_s))
        os.environ.update(RAY_ENV)  # SLURM drains no Ray node, and the metrics are off: two actors fewer
        try:
            recovery.check_budget(self.cfg.cluster.max_requeues, self.run_dir)
            if env.global_rank == 0:
                RunDir(self.run_dir).stop_file.unlink(missing_ok=True)  # a stop request of the previous attempt
                return self._head(env)
            return self._join(env)
        except Exception as e:
            # the first failing task's line is what the login node prints (cluster.wait=true)
            recovery.record_failure(self.run_dir, env.job_id, _one_line(e), task=env.global_rank)
            log.error("%s", _one_line(e))
            raise

    def _endpoint(self, peers: list[str]) -> Endpoint:
        """This node's interface and address; gloo and NCCL bind to the same interface (a value the user
        exported wins unless ``cluster.network_interface`` names one explicitly)."""
        me = network.choose(self.cfg.cluster.network_interface, peers)
        for key, value in me.env().items():
            if self.cfg.cluster.network_interface or key not in os.environ:
                os.environ[key] = value
        log.info("node %s: interface %s, address %s (gloo %s, nccl %s)", network.node_name(), me.interface,
                 me.address, os.environ["GLOO_SOCKET_IFNAME"], os.environ["NCCL_SOCKET_IFNAME"])
        return me

    def _ray_start(self, args: list[str], name: str, ports: list[str]) -> subprocess.Popen:
        ray = str(Path(sys.executable).with_name("ray"))
        logfile = open(self.slurm_dir / f"ray-{name}-{self._attempt()}.log", "ab")
        c = self.cfg.cluster
        resources = ["--num-cpus", str(workers_per_node(c) * c.cpus_per_worker), "--num-gpus", str(c.gpus_per_node)]
        cmd = [ray, "start", "--block", "--disable-usage-stats", "--node-name", network.node_name(), *resources,
               *ports, *args]
        return subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, preexec_fn=_as_ray_child,
                                start_new_session=True, env=os.environ.copy())

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """Stop this task's Ray processes: SIGTERM to its process group, then SIGKILL."""
        # Ray drains for up to 30 s on SIGTERM (and `ray start --block` outlives it); training is over and
        # saved, so 2 s is plenty
        for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -------------------------------------------------------------------------------------- head
    def _head(self, env) -> str:
        me = self._endpoint([n for n in _job_nodes() if n != network.node_name()])
        ports = network.ray_ports(self.cfg.cluster.port_range, 0, env.num_tasks, head=True)
        with RunDir(self.run_dir).lock():  # one run per folder: a second job into it stops here
            lost = self._run_head(env, me, ports)
        if lost is None:
            return str(self.run_dir)
        self._node_lost(env, lost)
        return "requeued"

    def _run_head(self, env, me: Endpoint, ports: dict[str, int]) -> RayNode | None:
        import ray

        from distgan.launcher.ray_train import fit, run_in_thread

        port = ports["--port"]
        temp_dir = f"/tmp/distgan-ray-{self._attempt()}"  # node-local and short: socket paths <= 107 bytes
        head = self._ray_start(["--head", "--node-ip-address", me.address, "--temp-dir", temp_dir,
                                "--include-dashboard", "false", "--system-config", json.dumps(RAY_SYSTEM_CONFIG)],
                               "head", network.port_flags(ports))
        self._marker("done").unlink(missing_ok=True)
        try:
            # published only once it answers on the chosen interface: joiners then know a failure is theirs
            network.wait_reachable(me.address, port, me, REACH_TIMEOUT_S, what="this node's own Ray head")
            write_atomic(self._marker("head"), json.dumps({
                "address": f"{me.address}:{port}", "ip": me.address, "port": port, "interface": me.interface,
                "node": network.node_name()}))
            ray.init(address=f"{me.address}:{port}", _node_ip_address=me.address, logging_level=logging.ERROR,
                     log_to_driver=False)
            nodes = self._wait_for_nodes(ray, env.num_tasks)
            found = checkpoint.list_checkpoints(RunDir(self.run_dir).checkpoints)
            log.info("Ray cluster of %d node(s) up at %s:%d (%s); training from %s", env.num_tasks, me.address,
                     port, me.interface, found[0].name if found else "scratch")
            thread, box = run_in_thread(self._search if self.cfg.tune.name != "none" else fit, self.cfg, 0)
            lost = self._watch(ray, thread, nodes)
            if lost is None and box["error"] is not None:
                lost = self._first_dead(ray, nodes, me)  # a node died, and training failed because of it
                if lost is None:
                    raise box["error"]
            return lost
        finally:
            write_atomic(self._marker("done"), "{}")
            try:
                ray.shutdown()
            finally:
                self._stop(head)

    @staticmethod
    def _search(cfg: Config, cuda_devices: int) -> None:
        """``tune=...``: the search's trials in this job's Ray cluster (distgan/launcher/tune.py); the results
        table goes to task 0's log, results.csv and results.md to the run (sweep) directory."""
        from distgan.launcher import tune

        print(tune.run_sweep(cfg, cuda_devices), flush=True)

    def _wait_for_nodes(self, ray, count: int) -> dict[str, RayNode]:
        """All ``count`` Ray nodes alive, as ``{node id: (SLURM node, address)}``; fails early (with the
        joiner's own line) when a joiner has recorded a failure."""
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
        while True:
            alive = {n["NodeID"]: RayNode(n.get("NodeName") or n["NodeManagerHostname"], n["NodeManagerAddress"],
                                          int(n["NodeManagerPort"])) for n in ray.nodes() if n["Alive"]}
            if len(alive) >= count:
                return alive
            failure = self._failure()
            if failure:
                raise UserError(failure)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(alive)} of {count} Ray nodes joined within {RENDEZVOUS_TIMEOUT_S} s; "
                                   "see the ray-node*.log files in <run_dir>/slurm")
            time.sleep(1)

    @staticmethod
    def _first_dead(ray, nodes: dict[str, RayNode], me: Endpoint | None = None) -> RayNode | None:
        """A node Ray has declared dead; with ``me``, also one whose raylet no longer answers (Ray Train fails
        the worker group within seconds of a lost worker, before the GCS's health checks declare its node
        dead: this tells a lost node from a training error right away)."""
        try:
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        except Exception:  # noqa: BLE001 - the GCS itself is gone: nothing to name
            return None
        dead = next((info for node_id, info in nodes.items() if node_id not in alive), None)
        if dead is not None or me is None:
            return dead
        for info in nodes.values():
            try:
                network.wait_reachable(info.address, info.port, me, 3, what=f"the Ray node on {info.name}")
            except network.NetworkError:
                return info
        return None

    def _watch(self, ray, thread, nodes: dict[str, RayNode]) -> RayNode | None:
        """Wait for training to end. A node Ray declares dead (within half of ``node_failure_timeout_s``)
        ends the wait once Ray Train has failed the worker group, or a quarter of the timeout later even
        if it has not (a collective blocked on the lost rank)."""
        grace, dead_since = self.cfg.cluster.node_failure_timeout_s / 4, None
        while thread.is_alive():
            thread.join(2.0)
            lost = self._first_dead(ray, nodes)
            if lost is None:
                continue
            dead_since = dead_since or time.monotonic()
            if not thread.is_alive() or time.monotonic() - dead_since > grace:
                return lost
        return None

    def _node_lost(self, env, lost: RayNode) -> None:
        """Requeue within the budget, else fail with the line that names the node."""
        c = self.cfg.cluster

        def say(outcome: str) -> str:
            message = recovery.lost_node_message(lost.name, lost.address, env.job_id,
                                                 recovery.last_step(self.run_dir), outcome, c.max_requeues,
                                                 self.run_dir)
            log.error("%s", message)
            with open(RunDir(self.run_dir).log, "a") as f:
                f.write(f"error: {message}\n")
            return message

        if recovery.budget_left(c.max_requeues):
            # said first: once SLURM has the requeue it ends this task (SIGTERM) at any moment
            if recovery.requeue(env.job_id, say("requeued")):
                sys.exit(-1)  # like submitit after its own requeue
            raise UserError(say("refused"))
        raise UserError(say("spent"))

    # -------------------------------------------------------------------------------------- join
    def _wait_for_head(self) -> dict:
        head_file, deadline = self._marker("head"), time.monotonic() + RENDEZVOUS_TIMEOUT_S
        while not head_file.exists():
            failure = self._failure()
            if failure or self._marker("done").exists():
                raise UserError(failure or "the head task ended before the Ray cluster was up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Ray head address in {head_file} after {RENDEZVOUS_TIMEOUT_S} s")
            time.sleep(1)
        return json.loads(head_file.read_text())

    def _join(self, env) -> str:
        head = self._wait_for_head()
        me = self._endpoint([head["ip"]])
        # the head's port answers from here, on this interface, or this node is on the wrong network
        network.wait_reachable(head["ip"], head["port"], me, REACH_TIMEOUT_S)
        ports = network.ray_ports(self.cfg.cluster.port_range, env.global_rank, env.num_tasks, head=False)
        worker = self._ray_start(["--address", head["address"], "--node-ip-address", me.address],
                                 f"node{env.global_rank}", network.port_flags(ports))
        try:
            while not self._marker("done").exists() and worker.poll() is None:
                time.sleep(2)
        finally:
            self._stop(worker)
        if self._marker("done").exists():
            return "joined"
        # Our raylet ended before training did: it lost the head (the head's node died: nobody else can
        # requeue), or it died itself (the head sees this node dead and requeues).
        try:
            network.wait_reachable(head["ip"], head["port"], me, 10)
        except network.NetworkError:
            self._node_lost(env, RayNode(head.get("node", "head"), head["ip"]))
        for _ in range(int(self.cfg.cluster.node_failure_timeout_s)):  # the head's requeue ends this task
            if self._marker("done").exists():
                break
            time.sleep(1)
        raise RuntimeError(f"the Ray node on {network.node_name()} ended before training did; see "
                           f"{self.run_dir}/slurm/ray-node{env.global_rank}-{self._attempt()}.log")

    # ------------------------------------------------------------------------------- time limit
    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission | None:
        """SIGUSR2 before the time limit: ask the loop to save and stop, wait for it, then requeue (within
        the requeue budget: otherwise the job ends here with one line, its checkpoint intact)."""
        rd = RunDir(self.run_dir)
        if rd.done_file.exists():  # training already reached train.steps: nothing to save or to requeue
            return None
        before = set(checkpoint.list_checkpoints(rd.checkpoints))
        write_atomic(rd.stop_file, "time limit")
        deadline = time.monotonic() + max(self.cfg.cluster.signal_delay_s - 15, 5)
        while time.monotonic() < deadline and not rd.done_file.exists():
            if set(checkpoint.list_checkpoints(rd.checkpoints)) - before:
                break
            time.sleep(1)
        if rd.done_file.exists():  # it finished meanwhile: the request has no loop left to honour it
            rd.stop_file.unlink(missing_ok=True)
            return None
        if not recovery.budget_left(self.cfg.cluster.max_requeues):
            recovery.record_failure(self.run_dir, submitit.JobEnvironment().job_id, (
                f"time limit reached and cluster.max_requeues={self.cfg.cluster.max_requeues} spent: stopped at "
                f"step {recovery.last_step(self.run_dir)}; submit again with the same hydra.run.dir to continue"))
            return None
        return submitit.helpers.DelayedSubmission(SlurmJob(self.cfg))
