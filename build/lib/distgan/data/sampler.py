"""The world-size-invariant sharded sampler: which samples rank r of W trains on at counter c."""

from __future__ import annotations

import torch

from distgan.errors import UserError
from distgan.rng import Stream, counter_generator


class ShardedSampler:
    """Global batch ``b`` of a run, as index tensors; rank ``r`` of ``W`` takes the r-th contiguous slice.

    The global batch is a slice of a per-epoch permutation seeded by (seed, epoch), so the union of
    the ranks' shards is the same whatever the world size, and a batch is located by its counter
    alone (resume needs no sampler state beyond the step).
    """

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int):
        if global_batch > n:
            raise UserError(f"train.batch_size={global_batch} is larger than the dataset ({n} samples)")
        self.n, self.b, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.local = global_batch // world
        self.per_epoch = n // global_batch  # drop the last partial batch of an epoch
        self._epoch, self._perm = -1, None

    def indices(self, counter: int) -> torch.Tensor:
        epoch, k = divmod(counter, self.per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=counter_generator(self.seed, Stream.DATA, epoch))
            self._epoch = epoch
        start = k * self.b + self.rank * self.local
        return self._perm[start:start + self.local]
