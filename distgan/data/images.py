"""The one decoding policy of the streamed image datasets (folder, zip) and of ``prepare_dataset``.

An encoded image becomes a uint8 ``(C, H, W)`` tensor at the model's channels and resolution:

- channels: 3 -> ``convert("RGB")``, 1 -> ``convert("L")`` (ITU-R 601 luma). Alpha (RGBA, LA, palette
  transparency) is DROPPED, not composited: the colour under a transparent pixel is kept as stored,
  as StyleGAN3's dataset_tool does with ``convert('RGB')``. 16-bit grayscale keeps its top 8 bits.
- size: an image that is not ``resolution`` x ``resolution`` is centre-cropped to a square of its
  shorter side (offsets ``(w - s) // 2``, ``(h - s) // 2``, StyleGAN2-ADA dataset_tool's ``center_crop``),
  then resized with :data:`RESAMPLER` (PIL's Lanczos, that tool's filter). The index records the name.
- EXIF orientation is not applied (neither torchvision's ImageFolder nor StyleGAN's tools do).

Untrusted files (docs/data.md, "Untrusted data sets"): an image whose header declares more than
:data:`MAX_PIXELS` pixels is a bad image (a decompression bomb), whatever PIL's own limit says; a path
that is not a regular file (a FIFO, a device) is a bad image, never opened for reading; and
:func:`encoded_size_bound` is the most bytes an encoded image of a declared size may take, which bounds
how far a zip member is inflated.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from distgan.errors import UserError

RESAMPLER = "LANCZOS"  # PIL.Image.Resampling member used for every resize; recorded in each index
MIN_RESOLUTION, MAX_RESOLUTION = 16, 1024
# torchvision.datasets.folder.IMG_EXTENSIONS (not imported: torchvision costs ~1.4 CPU-s to import)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Untrusted files. MAX_PIXELS: the most pixels an image may declare (8192 x 8192; below PIL's own
# warning limit of ~89.5 M, so PIL's DecompressionBombWarning never fires before this check does).
# An encoded image of w x h pixels takes at most MAX_BYTES_PER_PIXEL bytes a pixel (16: four 32-bit
# samples, an uncompressed float TIFF; PNG/BMP/PPM need at most 8) plus ENCODED_SLACK of headers and
# metadata (ICC profiles, EXIF, text chunks): encoded_size_bound(w, h).
MAX_PIXELS = 1 << 26
MAX_BYTES_PER_PIXEL = 16
ENCODED_SLACK = 16 << 20


class ImageTooLarge(ValueError):
    """An image that declares more pixels than :data:`MAX_PIXELS`, or a zip member that inflates to more
    bytes than its declared image can need: a decompression bomb, read no further."""


def encoded_size_bound(width: int, height: int) -> int:
    """The most bytes an encoded image of ``width`` x ``height`` pixels may take (see MAX_BYTES_PER_PIXEL)."""
    return min(max(int(width), 1) * max(int(height), 1), MAX_PIXELS) * MAX_BYTES_PER_PIXEL + ENCODED_SLACK


def check_pixels(width: int, height: int) -> None:
    """Raise :class:`ImageTooLarge` when ``width`` x ``height`` is above :data:`MAX_PIXELS`."""
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(f"declares {width}x{height} pixels, more than distgan's limit of {MAX_PIXELS} "
                            "(distgan.data.images.MAX_PIXELS): a decompression bomb")


class BadImageError(UserError):
    """An image file that cannot be read or decoded; ``path`` names it."""

    def __init__(self, path: str, reason: str, hint: str = ""):
        super().__init__(f"cannot decode image {path}: {reason}" + (f"; {hint}" if hint else ""))
        self.path, self.reason, self.hint = path, reason, hint

    def __reduce__(self):  # picklable with its fields (DataLoader workers, process pools)
        return BadImageError, (self.path, self.reason, self.hint)


def describe_error(e: BaseException) -> str:
    """A short reason for a file that failed to open or decode (no object reprs)."""
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image format PIL can read"
    if isinstance(e, ImageTooLarge):
        return str(e)
    if isinstance(e, Image.DecompressionBombError):  # above twice PIL's limit: refused inside Image.open
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        return (f"declares {pixels.group(1) if pixels else 'more'} pixels, more than distgan's limit of "
                f"{MAX_PIXELS} (distgan.data.images.MAX_PIXELS): a decompression bomb")
    return f"{type(e).__name__}: {e}"


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def is_power_of_two_resolution(r: object) -> bool:
    return isinstance(r, int) and not isinstance(r, bool) and MIN_RESOLUTION <= r <= MAX_RESOLUTION \
        and r & (r - 1) == 0


def check_resolution(r: object, key: str = "dataset.resolution") -> int:
    """``r`` as an int, or a one-line UserError saying which values are allowed."""
    if not is_power_of_two_resolution(r):
        raise UserError(f"{key}={r} must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}: "
                        "one of 16, 32, 64, 128, 256, 512, 1024")
    return int(r)


def channels_for_modes(modes: list[str]) -> int:
    """1 when every image is grayscale, else 3: the channels a dataset gets when none are asked for."""
    return 1 if modes and all(m in GRAY_MODES for m in modes) else 3


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode.startswith("I;16"):  # 16-bit gray: keep the top byte (convert("L") would clip at 255)
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8), "L")
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def fit(img: Image.Image, resolution: int, resample: str = RESAMPLER) -> Image.Image:
    """Centre-crop to a square of the shorter side, then resize to ``resolution`` with ``resample`` (a
    PIL.Image.Resampling member: RESAMPLER; prepare_dataset resize_filter=box gives BOX)."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    s = min(w, h)
    if w != h:
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if s != resolution:
        img = img.resize((resolution, resolution), getattr(Image.Resampling, resample))
    return img


def load_image(source: str | os.PathLike | bytes, name: str, channels: int, resolution: int,
               resample: str = RESAMPLER) -> torch.Tensor:
    """Decode ``source`` (a path or the file's bytes) into a uint8 ``(channels, resolution, resolution)``
    tensor (resized with ``resample``, see :func:`fit`). Any failure raises :class:`BadImageError` naming
    ``name``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    try:
        with _open(source) as img:
            img.load()
            out = fit(_to_mode(img, channels), resolution, resample)
            a = np.array(out, dtype=np.uint8)  # a writable copy: torch.from_numpy shares it
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise BadImageError(name, describe_error(e)) from None
    t = torch.from_numpy(a)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)  # a CHW view: its one copy is into the batch


def _regular_file(path: str | os.PathLike) -> io.BufferedReader:
    """``path`` opened for reading, when it is a regular file (after links); a FIFO or a device, which a
    planted index or a link could name, is refused without blocking on it (O_NONBLOCK)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _open(source: str | os.PathLike | bytes | io.BytesIO) -> Iterator[Image.Image]:
    """PIL's image of ``source`` (a path, bytes or a byte stream), its header read and its size checked
    against :data:`MAX_PIXELS`; PIL's own decompression-bomb warning is not printed (this check is the
    stricter one). A file opened here is closed on exit."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        elif not isinstance(source, io.IOBase):
            source = stack.enter_context(_regular_file(source))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = stack.enter_context(Image.open(source))
        check_pixels(*img.size)
        yield img


def read_header(source: str | os.PathLike | io.BytesIO) -> tuple[int, int, str]:
    """(width, height, mode) from the image's header, without decoding its pixels; an image above
    :data:`MAX_PIXELS` raises :class:`ImageTooLarge`."""
    with _open(source) as img:
        return img.size[0], img.size[1], img.mode
