"""The batch loader of folders and zips: this rank's batch of counter c, decoded ahead of time by DataLoader
workers.

The training loop asks for the batch of counter c, c+1, ... in order. A DataLoader whose sampler
yields ``ShardedSampler.indices(c)`` for c = first, first+1, ... decodes those exact samples in worker
processes, ``prefetch_factor`` batches per worker ahead (pinned memory on CUDA, non-blocking copies),
so a batch stays a function of (seed, global sample index): any world size, any number of loader
workers, and a resume (a new loader with ``first`` = the resumed counter) see the same images.

A worker assembles the whole batch into one uint8 tensor (no per-sample collate). A file that fails
to decode raises :class:`BadImageError` naming it in the training process, or with ``skip_bad`` is
replaced by the next decodable sample after it (a function of the index, so still world-size
invariant) and counted in ``skipped``: never a hang, never a silent zero image.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from distgan.data.images import BadImageError
from distgan.errors import first_line

if TYPE_CHECKING:
    from distgan.config import Config

log = logging.getLogger("distgan")
MAX_REPLACEMENT_TRIES = 64  # samples after a bad one tried as its replacement
SKIP_HINT = "set dataset.skip_bad=true to replace undecodable images (counted in TensorBoard)"


class BatchOrderError(RuntimeError):
    """A batch asked for out of order: the loader only goes forward, one counter at a time."""


def default_loader_workers(cpus_per_worker: int) -> int:
    """DataLoader workers per training process: one CPU stays with the training loop, at most 8."""
    return max(0, min(8, cpus_per_worker - 1))


def loader_workers(cfg: Config) -> int:
    """DataLoader workers per DDP worker: ``dataset.loader_workers``, else from ``cluster.cpus_per_worker``."""
    n = cfg.dataset.loader_workers
    return default_loader_workers(cfg.cluster.cpus_per_worker) if n is None else n


class _Counters:
    """The DataLoader's sampler: this rank's indices of global batch c, for c = first, first+1, ... forever.
    Lists, not tensor views: a view would send the whole epoch permutation to shared memory."""

    def __init__(self, sampler, first: int):
        self.sampler, self.first = sampler, first

    def __iter__(self):
        for c in itertools.count(self.first):
            yield self.sampler.indices(c).tolist()


class _Batches(torch.utils.data.Dataset):
    """Runs in the loader workers: item = a list of sample indices -> (uint8 (N, C, H, W), int64 labels, bad),
    ``bad`` = [(sample, replacement or -1, file, reason)]; with skip_bad=False the first failure ends the batch."""

    def __init__(self, dataset, skip_bad: bool):
        self.dataset, self.skip_bad = dataset, skip_bad

    def __getitem__(self, indices: list[int]):
        n = len(indices)
        x = torch.empty((n, *self.dataset.shape), dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:  # decode straight into shared memory, as
            x = x.new(x.untyped_storage()._new_shared(x.numel())).view(x.shape)  # default_collate does
        y = torch.empty(n, dtype=torch.int64)
        bad = []
        for k, i in enumerate(indices):
            try:
                x[k], y[k] = self.dataset.item(i)
            except BadImageError as e:
                j = self._replace(i, x, y, k) if self.skip_bad else -1
                bad.append((i, j, e.path, e.reason))
                if j < 0:
                    return x[:0], y[:0], bad
        return x, y, bad

    def _replace(self, i: int, x, y, k: int) -> int:
        size = len(self.dataset)
        for step in range(1, min(size, MAX_REPLACEMENT_TRIES + 1)):
            j = (i + step) % size
            try:
                x[k], y[k] = self.dataset.item(j)
                return j
            except BadImageError:
                continue
        return -1


class BatchLoader:
    """``loader(counter) -> (x float32 in [-1, 1] (N, C, H, W) on device, labels int64 on device or None)``.

    ``sampler`` has ``.indices(counter)`` (:class:`ShardedSampler`); counters must come in order from
    ``first``. ``num_workers=0`` decodes in this process (no prefetch). ``wait_ms`` is how long the last
    call waited for its batch; :meth:`take_wait_ms` the mean since the previous take (``perf/data_wait_ms``).
    ``skipped`` counts this rank's replaced samples (``skip_bad=True``). :meth:`close` stops the workers.
    ``where()``, if given, is appended to the message of a file that fails to decode (e.g. the last
    good checkpoint, from which a resume after fixing the file starts).
    """

    def __init__(self, dataset, sampler, device: torch.device | str, first: int = 0, num_workers: int = 0,
                 prefetch_factor: int = 2, skip_bad: bool = False, timeout: float = 600.0,
                 multiprocessing_context=None, where=None):
        self.device = torch.device(device)
        self.dataset, self.skip_bad, self.where = dataset, skip_bad, where
        self.labelled = dataset.num_classes > 0
        self.skipped, self.bad_files = 0, set()
        self.wait_ms, self._wait_sum, self._wait_n = 0.0, 0.0, 0
        self._next = first
        loader = DataLoader(_Batches(dataset, skip_bad), batch_size=None, sampler=_Counters(sampler, first),
                            num_workers=num_workers, pin_memory=self.device.type == "cuda",
                            prefetch_factor=prefetch_factor if num_workers else None,
                            persistent_workers=num_workers > 0, timeout=timeout if num_workers else 0,
                            multiprocessing_context=multiprocessing_context if num_workers else None)
        self._it = iter(loader)  # starts the workers, which start decoding batch ``first`` at once

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in getattr(self._it, "_workers", [])]

    def __call__(self, counter: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._it is None:
            raise BatchOrderError("this BatchLoader is closed")
        if counter != self._next:
            raise BatchOrderError(f"batches are streamed in order: expected counter {self._next}, got {counter}; "
                                   f"make a new BatchLoader(first={counter}) to start elsewhere (e.g. on resume)")
        t0 = time.perf_counter()
        try:
            x, y, bad = next(self._it)
        except RuntimeError as e:  # a worker killed (out of memory?) or the timeout
            raise RuntimeError(f"the data loader failed on batch {counter}: {first_line(e)}") from e
        self.wait_ms = (time.perf_counter() - t0) * 1e3
        self._wait_sum, self._wait_n = self._wait_sum + self.wait_ms, self._wait_n + 1
        self._next += 1
        for i, j, path, reason in bad:
            if j < 0:
                hint = (f"no decodable replacement among the {MAX_REPLACEMENT_TRIES} samples after sample {i}"
                        if self.skip_bad else SKIP_HINT) + (f"; {self.where()}" if self.where else "")
                raise BadImageError(path, f"{reason} (sample {i}, batch {counter})", hint)
            if path not in self.bad_files:
                self.bad_files.add(path)
                log.warning("skipped undecodable image %s (sample %d, replaced by sample %d): %s", path, i, j, reason)
        self.skipped += len(bad)
        x = x.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        return x, (y.to(self.device, non_blocking=True) if self.labelled else None)

    def take_wait_ms(self) -> float:
        """Mean wait per call since the last take (0 when none), for ``perf/data_wait_ms`` at a log tick."""
        mean = self._wait_sum / self._wait_n if self._wait_n else 0.0
        self._wait_sum, self._wait_n = 0.0, 0
        return mean

    def close(self) -> None:
        """Stop and join the loader workers (idempotent)."""
        it, self._it = getattr(self, "_it", None), None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


def read_chunks(dataset, chunks: Iterable[torch.Tensor], num_workers: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Each chunk of sample indices of a folder or zip decoded (in ``num_workers`` DataLoader workers) into
    (float (n, C, H, W) in [-1, 1] on the CPU, int64 labels or None); a bad file raises
    :class:`BadImageError` naming it (``skip_bad`` does not apply)."""
    loader = DataLoader(_Batches(dataset, skip_bad=False), batch_size=None, sampler=[c.tolist() for c in chunks],
                        num_workers=num_workers)
    for x, y, bad in loader:
        if bad:
            _, _, path, reason = bad[0]
            raise BadImageError(path, reason)
        yield x.float().div_(127.5).sub_(1.0), y if dataset.num_classes else None
