"""What runs inside the SLURM job: every task (one per node) calls :class:`SlurmJob`.

Task 0 starts the Ray head and the driver, tasks 1.. join the head; they meet through a file in the run
directory (shared storage), so no SLURM node name has to resolve in DNS. When training ends the driver
writes a ``done`` marker: every task then stops its own Ray processes (never ``ray stop``, which would
kill every Ray process on a shared host) and exits, so the job completes instead of hanging in
``ray start --block``.

Time limit: SLURM sends SIGUSR2 ``cluster.signal_delay_s`` before the limit; submitit calls
:meth:`SlurmJob.checkpoint` on task 0, which asks the training loop to checkpoint and stop, waits for it,
and hands submitit a requeue of the same job; the requeued job resumes in the same run directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import submitit

from distgan.config import Config
from distgan.launcher.backends import workers_per_node
from distgan.launcher.ray_train import secure_ray_env
from distgan.rundir import RunDir

log = logging.getLogger("distgan")
RENDEZVOUS_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _own_ip() -> str:
    """This node's address as other nodes reach it (the interface of the default route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: UDP connect only picks the interface
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def _ignore_usr2() -> None:
    # SLURM signals every process of the step; Ray's processes must survive SIGUSR2 (meant for submitit)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


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
        return f"{env.job_id}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"

    def _marker(self, kind: str) -> Path:
        return self.slurm_dir / f"{kind}-{self._attempt()}.json"

    # ------------------------------------------------------------------------------------- entry
    def __call__(self) -> str:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][task %(process)d] %(message)s")
        env = submitit.JobEnvironment()
        self.slurm_dir.mkdir(parents=True, exist_ok=True)
        secure_ray_env(self.run_dir)
        if env.global_rank == 0:
            RunDir(self.run_dir).stop_file.unlink(missing_ok=True)  # a stop request of the previous attempt
            return self._head(env)
        return self._join(env)

    def _ray_start(self, args: list[str], name: str) -> subprocess.Popen:
        ray = str(Path(sys.executable).with_name("ray"))
        logfile = open(self.slurm_dir / f"ray-{name}-{self._attempt()}.log", "ab")
        c = self.cfg.cluster
        resources = ["--num-cpus", str(workers_per_node(c) * c.cpus_per_worker), "--num-gpus", str(c.gpus_per_node)]
        # every port explicit and free: several Ray nodes may share one host (as on the test cluster)
        ports = ["--node-manager-port", str(_free_port()), "--object-manager-port", str(_free_port()),
                 "--metrics-export-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
                 "--dashboard-agent-grpc-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port())]
        cmd = [ray, "start", "--block", "--disable-usage-stats", *resources, *ports, *args]
        return subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, preexec_fn=_ignore_usr2,
                                start_new_session=True, env=os.environ.copy())

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """Stop this task's Ray processes: SIGTERM to its process group, then SIGKILL."""
        # Ray drains for up to 30 s on SIGTERM; training is over and saved, so 5 s is plenty
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _head(self, env) -> str:
        import ray

        from distgan.launcher.ray_train import fit

        ip, port = _own_ip(), _free_port()
        temp_dir = f"/tmp/distgan-ray-{self._attempt()}"  # node-local and short: socket paths <= 107 bytes
        head = self._ray_start(["--head", "--node-ip-address", ip, "--port", str(port), "--temp-dir", temp_dir,
                                "--include-dashboard", "false"], "head")
        self._marker("done").unlink(missing_ok=True)
        self._marker("head").write_text(json.dumps({"address": f"{ip}:{port}", "ip": ip}))
        try:
            ray.init(address=f"{ip}:{port}", logging_level=logging.ERROR, log_to_driver=False)
            self._wait_for_nodes(ray, env.num_tasks)
            log.info("Ray cluster of %d node(s) up at %s:%d; training", env.num_tasks, ip, port)
            fit(self.cfg, cuda_devices=0)
            return str(self.run_dir)
        finally:
            self._marker("done").write_text("{}")
            try:
                ray.shutdown()
            finally:
                self._stop(head)

    @staticmethod
    def _wait_for_nodes(ray, count: int) -> None:
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
        while sum(n["Alive"] for n in ray.nodes()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sum(n['Alive'] for n in ray.nodes())} of {count} Ray nodes joined "
                                   f"within {RENDEZVOUS_TIMEOUT_S} s; see the ray-node*.log files in <run_dir>/slurm")
            time.sleep(1)

    def _join(self, env) -> str:
        head_file, deadline = self._marker("head"), time.monotonic() + RENDEZVOUS_TIMEOUT_S
        while not head_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Ray head address in {head_file} after {RENDEZVOUS_TIMEOUT_S} s")
            time.sleep(1)
        head = json.loads(head_file.read_text())
        worker = self._ray_start(["--address", head["address"], "--node-ip-address", _own_ip()],
                                 f"node{env.global_rank}")
        try:
            while not self._marker("done").exists() and worker.poll() is None:
                time.sleep(2)
        finally:
            self._stop(worker)
        return "joined"

    # ------------------------------------------------------------------------------- time limit
    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """SIGUSR2 before the time limit: ask the loop to save and stop, wait for it, then requeue."""
        rd = RunDir(self.run_dir)
        before = set(p.name for p in rd.checkpoints.glob("step_*"))
        rd.stop_file.write_text("time limit")
        deadline = time.monotonic() + max(self.cfg.cluster.signal_delay_s - 15, 5)
        while time.monotonic() < deadline:
            now = set(p.name for p in rd.checkpoints.glob("step_*"))
            if now - before:
                break
            time.sleep(1)
        return submitit.helpers.DelayedSubmission(SlurmJob(self.cfg))
