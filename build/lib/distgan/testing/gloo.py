"""Run a function in N fresh processes joined by a plain gloo group (no Ray): the fast path for the
DDP-correctness tests, and the process runner of bench/throughput.py."""

from __future__ import annotations

import os
import pickle
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        if world > 1:  # one process runs as distgan does without a group: no DDP
            dist.init_process_group("gloo", rank=rank, world_size=world)
        # pickled to bytes: tensors sent through the queue as shared memory would vanish when this
        # process exits before the parent reads them
        queue.put((rank, pickle.dumps(fn(*args)), None))
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(fn, world: int, *args, timeout: float = 300, start_method: str = "spawn", preload: tuple[str, ...] = ()):
    """``fn(*args)`` on ranks 0..world-1 (1 torch thread each unless ``fn`` sets more); returns the
    results in rank order, raises a rank's error with its traceback.

    ``fn`` must be importable (defined at module level). ``start_method="forkserver"`` with ``preload``
    modules forks every process from one that imported them once (the benchmark's fresh workers)."""
    ctx = mp.get_context(start_method)
    if preload:
        ctx.set_forkserver_preload(list(preload))
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(world):
            rank, value, error = queue.get(timeout=timeout)
            if error:
                raise RuntimeError(f"rank {rank} failed:\n{error}")
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=30 if len(results) == world else 0)  # on an error or a signal: stop them now
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]
