"""Draw samples from a checkpoint: ``distgan-sample checkpoint=PATH num_samples=N out=FILE``.

``out`` ending in ``.png`` writes a sample grid (a density picture for ring/grid), ``.npy`` the raw
samples (images in [-1, 1] as (N, C, H, W) float32, or (N, 2) points). ``seed=`` picks the latents
(sample i depends on (seed, i) only); ``label=K`` draws class K from a class-conditional model;
``truncation=0.7`` pulls w towards its average (the truncation trick, for models with a mapping network).
Samples use G's constant noise maps, like the training grids and evaluation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from distgan import cli
from distgan.errors import UserError


@dataclass
class SampleArgs:
    checkpoint: str | None = cli.required()  # run dir, checkpoints/latest, checkpoints/best or a step folder
    out: str | None = cli.required()  # FILE.png (grid) or FILE.npy (raw samples)
    num_samples: int = 64
    seed: int = 0
    label: int | None = None  # class-conditional checkpoints: draw this class (default: classes in turn)
    ema: bool = True  # use G_ema when the checkpoint has one
    nrow: int | None = None  # images per grid row (default: about sqrt(num_samples); a class per row)
    truncation: float = 1.0  # psi of the truncation trick (stylegan2): w = w_avg + psi (w - w_avg); 1 = none


def main(argv: list[str]) -> None:
    import numpy as np
    import torch

    from distgan.files import write_atomic
    from distgan.metrics.evaluator import generate
    from distgan.rng import eval_latents
    from distgan.samples import render, save_png

    args = cli.parse(argv, SampleArgs, "sample")
    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise UserError(f"out={args.out}: use a .png (sample grid) or .npy (raw samples) file name")
    if args.num_samples <= 0:
        raise UserError(f"num_samples must be positive, got {args.num_samples}")
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    if args.truncation != 1.0:
        from distgan.models import MODELS, spec

        if not spec(cfg.model.name).style:
            styled = [n for n, m in MODELS.items() if m.style]
            raise UserError(f"truncation={args.truncation}: model={cfg.model.name} has no mapping network to truncate "
                            f"(model={' or model='.join(styled)} has); drop truncation=")
        G = functools.partial(G, truncation_psi=args.truncation)
    classes = int(state.num_classes or 0)
    if args.label is not None and not classes:
        raise UserError(f"checkpoint {args.checkpoint} is not class-conditional: drop label=")
    if args.label is not None and not 0 <= args.label < classes:
        raise UserError(f"label={args.label} is out of range: the checkpoint has classes 0..{classes - 1}")
    z, labels = eval_latents(args.num_samples, cfg.model.latent_dim, args.seed, classes)
    if args.label is not None:
        labels = torch.full_like(labels, args.label)
    x = generate(G, z, labels, torch.device("cpu"))
    if out.suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lambda f: np.save(f, x.numpy()))
    else:
        nrow = args.nrow or (classes if classes and args.label is None and args.num_samples >= classes else None)
        picture = render(x, cfg.dataset.name, nrow=nrow)
        save_png(picture, out)
    psi = f", truncation {args.truncation:g}" if args.truncation != 1.0 else ""
    print(f"{args.num_samples} samples from step {state.step} ({'G_ema' if state.used_ema else 'G'}{psi}) -> {out}")


def cli_main() -> None:
    """The ``distgan-sample`` console script."""
    cli.run_main(main)
