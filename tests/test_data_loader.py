"""Streamed image datasets, serving side (distgan/data/{loader,stage}.py): BatchLoader's order, workers and
bad files, 1 vs 2 gloo workers seeing the same global batches, and per-node staging of a zip."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan.data import ShardedSampler
from distgan.data import stage as stage_mod
from distgan.data.image_files import FolderDataset, ZipDataset
from distgan.data.images import BadImageError
from distgan.data.index_cache import index_paths
from distgan.data.loader import BatchLoader, BatchOrderError
from distgan.testing import gloo
from distgan.testing.images import TREE_IMAGES, make_tree, truncated_png
from distgan.testing.images import alive as _alive

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = TREE_IMAGES  # + the grayscale and the RGBA one
torch.set_num_threads(1)


# ---------------------------------------------------------------------- world-size invariance
def _global_batches(zip_path: str, counters: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    ds = ZipDataset(zip_path, xflip=True, progress=False)
    sampler = ShardedSampler(len(ds), batch, rank, world, seed=11)
    with BatchLoader(ds, sampler, "cpu", num_workers=rank % 2) as stream:  # 0 and 1 loader workers
        out = [stream(c) for c in range(counters)]
    flipped = sum(int((sampler.indices(c) >= ds.num_images).sum()) for c in range(counters))
    return out, flipped


def test_one_and_two_gloo_workers_see_the_same_global_batches_with_xflip(prepared):
    (one, flips_one), = gloo.run(_global_batches, 1, str(prepared), 4, 16)
    two = gloo.run(_global_batches, 2, str(prepared), 4, 16)
    assert flips_one > 0, "no flipped sample in the batches: the test would not see xflip"
    assert flips_one == two[0][1] + two[1][1]
    for c in range(4):
        x = torch.cat([two[0][0][c][0], two[1][0][c][0]])
        y = torch.cat([two[0][0][c][1], two[1][0][c][1]])
        assert torch.equal(x, one[c][0]) and torch.equal(y, one[c][1])


@pytest.fixture
def bad_tree(tmp_path) -> Path:
    root = make_tree(tmp_path / "bad", n=30, seed=4)
    truncated_png(root / "dog" / "cut.png", np.random.default_rng(6))
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_a_decode_failure_while_streaming_names_the_file(bad_tree, workers):
    ds = FolderDataset(bad_tree, resolution=32, progress=False)
    with BatchLoader(ds, ShardedSampler(len(ds), len(ds), 0, 1, seed=0), "cpu", num_workers=workers) as s:
        with pytest.raises(BadImageError, match=r"dog/cut\.png.*batch 0.*dataset\.skip_bad=true"):
            s(0)


def test_skip_bad_substitutes_deterministically_and_counts(bad_tree):
    ds = FolderDataset(bad_tree, resolution=32, xflip=True, progress=False)
    bad = [i for i in range(ds.num_images) if ds.name(i).endswith("cut.png")]
    sampler = ShardedSampler(len(ds), len(ds), 0, 1, seed=0)
    batches = []
    for workers in (0, 1):
        with BatchLoader(ds, sampler, "cpu", num_workers=workers, skip_bad=True) as s:
            x, _ = s(0)
            assert s.skipped == 2 and len(s.bad_files) == 1  # the image and its flip
            batches.append(x)
    assert torch.equal(batches[0], batches[1])
    order = sampler.indices(0).tolist()
    for i in (bad[0], bad[0] + ds.num_images):
        row = batches[0][order.index(i)]
        assert torch.equal(row, ds.item(i + 1)[0].float().div(127.5).sub(1.0))  # the next sample
        assert row.abs().sum() > 0


def test_out_of_order_counters_raise_and_close_stops_the_workers(tree):
    ds = FolderDataset(tree, resolution=32, progress=False)
    s = BatchLoader(ds, ShardedSampler(len(ds), 8, 0, 1, seed=0), "cpu", first=5, num_workers=2)
    with pytest.raises(BatchOrderError, match="expected counter 5, got 4"):
        s(4)
    s(5)
    with pytest.raises(BatchOrderError, match="expected counter 6, got 7"):
        s(7)
    x6, y6 = s(6)  # exactly the sampler's samples of counter 6, whatever ``first`` was
    want = [ds.item(i) for i in ShardedSampler(len(ds), 8, 0, 1, seed=0).indices(6).tolist()]
    assert torch.equal(x6, torch.stack([w[0] for w in want]).float().div(127.5).sub(1.0))
    assert y6.tolist() == [w[1] for w in want]
    assert s.wait_ms >= 0 and s.take_wait_ms() > 0 and s.take_wait_ms() == 0
    pids = s.worker_pids
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    s.close()
    assert not any(_alive(p) for p in pids)
    with pytest.raises(BatchOrderError, match="closed"):
        s(7)


EXIT_WITHOUT_CLOSE = """
import sys
from distgan.data import ShardedSampler
from distgan.data.image_files import FolderDataset
from distgan.data.loader import BatchLoader
ds = FolderDataset(sys.argv[1], resolution=32, progress=False)
s = BatchLoader(ds, ShardedSampler(len(ds), 8, 0, 1, seed=0), "cpu", num_workers=2)
s(0)
print(" ".join(map(str, s.worker_pids)))
"""


def test_a_process_that_exits_without_close_neither_hangs_nor_orphans_workers(tree):
    proc = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(tree)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


# ------------------------------------------------------------------------------------ staging
def _stage_and_log(zip_path, stage_dir, log_path, barrier):
    real = stage_mod._copy

    def counted(*a, **k):
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.2)  # hold the lock long enough for the other caller to arrive
        return real(*a, **k)

    stage_mod._copy = counted
    barrier.wait()
    print(stage_mod.stage(zip_path, stage_dir), flush=True)


def test_staging_copies_once_with_two_concurrent_callers(prepared, tmp_path):
    ZipDataset(prepared, progress=False)  # the source's index, cached beside it, travels with the copy
    ctx = mp.get_context("fork")
    barrier, log_path = ctx.Barrier(2), tmp_path / "copies"
    procs = [ctx.Process(target=_stage_and_log, args=(str(prepared), str(tmp_path / "scratch"), str(log_path),
                                                      barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log_path.read_text().split()) == 1, "the zip was copied more than once"
    dest = stage_mod.stage(prepared, tmp_path / "scratch")  # a third caller: reuses it without copying
    assert len(log_path.read_text().split()) == 1 and dest.read_bytes() == prepared.read_bytes()
    record = json.loads(dest.with_name(dest.name + ".sha256").read_text())
    assert record["sha256"] == hashlib.sha256(prepared.read_bytes()).hexdigest()
    assert not list(dest.parent.glob(".*.tmp"))
    assert index_paths(dest)[0].is_file()  # the index came along: no re-indexing on the node
    ZipDataset(dest, progress=False)
    dest.write_bytes(dest.read_bytes()[:100])  # a damaged copy is not reused
    assert stage_mod.stage(prepared, tmp_path / "scratch").read_bytes() == prepared.read_bytes()


