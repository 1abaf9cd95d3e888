"""Streamed image datasets over an index: the shared logic, and a folder of image files.

A dataset maps a sample index to ``(uint8 (C, H, W), label or -1)``, decoding the file only then (in a
DataLoader worker; nothing is cached, so memory does not grow with the dataset). With ``xflip`` the
dataset doubles, StyleGAN2-ADA's ``--mirror``: sample ``i >= N`` is image ``i - N`` flipped left-right,
a function of the index alone, so every world size sees the same samples.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from distgan.data.images import (
    BadImageError,
    channels_for_modes,
    check_resolution,
    is_power_of_two_resolution,
    load_image,
)
from distgan.data.index import Index, open_index
from distgan.errors import UserError

log = logging.getLogger("distgan")


def _describe_sizes(sizes: dict[tuple[int, int], int]) -> str:
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{w}x{h} ({c})" for (w, h), c in top) + (", ..." if len(sizes) > 3 else "")


def own_index(source: Path, kind: str, index: Index | None, workers: int | None, progress: bool) -> Index:
    """``source``'s index (the one given, else the cached or newly built one), checked to be a ``kind``;
    an index made elsewhere (a staged copy's) is rebased so that messages name this copy."""
    index = index or open_index(source, workers, progress)
    if index.kind != kind:
        raise UserError(f"{source} is indexed as a {index.kind}, not a {kind}")
    if index.source != str(source):
        index = dataclasses.replace(index, source=str(source))
    return index


class ImageDataset:
    """The Dataset protocol (``shape``, ``num_classes``, ``__len__``, ``item``) over an :class:`Index`.

    ``resolution=None`` takes the images' own size when they all share one square power-of-two size;
    ``channels=None`` is 1 when every image is grayscale, else 3. ``skip_bad`` leaves out (with a
    warning) the files whose header could not be read when indexing; otherwise they are an error.
    ``one_size`` (zips) requires every image to have the same size, as StyleGAN's zips do.
    """

    kind = "images"

    def __init__(self, index: Index, resolution: int | None = None, channels: int | None = None,
                 xflip: bool = False, skip_bad: bool = False, one_size: bool = False):
        where = index.source
        if index.unreadable:
            name, reason = index.unreadable[0]
            msg = (f"{len(index.unreadable)} file(s) in {where} cannot be read, e.g. {name} ({reason})")
            if not skip_bad:
                raise UserError(f"{msg}; remove them, re-pack with launch/prepare_dataset.py (which skips "
                                "them), or set dataset.skip_bad=true to leave them out")
            log.warning("%s: left out", msg)
        if len(index) == 0:
            raise UserError(f"no images found in {where} (looked for PNG, JPEG, BMP, TIFF, WebP, PPM/PGM "
                            "files); point dataset.root at a folder or zip of images")
        sizes = index.sizes()
        if one_size and len(sizes) > 1:
            raise UserError(f"{where} holds images of {len(sizes)} sizes ({_describe_sizes(sizes)}); a zip must "
                            "be of one resolution: re-pack it with launch/prepare_dataset.py resolution=R")
        if resolution is None:
            w, h = next(iter(sizes)) if len(sizes) == 1 else (0, 0)
            if w != h or not is_power_of_two_resolution(w):
                raise UserError(f"the images in {where} are {_describe_sizes(sizes)}: set dataset.resolution to "
                                "a power of two from 16 to 1024 (they are centre-cropped and resized to it)")
            resolution = w
        if channels is None:
            channels = channels_for_modes(index.modes_used())
        if channels not in (1, 3):
            raise UserError(f"channels={channels}: streamed image datasets have 1 or 3 channels")
        self.index, self.resolution, self.channels = index, check_resolution(resolution), channels
        self.xflip = bool(xflip)
        self.num_images = len(index)  # N; len(self) is 2N with xflip

    # ---- the Dataset protocol
    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    @property
    def num_classes(self) -> int:
        return len(self.index.classes) if self.index.label is not None else 0

    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def item(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample ``i``: image ``i mod N``, flipped when ``i >= N``; raises BadImageError naming the file."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of a dataset of {len(self)}")
        j = i % self.num_images
        x = load_image(self.file(j), self.name(j), self.channels, self.resolution)
        if i >= self.num_images:
            x = x.flip(-1)
        return x, int(self.index.label[j]) if self.index.label is not None else -1

    __getitem__ = item

    def name(self, j: int) -> str:
        """Where image ``j`` (< N) comes from, for messages: the file, or zip:member."""
        return self.locate(self.index.name(j))

    def locate(self, rel: str) -> str:
        """The full name of the index entry ``rel`` (a path relative to the folder, or a zip member)."""
        return rel

    def file(self, j: int) -> str | bytes:
        """Image ``j`` (< N) as :func:`load_image` takes it: a path, or the file's bytes."""
        raise NotImplementedError

    def __repr__(self) -> str:
        flip = ", xflip" if self.xflip else ""
        return (f"{type(self).__name__}({self.index.source}: {self.num_images} images at {self.shape}, "
                f"{self.num_classes} classes{flip})")


class FolderDataset(ImageDataset):
    """Images in ``root``: in class subfolders (labels, sorted names) or flat (unlabelled); a StyleGAN
    ``dataset.json`` in ``root`` gives the labels instead when present."""

    kind = "image_folder"

    def __init__(self, root: str | os.PathLike, resolution: int | None = None, channels: int | None = None,
                 xflip: bool = False, skip_bad: bool = False, workers: int | None = None, progress: bool = True,
                 index: Index | None = None):
        root = Path(os.path.expanduser(str(root))).resolve()
        if not root.is_dir():
            raise UserError(f"dataset.root={root} is not a folder; point it at a folder of images (flat, or "
                            "in class subfolders)")
        index = own_index(root, "folder", index, workers, progress)
        self.root = str(root)
        super().__init__(index, resolution, channels, xflip, skip_bad)

    def locate(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def file(self, j: int) -> str:
        return self.name(j)


__all__ = ["BadImageError", "FolderDataset", "ImageDataset"]
