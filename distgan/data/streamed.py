"""``dataset=image_folder`` and ``dataset=zip`` as the registry runs them (docs/data.md).

- :func:`locate`, once in the driver: the root resolved, the index built (or read from its cache) and
  every check of the dataset made, decoding no image; the resolution and channels the images give are
  pinned in the config, so the model checks and every worker see the same shape.
- :func:`load`, in every worker: a zip is first copied to ``dataset.stage_dir`` (once per node, verified),
  then the dataset is opened over the cached index. The driver never stages: it may be a login node.
"""

from __future__ import annotations

import os
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

from distgan.config import Config, DatasetConfig
from distgan.data.folder import FolderDataset, ImageDataset
from distgan.data.stream import default_loader_workers
from distgan.data.zipdata import ZipDataset
from distgan.errors import UserError


def requested_resolution(cfg: DatasetConfig) -> int | None:
    """``dataset.resolution``, else the deprecated ``dataset.image_size``."""
    return cfg.resolution if cfg.resolution is not None else cfg.image_size


def _root(cfg: DatasetConfig) -> Path:
    if not cfg.root:
        raise UserError(f"dataset={cfg.name} needs dataset.root")
    return Path(os.path.expanduser(cfg.root)).resolve()


def _open(cls: type[ImageDataset], cfg: DatasetConfig, root: Path, progress: bool) -> ImageDataset:
    return cls(root, resolution=requested_resolution(cfg), channels=cfg.channels, xflip=cfg.xflip,
               skip_bad=cfg.skip_bad, progress=progress)


_located: dict[tuple, ImageDataset] = {}  # the driver's last locate(), which its next load() takes (no 2nd read)


def _key(cls: type[ImageDataset], cfg: DatasetConfig, root: Path) -> tuple:
    return cls, str(root), cfg.resolution, cfg.channels, cfg.xflip, cfg.skip_bad


def locate(cls: type[ImageDataset], cfg: DatasetConfig) -> DatasetConfig:
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
    located = replace(cfg, root=str(root), resolution=ds.resolution, channels=ds.channels)
    _located.clear()
    _located[_key(cls, located, root)] = ds
    return located


def load(cls: type[ImageDataset], cfg: DatasetConfig, seed: int = 0) -> ImageDataset:
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


def loader_workers(cfg: Config) -> int:
    """DataLoader workers per DDP worker: ``dataset.loader_workers``, else from ``cluster.cpus_per_worker``."""
    n = cfg.dataset.loader_workers
    return default_loader_workers(cfg.cluster.cpus_per_worker) if n is None else n
