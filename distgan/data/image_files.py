"""Folders and zips of image files: the datasets ``dataset=image_folder`` and ``dataset=zip`` (docs/data.md).

Both read an :class:`~distgan.data.index.Index` and share :class:`ImageDataset`; they differ only in how
the bytes of image ``j`` are found (a file in the folder, or a member of the zip).

A dataset maps a sample index to ``(uint8 (C, H, W), label or -1)``, decoding the file only then (in a
DataLoader worker; nothing is cached, so memory does not grow with the dataset). With ``xflip`` the
dataset doubles, StyleGAN2-ADA's ``--mirror``: sample ``i >= N`` is image ``i - N`` flipped left-right,
a function of the index alone, so every world size sees the same samples.

A zip (StyleGAN2-ADA's dataset_tool output: images at one resolution + optional dataset.json labels) is
read member by member by offset from the index (``os.pread`` on a file opened lazily in each process),
not through ``zipfile.ZipFile``: that parses the whole central directory into one ZipInfo object per
member in every process that opens it (measured: 13 MB and 0.4 s per 10^5 members, so 1.3 GB per process
at 10^7, in each DataLoader worker of each rank), and a ZipFile handle must not be shared across the
processes DataLoader forks or spawns. Each member's CRC-32 is checked, so a damaged zip is reported, not
decoded into a wrong image, and a member is inflated no further than its declared image can need
(:func:`distgan.data.images.encoded_size_bound`), so a deflate bomb is a bad image, not all the memory.

The registry runs them through :func:`locate_images` and :func:`load_images`:

- :func:`locate_images`, once in the driver: the root resolved, the index built (or read from its cache)
  and every check of the dataset made, decoding no image; the resolution and channels the images give
  are pinned in the config, so the model checks and every worker see the same shape.
- :func:`load_images`, in every worker: a zip is first copied to ``dataset.stage_dir`` (once per node,
  verified), then the dataset is opened over the cached index. The driver never stages: it may be a
  login node.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import zipfile
import zlib
from pathlib import Path

import torch

from distgan.config import DatasetConfig
from distgan.data.images import (
    BadImageError,
    ImageTooLarge,
    channels_for_modes,
    check_resolution,
    encoded_size_bound,
    is_power_of_two_resolution,
    load_image,
)
from distgan.data.index import Index, inflate_member
from distgan.data.index_cache import open_index
from distgan.errors import UserError

log = logging.getLogger("distgan")


def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


def _describe_sizes(sizes: dict[tuple[int, int], int]) -> str:
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{w}x{h} ({c})" for (w, h), c in top) + (", ..." if len(sizes) > 3 else "")


def _own_index(source: Path, kind: str, index: Index | None, workers: int | None, progress: bool) -> Index:
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
        if index.skipped and len(index):  # bad links: never an error while images remain
            name, reason = index.skipped[0]
            log.warning("skipped %d entr%s of %s that cannot be listed, e.g. %s (%s)", len(index.skipped),
                        "y" if len(index.skipped) == 1 else "ies", where, name, reason)
        if index.unreadable:
            name, reason = index.unreadable[0]
            msg = (f"{len(index.unreadable)} file(s) in {where} cannot be read, e.g. {name} ({reason})")
            if not skip_bad:
                raise UserError(f"{msg}; remove them, re-pack with launch/prepare_dataset.py (which skips "
                                "them), or set dataset.skip_bad=true to leave them out")
            log.warning("%s: left out", msg)
        if len(index) == 0:
            bad = "" if not index.skipped else (f"; {len(index.skipped)} entr"
                                                f"{'y' if len(index.skipped) == 1 else 'ies'} skipped, e.g. "
                                                f"{index.skipped[0][0]} ({index.skipped[0][1]})")
            raise UserError(f"no images found in {where} (looked for PNG, JPEG, BMP, TIFF, WebP, PPM/PGM "
                            f"files{bad}); point dataset.root at a folder or zip of images")
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
        root = _resolve(root)
        if not root.is_dir():
            raise UserError(f"dataset.root={root} is not a folder; point it at a folder of images (flat, or "
                            "in class subfolders)")
        index = _own_index(root, "folder", index, workers, progress)
        self.root = str(root)
        super().__init__(index, resolution, channels, xflip, skip_bad)

    def locate(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def file(self, j: int) -> str:
        return self.name(j)


class ZipReader:
    """The bytes of member ``j`` of an indexed zip; the file descriptor belongs to the process that opened it."""

    def __init__(self, path: str, index: Index):
        self.path, self.z = path, index.zip
        self.width, self.height = index.width, index.height  # bound how far a member is inflated
        self._fd, self._pid = None, None

    def __getstate__(self):  # a pickled reader (spawned workers) reopens the file on its first read
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _handle(self) -> int:
        if self._pid != os.getpid():  # first read in this process (or a forked child): its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, j: int, name: str) -> bytes:
        size, method = int(self.z["csize"][j]), int(self.z["method"][j])
        limit = encoded_size_bound(int(self.width[j]), int(self.height[j]))
        try:
            data = inflate_member(self._handle(), int(self.z["offset"][j]), size, method, limit)
            if method == zipfile.ZIP_STORED and len(data) != size:
                raise BadImageError(name, f"zip member truncated ({len(data)} of {size} bytes)")
        except ImageTooLarge as e:
            raise BadImageError(name, str(e)) from None
        except OSError as e:
            raise BadImageError(name, f"cannot read the zip: {e}") from None
        except zlib.error as e:
            raise BadImageError(name, f"corrupt compressed data: {e}") from None
        if zlib.crc32(data) != int(self.z["crc"][j]):
            raise BadImageError(name, "CRC-32 mismatch: the zip is damaged")
        return data

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, None

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass


class ZipDataset(ImageDataset):
    """Images in a zip, all of one size; ``resolution`` other than the zip's resizes them on the fly.
    ``one_size=False`` accepts a zip of mixed sizes (``prepare`` reads any zip as a source)."""

    kind = "zip"

    def __init__(self, path: str | os.PathLike, resolution: int | None = None, channels: int | None = None,
                 xflip: bool = False, skip_bad: bool = False, workers: int | None = None, progress: bool = True,
                 index: Index | None = None, one_size: bool = True):
        path = _resolve(path)
        if not path.is_file():
            raise UserError(f"dataset.root={path} is not a file; point it at a zip made by "
                            "launch/prepare_dataset.py or StyleGAN's dataset_tool.py")
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is not a zip; make one with launch/prepare_dataset.py source=... dest=OUT.zip")
        index = _own_index(path, "zip", index, workers, progress)
        self.path = str(path)
        self.reader = ZipReader(self.path, index)
        super().__init__(index, resolution, channels, xflip, skip_bad, one_size=one_size)

    def locate(self, rel: str) -> str:
        return f"{self.path}:{rel}"

    def file(self, j: int) -> bytes:
        return self.reader.read(j, self.name(j))


# ------------------------------------------------------------------------------ the registry's glue
def _root(cfg: DatasetConfig) -> Path:
    if not cfg.root:
        raise UserError(f"dataset={cfg.name} needs dataset.root")
    return _resolve(cfg.root)


def _open(cls: type[ImageDataset], cfg: DatasetConfig, root: Path, progress: bool) -> ImageDataset:
    return cls(root, resolution=cfg.resolution, channels=cfg.channels, xflip=cfg.xflip,
               skip_bad=cfg.skip_bad, progress=progress)


# the driver's last locate_images(), which its next load_images() takes (no second read of the index)
_located: dict[tuple, ImageDataset] = {}


def _key(cls: type[ImageDataset], cfg: DatasetConfig, root: Path) -> tuple:
    return cls, str(root), cfg.resolution, cfg.channels, cfg.xflip, cfg.skip_bad


def locate_images(cls: type[ImageDataset], cfg: DatasetConfig) -> DatasetConfig:
    """The config with ``root`` absolute and ``resolution``/``channels`` those of the data, or a one-line
    UserError (missing root, no images, not a zip, mixed sizes, bad resolution, unreadable files)."""
    root = _root(cfg)
    if cls is FolderDataset and root.is_file():
        hint = "use dataset=zip" if zipfile.is_zipfile(root) else "point it at a folder of images"
        raise UserError(f"dataset.root={root} is a file, not a folder; {hint}")
    if cls is ZipDataset and root.is_dir():
        raise UserError(f"dataset.root={root} is a folder: use dataset=image_folder, or pack it into a zip with "
                        f"launch/prepare_dataset.py source={root} dest=OUT.zip resolution=R")
    ds = _open(cls, cfg, root, progress=sys.stderr.isatty())  # a progress bar on terminals only
    located = dataclasses.replace(cfg, root=str(root), resolution=ds.resolution, channels=ds.channels)
    _located.clear()
    _located[_key(cls, located, root)] = ds
    return located


def load_images(cls: type[ImageDataset], cfg: DatasetConfig, seed: int = 0) -> ImageDataset:
    """The dataset in a worker (``seed`` is unused: the sampler shuffles). Stages a zip first."""
    root = _root(cfg)
    located = _located.pop(_key(cls, cfg, root), None)  # not kept in any case: an index can be large
    _located.clear()
    if cfg.stage_dir:
        from distgan.data.stage import stage

        root = stage(root, cfg.stage_dir)
    elif located is not None:
        return located
    return _open(cls, cfg, root, progress=False)
