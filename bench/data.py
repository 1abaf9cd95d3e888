"""The streamed image loader side by side with a plain torchvision ImageFolder + DataLoader, and its memory.

    python bench/data.py            # the full run (docs/benchmarks.md, "Data")
    python bench/data.py --quick    # tiny sizes: checks the plumbing only, its numbers mean nothing

(1) Throughput, 256-px JPEGs made here, batch 64, 0 / 1 / 2 loader workers, on the CPU:
    plain     torchvision.datasets.ImageFolder (PIL open + convert("RGB") + PILToTensor) + DataLoader
              (shuffle, default collate, persistent workers, prefetch 2)
    folder    distgan's FolderDataset + BatchLoader (same decode: the images are already 256 px)
    zip       distgan's ZipDataset of the same JPEGs (stored) + BatchLoader
  Every case scales the uint8 batch to float [-1, 1] as training does. Steady-state img/s is timed
  after the first batches; the cases alternate within a round (plain folder zip, then zip folder plain)
  so that drift of a shared machine falls on all alike. Reported as ratios to plain.
(2) Memory and start-up, a 10,000- vs a 100,000-image zip (the same 256-px JPEGs under many names),
  indexed once beforehand (the driver's job): each size in a fresh process that opens the zip, starts a
  BatchLoader with 2 loader workers and reads batches; peak RSS (VmHWM) of the training process and of
  its largest loader worker, and the time from the command to the first batch. The ratio 100k/10k is
  what must stay within 5 % (+3 s for the first batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np


def _vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak RSS of a process (VmHWM; ru_maxrss would carry the parent's over a fork)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_jpegs(root: Path, n: int, size: int, classes: int = 4, distinct: int | None = None) -> list[bytes]:
    """``n`` JPEGs (quality 90) of a smooth pattern plus noise, in class subfolders; returns the encodings.
    With ``distinct``, only that many different images are encoded and cycled (for the huge zips)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for k in range(distinct or n):
        base = np.stack([np.sin(6 * xx + k), np.cos(5 * yy - k), np.sin(4 * (xx + yy) + 0.5 * k)], -1)
        a = np.clip(127.5 + 90 * base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    if root is not None:
        for k in range(n):
            d = root / f"class{k % classes}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{k:07d}.jpg").write_bytes(out[k % len(out)])
    return out


def zip_files(tree: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(tree.rglob("*.jpg")):
            zf.write(p, p.relative_to(tree).as_posix())
    return dest


def big_zip(dest: Path, n: int, encodings: list[bytes]) -> Path:
    """StyleGAN-style names and dataset.json (10 classes) over ``n`` members cycling ``encodings``."""
    labels = []
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for k in range(n):
            d = f"{k:08d}"
            name = f"{d[:5]}/img{d}.jpg"
            zf.writestr(name, encodings[k % len(encodings)])
            labels.append([name, k % 10])
        zf.writestr("dataset.json", json.dumps({"labels": labels}))
    return dest


# ----------------------------------------------------------------------------------- throughput
def plain_loader(root: Path, batch: int, workers: int):
    import torch
    import torchvision
    from torchvision.transforms import v2

    ds = torchvision.datasets.ImageFolder(str(root), transform=v2.PILToTensor())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                                         generator=torch.Generator().manual_seed(0), drop_last=True)
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        return x.float().div_(127.5).sub_(1.0), y

    return next_batch, lambda: None


def streamed_loader(kind: str, path: Path, batch: int, workers: int):
    from distgan.data import ShardedSampler
    from distgan.data.image_files import FolderDataset, ZipDataset
    from distgan.data.loader import BatchLoader

    ds = (FolderDataset if kind == "folder" else ZipDataset)(path, resolution=256, progress=False)
    stream = BatchLoader(ds, ShardedSampler(len(ds), batch, 0, 1, seed=0), "cpu", num_workers=workers)
    counter = iter(range(10**9))
    return (lambda: stream(next(counter))), stream.close


def time_case(case: str, tree: Path, zip_path: Path, batch: int, workers: int, warm: int, measure: int) -> dict:
    t0 = time.perf_counter()
    fetch, close = plain_loader(tree, batch, workers) if case == "plain" else \
        streamed_loader(case, tree if case == "folder" else zip_path, batch, workers)
    fetch()
    first = time.perf_counter() - t0
    for _ in range(warm):
        fetch()
    t1 = time.perf_counter()
    for _ in range(measure):
        fetch()
    rate = measure * batch / (time.perf_counter() - t1)
    close()
    return {"case": case, "workers": workers, "img_s": rate, "first_batch_s": first}


def throughput(args, work: Path) -> list[dict]:
    tree = work / "jpeg256"
    make_jpegs(tree, args.images, args.size)
    zip_path = zip_files(tree, work / "jpeg256.zip")
    from distgan.data.index_cache import open_index

    open_index(tree, progress=False), open_index(zip_path, progress=False)  # built once, as the driver does
    rows = []
    for rnd in range(args.rounds):
        for workers in args.workers:
            order = ("plain", "folder", "zip") if rnd % 2 == 0 else ("zip", "folder", "plain")
            for case in order:
                rows.append(time_case(case, tree, zip_path, args.batch, workers, args.warm, args.measure))
                print(f"  round {rnd} {case:6s} {workers} workers: {rows[-1]['img_s']:8.0f} img/s", flush=True)
    return rows


# --------------------------------------------------------------------------------------- memory
def memory_child(zip_path: str, batch: int, batches: int, t_command: float) -> dict:
    """In a fresh process: open the (indexed) zip, stream ``batches`` batches with 2 loader workers."""
    import torch

    torch.set_num_threads(1)
    from distgan.data import ShardedSampler
    from distgan.data.image_files import ZipDataset
    from distgan.data.loader import BatchLoader

    ds = ZipDataset(zip_path, progress=False)
    with BatchLoader(ds, ShardedSampler(len(ds), batch, 0, 1, seed=0), "cpu", num_workers=2) as stream:
        stream(0)
        first = time.time() - t_command
        for c in range(1, batches):
            stream(c)
        workers = max(_vm_hwm_mb(p) for p in stream.worker_pids)
    return {"images": len(ds), "first_batch_s": first, "rss_mb": _vm_hwm_mb(), "worker_rss_mb": workers}


def memory(args, work: Path) -> list[dict]:
    from distgan.data.index_cache import open_index

    encodings = make_jpegs(None, 0, args.size, distinct=64)
    zips = {}
    for n in args.mem_sizes:
        zips[n] = big_zip(work / f"zip{n}.zip", n, encodings)
        t = time.perf_counter()
        open_index(zips[n], progress=False)
        print(f"  indexed {n} images in {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for rnd in range(args.rounds):
        for n in (args.mem_sizes if rnd % 2 == 0 else args.mem_sizes[::-1]):
            t = time.time()
            # this file run as a module without its main (runpy), so the child imports distgan as installed
            code = (f"import json, runpy; child = runpy.run_path({__file__!r})['memory_child']; "
                    f"print(json.dumps(child({str(zips[n])!r}, {args.batch}, {args.mem_batches}, {t})))")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
            if proc.returncode:
                raise RuntimeError(f"memory child failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  round {rnd} {n:7d} images: first batch {r['first_batch_s']:.2f} s, RSS {r['rss_mb']:.0f} MB, "
                  f"loader worker {r['worker_rss_mb']:.0f} MB", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the plumbing only")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--work", type=Path, help="folder for the generated data (default: a temp folder)")
    args = p.parse_args()
    if args.quick:
        args.images, args.size, args.batch, args.warm, args.measure, args.rounds = 96, 256, 8, 1, 3, 1
        args.workers, args.mem_sizes, args.mem_batches = (0, 1, 2), (200, 2000), 3
    else:
        args.images, args.size, args.batch, args.warm, args.measure, args.rounds = 2048, 256, 64, 3, 20, 3
        args.workers, args.mem_sizes, args.mem_batches = (0, 1, 2), (10_000, 100_000), 30
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        print(f"(1) throughput: {args.images} JPEGs of {args.size} px, batch {args.batch}", flush=True)
        rows = throughput(args, work)
        print(f"(2) memory: zips of {args.mem_sizes[0]} and {args.mem_sizes[1]} images", flush=True)
        mem = memory(args, work)

    print("\nloader throughput (median img/s over rounds; ratio to plain ImageFolder + DataLoader)")
    ratios = []
    for workers in args.workers:
        med = {c: statistics.median(r["img_s"] for r in rows if r["case"] == c and r["workers"] == workers)
               for c in ("plain", "folder", "zip")}
        first = {c: statistics.median(r["first_batch_s"] for r in rows if r["case"] == c and r["workers"] == workers)
                 for c in ("plain", "folder", "zip")}
        for c in ("folder", "zip"):
            ratios.append({"workers": workers, "case": c, "ratio": med[c] / med["plain"]})
        print(f"workers {workers}: plain {med['plain']:.0f}, folder {med['folder']:.0f}, zip {med['zip']:.0f} img/s; "
              f"folder/plain {med['folder'] / med['plain']:.2f}, zip/plain {med['zip'] / med['plain']:.2f}; "
              f"first batch {first['plain']:.2f} / {first['folder']:.2f} / {first['zip']:.2f} s")
    small, large = args.mem_sizes
    m = {n: {k: statistics.median(r[k] for r in mem if r["images"] == n)
             for k in ("rss_mb", "worker_rss_mb", "first_batch_s")} for n in args.mem_sizes}
    print(f"memory {large}/{small} images: training process {m[large]['rss_mb']:.0f}/{m[small]['rss_mb']:.0f} MB "
          f"(ratio {m[large]['rss_mb'] / m[small]['rss_mb']:.3f}), loader worker {m[large]['worker_rss_mb']:.0f}/"
          f"{m[small]['worker_rss_mb']:.0f} MB (ratio {m[large]['worker_rss_mb'] / m[small]['worker_rss_mb']:.3f}); "
          f"command to first batch {m[large]['first_batch_s']:.2f}/{m[small]['first_batch_s']:.2f} s "
          f"(+{m[large]['first_batch_s'] - m[small]['first_batch_s']:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps({"throughput": rows, "ratios": ratios, "memory": mem,
                                         "memory_median": {str(k): v for k, v in m.items()}}, indent=1))


if __name__ == "__main__":
    main()
