"""Transfer learning on 2 CPU cores (issue 21): does starting from a trained StyleGAN2 help on 200 images?

    python bench/transfer.py                   # --minutes 11: <= 15 min on 2 idle cores with the classifier's
                                               # one-time training (~3 min, cached; 0 when already cached)
    python bench/transfer.py --minutes 1 --num-samples 500 --pretrain-images 3000 --classifier-samples 5000

1. Pretrain ``experiment=stylegan2_fmnist32`` (a small StyleGAN2, Fashion-MNIST at 32 px) on the nine
   classes other than ``--target`` (an image folder of their training images), for 42 % of ``--minutes``.
2. Fine-tune it on ``--shots`` (200) training images of the target class: ``init=<the pretrained run>``
   ``train.augment=ada train.freeze_d=4`` (Freeze-D: D's 32 px block; a distgan checkpoint as the init, so
   the same path as a network pickle once read), for 20 % of ``--minutes``.
3. The same network from scratch on the same 200 images with ADA, for the same wall time.

Every run is ``train_worker`` on 2 gloo workers of 1 thread (distgan.testing.gloo), configured by the
driver's own ``preflight``; a run stops at the first log tick after its time (the STOP file, as SLURM's time limit).
Scores: the Fréchet distance in the features of distgan's Fashion-MNIST classifier (docs/evaluation.md)
between ``--num-samples`` G_ema samples and all 6,000 training images of the target class, for the
pretrained network itself (never trained on that class), the fine-tuned one and the one from scratch;
KID beside it. Grids of the three are written beside the runs. Targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from distgan.cli import load_generator
from distgan.compose import load_config
from distgan.config import DatasetConfig
from distgan.data import load, locate
from distgan.launcher.preflight import preflight
from distgan.metrics.classifier import ClassifierSettings, load_classifier, predict
from distgan.metrics.distances import frechet_distance_features, kid
from distgan.rundir import RunDir
from distgan.samples import render, save_png
from distgan.testing import gloo
from distgan.train import Hooks, train_worker

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
BASE = ["experiment=stylegan2_fmnist32", "dataset=image_folder", "dataset.resolution=32", "dataset.channels=1",
        "cluster.num_workers=2", "cluster.cpus_per_worker=1", "train.steps=100000000",
        "train.log_every=20", "train.sample_every=100000000", "train.checkpoint_every=100000000",
        "train.num_sample_images=64"]
SHARES = {"pretrain": 0.42, "finetune": 0.20, "scratch": 0.20}  # of --minutes; the rest: data, classifier, scores


class StopAfter(Hooks):
    """Writes the run's STOP file at the first log tick after ``seconds`` of wall time; the loop then
    checkpoints (with a sample grid) at its next tick and returns."""

    def __init__(self, run_dir: Path, seconds: float):
        self.stop, self.seconds, self.start, self.last = RunDir(run_dir).stop_file, seconds, time.perf_counter(), {}

    def report(self, metrics, checkpoint_dir):
        self.last = metrics
        if metrics["rank"] == 0 and time.perf_counter() - self.start > self.seconds and not self.stop.exists():
            self.stop.write_text("benchmark time budget")


def write_folder(x: torch.Tensor, labels: torch.Tensor, folder: Path) -> None:
    """uint8 (N, 1, 32, 32) images as PNGs in one subfolder per class."""
    for i, (img, y) in enumerate(zip(x, labels.tolist())):
        sub = folder / CLASSES[y]
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(sub / f"{i:06d}.png")


def _worker(cfg, seconds: float) -> dict:
    """One of the 2 gloo workers (1 thread each, as the default job's 2 Ray workers: 2 threads in one process
    lose badly to any other load on 2 cores)."""
    torch.set_num_threads(1)
    hooks = StopAfter(Path(cfg.run_dir), seconds)
    train_worker(cfg, hooks)
    return hooks.last


def train(name: str, overrides: list[str], run_dir: Path, seconds: float) -> dict:
    cfg = preflight(load_config([*BASE, *overrides], str(run_dir))).cfg  # the driver's checks and init= handling
    start = time.perf_counter()
    last = gloo.run(_worker, 2, cfg, seconds, timeout=seconds + 1800)[0]
    out = {"wall_s": time.perf_counter() - start, "steps": last.get("step", 0),
           "img_s": last.get("img_per_sec", 0.0), "p": last.get("aug/p")}
    print(f"{name}: {out['steps']} steps in {out['wall_s']:.0f} s ({out['img_s']:.0f} img/s)"
          + (f", ADA p {out['p']:.3f}" if out["p"] is not None else ""), flush=True)
    return out


@torch.no_grad()
def samples(run_dir: Path, n: int, seed: int = 0) -> torch.Tensor:
    G, cfg, _ = load_generator(str(run_dir))
    z = torch.randn(n, cfg.model.latent_dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([G(z[i:i + 250]) for i in range(0, n, 250)]).clamp(-1, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=11.0, help="the training budget of the three runs together (wall)")
    p.add_argument("--target", type=int, default=9, help="the held-out class (9: ankle boots)")
    p.add_argument("--shots", type=int, default=200, help="training images of the target class")
    p.add_argument("--freeze-d", type=int, default=4, help="train.freeze_d of the fine-tuning run")
    p.add_argument("--num-samples", type=int, default=5000, help="G_ema samples scored per network")
    p.add_argument("--pretrain-images", type=int, default=None, help="cap on the nine classes' images")
    p.add_argument("--classifier-samples", type=int, default=None, help="classifier training images (None: all)")
    p.add_argument("--root", default=None, help="dataset.root of Fashion-MNIST (default: distgan's cache)")
    p.add_argument("--keep", help="write everything under this folder (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="distgan-transfer-"))
    fm = locate(DatasetConfig(name="fashion_mnist", root=args.root, resolution=32))
    full = load(fm, seed=0)
    x, y = full.x, full.labels
    g = torch.Generator().manual_seed(0)
    others = torch.nonzero(y != args.target).flatten()
    others = others[torch.randperm(len(others), generator=g)[:args.pretrain_images]]
    target = torch.nonzero(y == args.target).flatten()
    shots = target[torch.randperm(len(target), generator=g)[:args.shots]]
    write_folder(x[others], y[others], base / "data" / "nine")
    write_folder(x[shots], y[shots], base / "data" / "target")
    print(f"data: {len(others)} images of 9 classes, {len(shots)} of {CLASSES[args.target]} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    budget, runs = args.minutes * 60, {}
    runs["pretrained"] = train("pretrain", [f"dataset.root={base / 'data' / 'nine'}"], base / "pretrain",
                               budget * SHARES["pretrain"])
    few = [f"dataset.root={base / 'data' / 'target'}", "train.augment=ada", "train.ada_kimg=100"]
    runs["fine-tuned"] = train("finetune", [*few, f"init={base / 'pretrain'}", f"train.freeze_d={args.freeze_d}"],
                               base / "finetune", budget * SHARES["finetune"])
    runs["from scratch"] = train("scratch", few, base / "scratch", budget * SHARES["scratch"])

    settings = ClassifierSettings(train_samples=args.classifier_samples)
    model, info = load_classifier(fm, settings)
    real_feats, _ = predict(model, x[target].float() / 127.5 - 1)
    dirs = {"pretrained": base / "pretrain", "fine-tuned": base / "finetune", "from scratch": base / "scratch"}
    for name, run_dir in dirs.items():
        fake = samples(run_dir, args.num_samples)
        feats, pred = predict(model, fake)
        runs[name]["fd"] = frechet_distance_features(real_feats, feats)
        runs[name]["kid"] = kid(real_feats, feats, subset_size=min(1000, len(feats), len(real_feats)))[0]
        runs[name]["target_share"] = float((pred == args.target).float().mean())
        grid = base / f"grid_{name.replace(' ', '_')}.png"
        save_png(render(fake[:64], "image_folder", nrow=8), grid)
        runs[name]["grid"] = str(grid)

    print(f"\n{CLASSES[args.target]} from {len(shots)} images, Fashion-MNIST 32 px, 2 CPU threads; classifier FD "
          f"(test accuracy {info['test_accuracy']:.4f}) of {args.num_samples} G_ema samples vs the class's "
          f"{len(target)} training images; {time.perf_counter() - t0:.0f} s in all")
    print(f"{'':<14}{'wall s':>8}{'steps':>8}{'FD':>10}{'KID':>10}{'as target':>11}  grid")
    for name, r in runs.items():
        print(f"{name:<14}{r['wall_s']:>8.0f}{r['steps']:>8}{r['fd']:>10.2f}{r['kid']:>10.4f}"
              f"{r['target_share']:>10.1%}  {r['grid']}")
    ft, sc = runs["fine-tuned"]["fd"], runs["from scratch"]["fd"]
    print(f"the start helps: FD {sc:.2f} from scratch -> {ft:.2f} fine-tuned ({sc / max(ft, 1e-9):.1f}x lower) "
          f"at equal wall time; runs under {base}")
    (base / "results.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
