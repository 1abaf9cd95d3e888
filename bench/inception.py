"""Cost of the standard metrics: TF-Inception feature extraction and the streamed evaluation.

    python bench/inception.py              # CPU: img/s at 28 px (upsampled) and 64 px, 1 and 2 threads;
                                           # peak RSS of a 5,000- vs a 500-sample streamed evaluation
    python bench/inception.py --quick      # a few images of every case: checks the plumbing only
    python bench/inception.py --gpu        # fid50k_full of a 64-px DCGAN on one GPU: seconds, GPU memory

Every case runs in a fresh process (``ru_maxrss`` is per process). Extraction: one warm-up batch, then
the timed images, preprocessing (quantise, resize to 299, normalise) included. Streaming: a random-init
DCGAN at 28 px generates N samples through :func:`distgan.metrics.sources.generator_fn` and they are
scored against a small reference of random images, with the KID/precision-recall subset fixed at
``--keep`` (that subset is the only thing that grows with N, and only up to ``keep``: 10,000 × 2,048
float32 = 82 MB by default). ``--gpu``: 50,000 samples (``--num-samples``) and a 50,000-image reference
of random 64-px images, timed separately; TF32 is off during extraction (see distgan/metrics/inception.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path


def _dcgan(size: int, channels: int, device):
    from distgan.config import ModelConfig
    from distgan.models import build_models

    cfg = ModelConfig(name="dcgan")
    G, _ = build_models(cfg, (channels, size, size))
    return G.to(device).eval().requires_grad_(False), cfg.latent_dim


def extraction(size: int, channels: int, threads: int, images: int, batch: int) -> dict:
    import torch

    from distgan.metrics.inception import InceptionFeatures

    torch.set_num_threads(threads)
    ex = InceptionFeatures(batch_size=batch)
    x = torch.rand(images, channels, size, size) * 2 - 1
    ex(x[:batch])  # warm-up
    t = time.perf_counter()
    ex(x)
    return {"img_s": images / (time.perf_counter() - t)}


def streamed(n: int, keep: int, num_real: int, batch: int) -> dict:
    import torch

    from distgan.metrics import inception_metrics as E
    from distgan.metrics import sources
    from distgan.metrics.inception import DIM, InceptionFeatures

    torch.set_num_threads(1)
    ex = InceptionFeatures(batch_size=batch)
    real = (torch.rand(num_real, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    meta = {**ex.info, "resolution": 28, "num_real": num_real}
    ref = E.reference_stats(lambda r, w: sources.index_batches(lambda i: real[i], num_real, batch, r, w), meta, ex, DIM,
                      "bench", keep=keep, cache=False)
    G, nz = _dcgan(28, 1, "cpu")
    t = time.perf_counter()
    metrics, _ = E.score_streamed(lambda r, w: sources.index_batches(sources.generator_fn(G, nz, 0), n, batch, r, w),
                            ref, ex, DIM, num_samples=n, full=False, keep=keep)
    return {"seconds": time.perf_counter() - t, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "metrics": metrics}


def gpu(n: int, batch: int, device: str = "cuda") -> dict:
    import torch

    from distgan.metrics import inception_metrics as E
    from distgan.metrics import sources
    from distgan.metrics.inception import DIM, InceptionFeatures

    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ex = InceptionFeatures(device=device, batch_size=batch)
    G, nz = _dcgan(64, 3, device)
    meta = {**ex.info, "resolution": 64, "num_real": n}

    def real(idx):  # random 64-px "dataset" images, drawn on the GPU (the data loader is not timed here)
        g = torch.Generator(device=device).manual_seed(int(idx[0]))
        return torch.randint(0, 256, (len(idx), 3, 64, 64), generator=g, device=device, dtype=torch.uint8)

    sync()
    t0 = time.perf_counter()
    ref = E.reference_stats(lambda r, w: sources.index_batches(real, n, batch, r, w), meta, ex, DIM, "bench-gpu",
                      device=device, cache=False)
    sync()
    t1 = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    metrics, info = E.score_streamed(lambda r, w: sources.index_batches(sources.generator_fn(G, nz, 0, device=device),
                                                                  n, batch, r, w),
                               ref, ex, DIM, num_samples=n, full=True, device=device)
    sync()
    return {"reference_s": t1 - t0, "fid_s": time.perf_counter() - t1,
            "device": torch.cuda.get_device_name() if cuda else "CPU",
            "gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0, "metrics": metrics, "meta": info}


def _fresh(fn, *args):
    """``fn(*args)`` in a fresh process (spawned: its own peak RSS, its own thread settings)."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few images per case: plumbing only")
    p.add_argument("--gpu", action="store_true", help="fid50k_full of a 64-px DCGAN on one CUDA GPU")
    p.add_argument("--num-samples", type=int, default=50_000, help="--gpu: generated (and reference) images")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 500 on GPU, 16 on CPU)")
    p.add_argument("--keep", type=int, default=500, help="CPU streaming: KID/precision-recall subset size")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    results: dict = {}
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: --gpu needs a CUDA GPU")
        r = _fresh(gpu, args.num_samples, args.batch or 500)
        print(f"gpu {r['device']}: reference of {args.num_samples} images {r['reference_s']:.1f} s; "
              f"{'/'.join(r['metrics'])} of {args.num_samples} samples {r['fid_s']:.1f} s; "
              f"peak GPU memory {r['gpu_mb']:.0f} MB; {r['metrics']}")
        results["gpu"] = r
    else:
        images, batch = (4, 2) if args.quick else (64, args.batch or 16)
        results["extraction"] = []
        for size, channels in ((28, 1), (64, 3)):
            for threads in (1, 2):
                r = _fresh(extraction, size, channels, threads, images, batch)
                print(f"extract {size} px x{channels} -> 299, {threads} thread(s): {r['img_s']:.2f} img/s "
                      f"({images} images, batch {batch})")
                results["extraction"].append({"size": size, "threads": threads, **r})
        small, large, num_real = (8, 40, 8) if args.quick else (500, 5000, 200)
        keep = min(args.keep, small)
        rows = {n: _fresh(streamed, n, keep, num_real, batch) for n in (small, large)}
        for n, r in rows.items():
            print(f"stream {n} samples (keep {keep}): peak RSS {r['rss_mb']:.0f} MB, {r['seconds']:.1f} s")
        print(f"stream peak RSS {large} - {small} samples: {rows[large]['rss_mb'] - rows[small]['rss_mb']:+.1f} MB")
        results["streaming"] = {str(n): r for n, r in rows.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
