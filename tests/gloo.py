"""Run a function in N plain gloo processes (no Ray): the fast path for DDP-correctness tests."""

from __future__ import annotations

import io
import os
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
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # torch.save to bytes: tensors sent through the queue as shared memory would vanish when
        # this process exits before the parent reads them
        buf = io.BytesIO()
        torch.save(fn(*args), buf)
        queue.put((rank, buf.getvalue(), None))
    except BaseException:  # noqa: BLE001 - reported to the parent test
        queue.put((rank, None, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


def run(fn, world: int, *args, timeout: float = 300):
    """``fn(*args)`` on ranks 0..world-1; returns the results in rank order, raises a rank's error.

    ``fn`` must be importable (defined at module level in a test module)."""
    ctx = mp.get_context("spawn")
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
                raise AssertionError(f"rank {rank} failed:\n{error}")
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]
