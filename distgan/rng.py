"""Random draws as functions of (seed, stream, counter) alone: the same on every rank and world size.

Every random number a run draws — the data order, z, fake labels, penalty weights, sample and evaluation
latents — comes from :func:`counter_generator` with one of the stream ids in :class:`Stream`, never from
torch's global generator. A draw that covers a batch is made for the GLOBAL batch and sliced: rank ``r``
of ``W`` takes the contiguous rows ``[r * B / W, (r + 1) * B / W)``, so 1 worker x B and W workers x B/W
see the same numbers, and a resumed run needs no generator state beyond its step.

Large per-sample draws (StyleGAN2's noise maps and style mixing, augmentation parameters, path-length
directions) are not drawn for the whole global batch on every rank: sample ``i`` gets its own generator
seeded by (seed, stream, counter, i) (:func:`sample_generator`), so a rank computes only its rows and the
numbers still do not depend on the world size or on the micro-batch a sample shares. The global index of
a rank's first sample is :func:`first_index`; micro-batches offset it. Such draws may be made on the
training device (a CUDA generator): the numbers then depend on the device type, not on the world size.
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
    EVAL_Z = 7  # latents of evaluation and of launch/sample.py (per sample: counter 0, index i)
    # per-sample streams (sample_generator; counter: D step for *_D and the D-phase augmentations, G step else)
    NOISE_D = 8  # StyleGAN2's per-pixel noise maps of the fakes in a D step
    MIX_D = 9  # style-mixing draws (mix or not, cutoff, second z) of those fakes
    NOISE_G = 10  # noise maps of a G step
    MIX_G = 11  # style mixing of a G step
    Z_PL = 12  # latents of the path-length phase (a global batch of batch_size / pl_batch_shrink; local_noise)
    Y_PL = 13  # fake labels of the path-length phase (local_labels)
    NOISE_PL = 14  # noise maps of the path-length phase
    MIX_PL = 15  # style mixing of the path-length phase
    PL_DIR = 16  # the path-length penalty's random image-space directions
    AUG_REAL = 17  # augmentation of the reals in D main (counter: D step)
    AUG_FAKE = 18  # augmentation of the fakes in D main (counter: D step)
    AUG_REAL_REG = 19  # augmentation of the reals in D reg, R1 (counter: D step)
    AUG_FAKE_REG = 20  # augmentation of the fakes in D reg, R2 (counter: D step)
    AUG_FAKE_G = 21  # augmentation of the fakes in G main (counter: G step)
    AUG_REAL_G = 22  # augmentation of the reals in G main, for losses that pair them (rpgan; counter: G step)
    AUG_GP = 23  # augmentation of WGAN-GP's interpolates (counter: D step)


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
                 rank: int, world: int, device: torch.device, weights: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's slice of a global batch of class labels for fakes (drawn like z): uniform, or with
    ``weights`` (the training set's class counts: NVIDIA's loop gives a fake the label of a random training
    image) drawn from that distribution."""
    g = counter_generator(seed, stream, counter)
    if weights is None:
        y = torch.randint(num_classes, (global_batch,), generator=g)
    else:
        y = torch.multinomial(weights.double().cpu(), global_batch, replacement=True, generator=g)
    return local_rows(y, rank, world).to(device, non_blocking=True)


def eval_latents(samples, latent_dim: int, seed: int, num_classes: int = 0):
    """Evaluation latents (and balanced labels ``i mod C`` for a conditional G) of the samples ``samples``
    (a count n, meaning 0..n-1, or a tensor of global indices). Sample i's latent comes from its own
    generator (:func:`sample_generator` of seed, ``Stream.EVAL_Z``, 0, i), so it is the same whatever N,
    the world size, or which rank draws it, and a rank draws only its own share. (One draw of all N rows
    would not do: torch's CPU ``randn`` fills its last 16 values differently when n * latent_dim is not a
    multiple of 16.)"""
    idx = torch.arange(samples) if isinstance(samples, int) else torch.as_tensor(samples).long().flatten()
    rows = [torch.randn(latent_dim, generator=sample_generator(seed, Stream.EVAL_Z, 0, int(i))) for i in idx]
    z = torch.stack(rows) if rows else torch.zeros(0, latent_dim)
    labels = idx % num_classes if num_classes else None
    return z, labels


# ------------------------------------------------------------------------ per-sample generators
_MASK = (1 << 64) - 1


def _mix(h: int) -> int:
    """splitmix64's finaliser: a cheap bijective scramble of a 64-bit integer."""
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK
    return h ^ (h >> 31)


def sample_seed(seed: int, stream: int, counter: int, index: int) -> int:
    """A 63-bit seed from the four integers (hash-chained, so nearby tuples give unrelated seeds)."""
    h = 0x9E3779B97F4A7C15
    for part in (seed, int(stream), counter, index):
        h = _mix((h + (part & _MASK) + 0x9E3779B97F4A7C15) & _MASK)
    return h >> 1  # torch.Generator.manual_seed takes values below 2**63 on every backend


def sample_generator(seed: int, stream: int, counter: int, index: int, device="cpu") -> torch.Generator:
    """The generator of global sample ``index`` in draw (seed, stream, counter)."""
    return torch.Generator(device=device).manual_seed(sample_seed(seed, stream, counter, index))


def first_index(global_batch: int, rank: int, world: int) -> int:
    """Global index of this rank's first sample (rank ``r`` owns rows ``[r B/W, (r+1) B/W)``)."""
    return rank * (global_batch // world)


def per_sample(kind: str, seed: int, stream: int, counter: int, first: int, n: int, shape: tuple[int, ...],
               device="cpu") -> torch.Tensor:
    """``(n, *shape)`` draws (``kind`` "normal" or "uniform") for global samples ``first .. first + n - 1``,
    made on ``device`` with one generator per sample."""
    if kind not in ("normal", "uniform"):
        raise ValueError(f"unknown draw kind {kind!r}")
    draw = torch.randn if kind == "normal" else torch.rand
    rows = [draw(shape, generator=sample_generator(seed, stream, counter, first + i, device), device=device)
            for i in range(n)]
    return torch.stack(rows) if rows else torch.empty((0, *shape), device=device)
