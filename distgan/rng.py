"""Random draws as functions of (seed, stream, counter) alone: the same on every rank and world size.

Every random number a run draws — the data order, z, fake labels, penalty weights, sample and evaluation
latents — comes from :func:`counter_generator` with one of the stream ids in :class:`Stream`, never from
torch's global generator. A draw that covers a batch is made for the GLOBAL batch and sliced: rank ``r``
of ``W`` takes the contiguous rows ``[r * B / W, (r + 1) * B / W)``, so 1 worker x B and W workers x B/W
see the same numbers, and a resumed run needs no generator state beyond its step.
"""

from __future__ import annotations

from enum import IntEnum, unique

import torch


@unique
class Stream(IntEnum):
    """The one table of stream ids. The counter each stream is indexed by is named beside it."""

    DATA = 0  # per-epoch permutation of the training set (counter: epoch)
    Z_D = 1  # latents of the fakes in a D step (counter: D steps so far)
    Z_G = 2  # latents of a G step (counter: G step)
    FIXED_Z = 3  # the fixed latents of sample grids (counter: 0)
    ALPHA = 4  # WGAN-GP interpolation weights (counter: D step)
    Y_D = 5  # fake labels in a D step (counter: D step)
    Y_G = 6  # fake labels in a G step (counter: G step)
    EVAL_Z = 7  # latents of evaluation and of launch/sample.py (counter: the sample index i)


def counter_generator(seed: int, stream: int, counter: int) -> torch.Generator:
    """A CPU generator determined by (seed, stream, counter) alone."""
    return torch.Generator().manual_seed((seed * 1_000_003 + int(stream)) * 1_000_000_007 + counter)


def local_rows(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (the batch size divides by ``world``)."""
    local = x.shape[0] // world
    return x[rank * local:(rank + 1) * local]


def local_noise(seed: int, stream: int, counter: int, global_batch: int, dim: int,
                rank: int, world: int, device: torch.device, uniform: bool = False) -> torch.Tensor:
    """This rank's slice of a global batch of N(0, 1) (or U[0, 1)) rows for one phase of one step."""
    draw = torch.rand if uniform else torch.randn
    z = draw(global_batch, dim, generator=counter_generator(seed, stream, counter))
    return local_rows(z, rank, world).to(device, non_blocking=True)


def local_labels(seed: int, stream: int, counter: int, global_batch: int, num_classes: int,
                 rank: int, world: int, device: torch.device) -> torch.Tensor:
    """This rank's slice of a global batch of uniform class labels for fakes (drawn like z)."""
    y = torch.randint(num_classes, (global_batch,), generator=counter_generator(seed, stream, counter))
    return local_rows(y, rank, world).to(device, non_blocking=True)


def eval_latents(samples, latent_dim: int, seed: int, num_classes: int = 0):
    """Evaluation latents (and balanced labels ``i mod C`` for a conditional G) of the samples ``samples``
    (a count n, meaning 0..n-1, or a tensor of global indices). Sample i's latent comes from its own
    generator (seed, ``Stream.EVAL_Z``, i), so it is the same whatever N, the world size, or which rank
    draws it, and a rank draws only its own share. (One draw of all N rows would not do: torch's CPU
    ``randn`` fills its last 16 values differently when n * latent_dim is not a multiple of 16.)"""
    idx = torch.arange(samples) if isinstance(samples, int) else torch.as_tensor(samples).long().flatten()
    rows = [torch.randn(latent_dim, generator=counter_generator(seed, Stream.EVAL_Z, int(i))) for i in idx]
    z = torch.stack(rows) if rows else torch.zeros(0, latent_dim)
    labels = idx % num_classes if num_classes else None
    return z, labels
