"""A StyleGAN2-ADA zip (dataset_tool output: images at one resolution + optional dataset.json labels).

Members are read by offset from the index (``os.pread`` on a file opened lazily in each process),
not through ``zipfile.ZipFile``: that parses the whole central directory into one ZipInfo object per
member in every process that opens it (measured: 13 MB and 0.4 s per 10^5 members, so 1.3 GB per process
at 10^7, in each DataLoader worker of each rank), and a ZipFile handle must not be shared across the
processes DataLoader forks or spawns.
Each member's CRC-32 is checked, so a damaged zip is reported, not decoded into a wrong image.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

from distgan.data.folder import ImageDataset, own_index
from distgan.data.images import BadImageError
from distgan.data.index import Index
from distgan.errors import UserError


class ZipReader:
    """The bytes of member ``j`` of an indexed zip; the file descriptor belongs to the process that opened it."""

    def __init__(self, path: str, index: Index):
        self.path, self.z = path, index.zip
        self._fd, self._pid = None, None

    def __getstate__(self):  # a pickled reader (spawned workers) reopens the file on its first read
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _handle(self) -> int:
        if self._pid != os.getpid():  # first read in this process (or a forked child): its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, j: int, name: str) -> bytes:
        size, method = int(self.z["csize"][j]), int(self.z["method"][j])
        try:
            raw = os.pread(self._handle(), size, int(self.z["offset"][j]))
            if len(raw) != size:
                raise BadImageError(name, f"zip member truncated ({len(raw)} of {size} bytes)")
            data = raw if method == zipfile.ZIP_STORED else zlib.decompress(raw, -15)
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
        path = Path(os.path.expanduser(str(path))).resolve()
        if not path.is_file():
            raise UserError(f"dataset.root={path} is not a file; point it at a zip made by "
                            "launch/prepare_dataset.py or StyleGAN's dataset_tool.py")
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is not a zip; make one with launch/prepare_dataset.py source=... dest=OUT.zip")
        index = own_index(path, "zip", index, workers, progress)
        self.path = str(path)
        self.reader = ZipReader(self.path, index)
        super().__init__(index, resolution, channels, xflip, skip_bad, one_size=one_size)

    def locate(self, rel: str) -> str:
        return f"{self.path}:{rel}"

    def file(self, j: int) -> bytes:
        return self.reader.read(j, self.name(j))
