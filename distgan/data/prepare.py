"""``prepare``: a folder or zip of images -> a StyleGAN2-ADA zip at one resolution (distgan's dataset_tool).

Every image goes through the decoding policy of the training datasets (distgan/data/images.py: the
model's channels, centre-crop, Lanczos resize), is stored as PNG (lossless: the zip trains on exactly
those pixels) under StyleGAN's names ``00000/img00000000.png`` in the source's sorted order, with
``dataset.json`` = ``{"labels": [[name, class], ...] or null, "classes": [subfolder names]}``
(StyleGAN's loaders read "labels" and ignore "classes"). Decoding runs in a process pool, with a
progress bar and its ETA. Files that cannot be read, or whose shorter side is below ``min_size``
("tiny"), are skipped and listed. The zip is written to a temp file beside ``dest`` and renamed into
place at the end (:func:`distgan.files.write_atomic`), so a killed run never leaves a half zip at ``dest``.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import multiprocessing as mp
import os
import signal
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from distgan.data.image_files import FolderDataset, ImageDataset, ZipDataset
from distgan.data.images import BadImageError, check_resolution, load_image
from distgan.data.index import LABELS_FILE, build_index, labels_bound, read_bounded
from distgan.errors import UserError
from distgan.files import TEMP_SUFFIX, temp_owner, write_atomic

_CHUNK = 32  # images per pool task
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same source gives the same zip


@dataclass
class PrepareSummary:
    dest: str
    images: int
    resolution: int
    channels: int
    num_classes: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    tiny: list[tuple[str, int, int]] = field(default_factory=list)  # (file, width, height)
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return len(self.unreadable) + len(self.tiny)

    def __str__(self) -> str:
        return (f"wrote {self.images} images ({self.channels}x{self.resolution}x{self.resolution}, "
                f"{self.num_classes} classes) to {self.dest} in {self.seconds:.1f} s; skipped "
                f"{len(self.unreadable)} unreadable and {len(self.tiny)} tiny files")


# ------------------------------------------------------------------------------ pool worker side
_worker: tuple[ImageDataset, int, str] | None = None
# resize_filter= -> PIL.Image.Resampling member (NVIDIA's dataset_tool --resize-filter; box for its FFHQ-256 FIDs)
RESIZE_FILTERS = {"lanczos": "LANCZOS", "box": "BOX"}


def recorded_filter(zip_path: str | os.PathLike) -> str | None:
    """The ``resize_filter`` a zip was prepared with (dataset.json's "resize_filter", distgan's addition), or
    None (another tool's zip, an unreadable one, or a folder)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            with zf.open(LABELS_FILE) as f:  # within a bound: dataset.json may be a deflate bomb
                return json.loads(read_bounded(f, labels_bound(len(zf.infolist())), LABELS_FILE)).get("resize_filter")
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile, zlib.error, UserError):
        return None


def _init_worker(dataset: ImageDataset, level: int, resample: str = "LANCZOS") -> None:
    global _worker
    _worker = (dataset, level, resample)
    try:  # Linux: die with the parent, so a killed prepare leaves no orphaned workers
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _encode(ds: ImageDataset, level: int, j: int, resample: str = "LANCZOS") -> tuple[int, bytes | None, str]:
    try:
        x = load_image(ds.file(j), ds.name(j), ds.channels, ds.resolution, resample)
    except BadImageError as e:
        return j, None, e.reason
    from PIL import Image

    a = x.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a[:, :, 0] if ds.channels == 1 else a).save(buf, format="PNG", compress_level=level)
    return j, buf.getvalue(), ""


def _encode_chunk(js: list[int]) -> list[tuple[int, bytes | None, str]]:
    ds, level, resample = _worker
    return [_encode(ds, level, j, resample) for j in js]


# ----------------------------------------------------------------------------------- the driver
def _open_source(source: Path, resolution: int, channels: int | None, workers: int | None,
                 progress: bool) -> ImageDataset:
    if not source.exists():
        raise UserError(f"source={source} does not exist; point it at a folder of images or a zip")
    index = build_index(source, workers, progress)  # not cached: prepare reads a source once
    if source.is_dir():
        return FolderDataset(source, resolution, channels, skip_bad=True, index=index)
    return ZipDataset(source, resolution, channels, skip_bad=True, index=index, one_size=False)


def _remove_stale_temps(dest: Path) -> None:
    """Temp files of earlier prepare runs to ``dest`` that were killed (their process is gone)."""
    for tmp in dest.parent.glob(f".{dest.name}.*{TEMP_SUFFIX}"):
        owner = temp_owner(tmp)
        try:
            if owner is None:
                raise ProcessLookupError
            os.kill(owner, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass


def prepare(source: str | os.PathLike, dest: str | os.PathLike, resolution: int, channels: int | None = None,
            workers: int | None = None, min_size: int | None = None, overwrite: bool = False,
            compress_level: int = 0, labels: bool = True, progress: bool = True,
            resize_filter: str = "lanczos") -> PrepareSummary:
    """Write ``dest`` (a .zip) from ``source`` (a folder or a zip); see the module docstring.

    ``channels``: 1 or 3, default 1 when every source image is grayscale, else 3. ``workers``: decoding
    processes (default: every CPU; 1 decodes in this process). ``min_size``: skip images whose shorter
    side is below it (default ``resolution // 4``: a 4x upscale is no training data). ``compress_level``:
    PNG zlib level (0 as StyleGAN's dataset_tool: bigger files, the fastest decode). ``labels=False``
    writes ``{"labels": null}`` (e.g. FFHQ's numbered subfolders are no classes). ``resize_filter``: lanczos
    or box (NVIDIA's dataset_tool --resize-filter; its FFHQ-256 FIDs are of box-filtered images), recorded in
    dataset.json as "resize_filter"."""
    t0 = time.perf_counter()
    if resize_filter not in RESIZE_FILTERS:
        raise UserError(f"resize_filter={resize_filter}: use {' or '.join(RESIZE_FILTERS)}")
    resample = RESIZE_FILTERS[resize_filter]
    resolution = check_resolution(resolution, key="resolution")
    src = Path(os.path.expanduser(str(source))).resolve()
    dst = Path(os.path.expanduser(str(dest))).resolve()
    if dst.suffix.lower() != ".zip":
        raise UserError(f"dest={dst} must end in .zip")
    if dst == src:
        raise UserError(f"dest={dst} is the source; write the prepared zip elsewhere")
    if dst.exists() and not overwrite:
        raise UserError(f"dest={dst} exists; remove it or pass overwrite=true")
    if not dst.parent.is_dir():
        raise UserError(f"the folder of dest={dst} does not exist")
    workers = workers or os.cpu_count() or 1
    ds = _open_source(src, resolution, channels, workers, progress)
    min_size = resolution // 4 if min_size is None else min_size
    short = [min(int(w), int(h)) for w, h in zip(ds.index.width, ds.index.height)]
    work = [j for j in range(ds.num_images) if short[j] >= min_size]
    labelled = labels and ds.num_classes > 0
    summary = PrepareSummary(str(dst), 0, resolution, ds.channels, ds.num_classes if labelled else 0,
                             unreadable=[(ds.locate(u[0]), u[1]) for u in ds.index.skipped + ds.index.unreadable],
                             tiny=[(ds.name(j), int(ds.index.width[j]), int(ds.index.height[j]))
                                   for j in range(ds.num_images) if short[j] < min_size])
    _remove_stale_temps(dst)
    rows = []

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf, \
                tqdm(total=len(work), desc=f"prepare {dst.name}", unit="img", disable=not progress) as bar:
            for j, png, reason in _encoded(ds, work, workers, compress_level, resample):
                bar.update()
                if png is None:
                    summary.unreadable.append((ds.name(j), reason))
                    continue
                digits = f"{summary.images:08d}"
                name = f"{digits[:5]}/img{digits}.png"  # dataset_tool's names
                zf.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), png)
                if labelled:
                    rows.append([name, int(ds.index.label[j])])
                summary.images += 1
            if summary.images == 0:
                raise UserError(f"none of the {ds.num_images} images in {src} could be prepared "
                                f"({summary.skipped} unreadable or smaller than min_size={min_size})")
            doc = {"labels": rows if labelled else None, "classes": ds.index.classes if labelled else None,
                   "resize_filter": resize_filter}
            zf.writestr(zipfile.ZipInfo(LABELS_FILE, date_time=_ZIP_TIME), json.dumps(doc))

    write_atomic(dst, write)
    summary.seconds = time.perf_counter() - t0
    return summary


def _encoded(ds: ImageDataset, work: list[int], workers: int, level: int, resample: str = "LANCZOS"):
    """(j, png bytes or None, reason) for each j of ``work``, in order."""
    if workers <= 1 or len(work) <= _CHUNK:
        yield from (_encode(ds, level, j, resample) for j in work)
        return
    chunks = [work[s:s + _CHUNK] for s in range(0, len(work), _CHUNK)]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = cf.ProcessPoolExecutor(min(workers, len(chunks)), mp_context=ctx, initializer=_init_worker,
                                  initargs=(ds, level, resample))
    try:
        for rows in pool.map(_encode_chunk, chunks):
            yield from rows
    finally:  # on an error in the writer: drop the queued chunks instead of decoding them all first
        pool.shutdown(wait=True, cancel_futures=True)
