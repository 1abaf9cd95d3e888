"""Where scored images come from, as a stream of ``(global indices, images)`` batches for one rank.

Rank ``r`` of ``W`` takes the global indices r, r + W, r + 2W, … < N (:func:`shard`; no padding:
statistics are sums, so ranks may hold one sample more or less; rows gathered across ranks, as the 2D
protocol's and the classifier's features are, need equal shares: :func:`padded_shard`). Sources: a
function of the indices (a generator, whose sample i depends on (seed, i) alone, or a dataset read
through ``item(i)``), a ``.npy`` file of N×C×H×W floats in [-1, 1] as ``launch/sample.py`` writes (read
through a memory map, one batch at a time), and a folder of PNG/JPEG files (decoded by PIL in DataLoader
workers, in sorted file-name order).

Non-finite values never reach the statistics (a NaN there ends in a LinAlgError deep in the Fréchet
distance): a ``.npy`` holding NaN or Inf is one UserError naming the first bad sample, and a generator
whose images are not finite is one UserError saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from distgan.errors import UserError, first_line
from distgan.rng import eval_latents

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def shard(n: int, rank: int, world: int) -> torch.Tensor:
    """This rank's global indices: rank, rank + world, … < n (each index on exactly one rank): for
    statistics summed across ranks, where a padded index would count twice."""
    return torch.arange(rank, n, world)


def padded_shard(n: int, rank: int, world: int) -> torch.Tensor:
    """:func:`shard` padded by wrapping around (index ``j`` ≥ n is ``j mod n``) to ⌈n / world⌉ indices on
    every rank: for rows all-gathered across ranks, which need equal shapes (the padding is dropped after
    re-interleaving, :func:`distgan.metrics.evaluator.gather_interleave`)."""
    per_rank = math.ceil(n / world)
    return torch.arange(rank, per_rank * world, world) % n


def index_batches(fn: Callable[[torch.Tensor], torch.Tensor], n: int, batch_size: int, rank: int = 0,
                  world: int = 1) -> Batches:
    """``fn(indices) -> images`` over this rank's share of 0..n-1, ``batch_size`` at a time."""
    for idx in shard(n, rank, world).split(batch_size):
        yield idx, fn(idx)


def spread(length: int, n: int | None) -> torch.Tensor:
    """Which ``n`` of ``length`` dataset items form a reference: all of them when ``n`` is None, else
    evenly spread ones (⌊j·length/n⌋), so a class-sorted image folder still gives a balanced set."""
    if n is None or n >= length:
        return torch.arange(length)
    return torch.arange(n) * length // n


def generator_fn(G: torch.nn.Module, latent_dim: int, seed: int, num_classes: int = 0,
                 device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(indices) -> G's images`` for :func:`index_batches`: sample i from (seed, i) alone
    (:func:`distgan.rng.eval_latents`, as launch/sample.py draws it), class i mod C for a conditional G."""
    @torch.no_grad()
    def fn(idx: torch.Tensor) -> torch.Tensor:
        z, labels = eval_latents(idx, latent_dim, seed, num_classes)
        z = z.to(device)
        x = G(z) if labels is None else G(z, labels.to(device))
        check_finite(x, idx, "the generator produced non-finite images (NaN or Inf)",
                     f"seed={seed}; its weights are damaged or its training diverged: score an earlier checkpoint")
        return x

    return fn


def check_finite(x: torch.Tensor, idx: torch.Tensor, what: str, hint: str) -> None:
    """A UserError ``<what> at sample i (<hint>)`` when a float batch ``x`` of samples ``idx`` holds NaN or Inf."""
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x.flatten(1) if x.dim() > 1 else x.unsqueeze(1)).all(dim=1)
    if bool(bad.any()):
        first = int(idx[bad.nonzero()[0, 0].item()])
        raise UserError(f"{what} at sample {first} ({int(bad.sum())} of this batch of {len(x)}); {hint}")


def npy_batches(path: str | Path, batch_size: int, rank: int = 0, world: int = 1) -> tuple[int, Batches]:
    """(N, batches) of a ``.npy`` file: N×C×H×W float in [-1, 1] (or uint8), C of 1 or 3."""
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"samples={path} is not a readable .npy file: {first_line(e)}") from None
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or not (arr.dtype == np.uint8 or arr.dtype.kind == "f"):
        raise UserError(f"samples={path} holds {arr.dtype} {arr.shape}; expected N x C x H x W (C = 1 or 3) "
                        "floats in [-1, 1] as launch/sample.py writes, or uint8")

    def read(idx: torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(arr[idx.numpy()]))
        check_finite(x, idx, f"samples={path} holds non-finite values (NaN or Inf)",
                     "expected N x C x H x W floats in [-1, 1]; regenerate them or drop those samples")
        if x.is_floating_point() and (x.min() < -1.01 or x.max() > 1.01):
            raise UserError(f"samples={path} has values in [{x.min():.3g}, {x.max():.3g}]; expected [-1, 1]")
        return x

    return len(arr), index_batches(read, len(arr), batch_size, rank, world)


class ImageFiles(Dataset):
    """The PNG/JPEG files under ``root`` (recursively, sorted): item i = (i, uint8 C×H×W), grayscale kept
    as one channel (repeated to RGB by the extractor, as PIL's ``convert("RGB")`` would)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise UserError(f"samples={root} holds no {'/'.join(IMAGE_SUFFIXES)} files")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        import warnings

        import numpy as np
        from PIL import Image

        from distgan.data.images import check_pixels, describe_error

        try:
            with warnings.catch_warnings():  # distgan's own limit (check_pixels) is the stricter one
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(self.files[i])
            with im:
                check_pixels(*im.size)
                im = im.convert("L" if im.mode in ("L", "I;16", "I", "1") else "RGB")
                x = torch.from_numpy(np.array(im))
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
            raise UserError(f"samples={self.root}: cannot decode {self.files[i]}: {describe_error(e)}") from None
        return i, (x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)).contiguous()


def _collate(items: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    shapes = {tuple(x.shape) for _, x in items}
    if len(shapes) > 1:
        raise UserError(f"the sample images differ in size or channels ({sorted(shapes)}); "
                        "score one size at a time")
    return torch.tensor([i for i, _ in items]), torch.stack([x for _, x in items])


def folder_batches(path: str | Path, batch_size: int, rank: int = 0, world: int = 1,
                   workers: int = 0) -> tuple[int, Batches]:
    """(N, batches) of a folder of PNG/JPEG images."""
    files = ImageFiles(path)
    mine = Subset(files, shard(len(files), rank, world).tolist())
    loader = DataLoader(mine, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    return len(files), iter(loader)


def sample_batches(path: str | Path, batch_size: int, rank: int = 0, world: int = 1,
                   workers: int = 0) -> tuple[int, Batches]:
    """``samples=FILE.npy|DIR`` as (N, batches)."""
    p = Path(path)
    if p.is_dir():
        return folder_batches(p, batch_size, rank, world, workers)
    if p.suffix == ".npy" and p.is_file():
        return npy_batches(p, batch_size, rank, world)
    raise UserError(f"samples={path}: give a .npy file (N x C x H x W in [-1, 1]) or a folder of PNG/JPEG images")
