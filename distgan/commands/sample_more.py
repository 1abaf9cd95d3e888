"""What ``distgan-sample`` does beyond a grid of one truncation, kept apart from distgan/commands/sample.py
(which hands the arguments over when they ask for it, :func:`handles`):

- a **truncation sweep**: ``truncation=1,0.7,0.5,0`` writes one row per psi, the same ``num_samples``
  latents in every row (``num_samples=8`` makes a figure of 8 columns);
- a **projection rendered back**: ``projected_w=DIR/projected_w.npz`` (``launch/project.py``'s output, or
  NVIDIA's projector's: key ``w``, shape (N, num_ws, w_dim)) drawn with G's constant noise maps, as
  ``launch/project.py`` drew its final image.

Both need a model with a mapping network. ``out`` is a .png grid or a .npy of the raw images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distgan import cli
from distgan.commands.sample_args import SampleArgs
from distgan.errors import UserError


@dataclass
class SampleMoreArgs(SampleArgs):
    truncation: str = "1.0"  # one psi, or several (1,0.7,0.5,0): one row each
    projected_w: str | None = None  # render this projected_w.npz instead of drawing latents


def handles(argv: list[str]) -> bool:
    """Whether the arguments ask for a sweep (several truncations) or a projected w."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "projected_w" or (key == "truncation" and "," in value):
            return True
    return False


def load_projected_w(path: str, G):
    """(N, num_ws, w_dim) float32 of a projected_w.npz; a UserError for a file this G cannot draw."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise UserError(f"projected_w={path} does not exist; give launch/project.py's DIR/projected_w.npz")
    try:
        with np.load(p) as f:
            if "w" not in f.files:
                raise UserError(f"projected_w={path} has no array 'w' (keys: {', '.join(f.files) or 'none'})")
            w = torch.from_numpy(np.asarray(f["w"], dtype=np.float32))
    except (OSError, ValueError) as e:
        raise UserError(f"projected_w={path} is not a .npz file ({e})") from None
    if w.dim() == 2:
        w = w[None]
    if w.dim() != 3 or tuple(w.shape[1:]) != (G.num_ws, G.w_dim):
        raise UserError(f"projected_w={path} holds w of shape {tuple(w.shape)}; this generator takes "
                        f"(N, {G.num_ws}, {G.w_dim})")
    return w


def main(argv: list[str]) -> None:
    import numpy as np
    import torch

    from distgan.commands.video import require_style
    from distgan.files import write_atomic
    from distgan.latents import parse_floats
    from distgan.metrics.evaluator import generate
    from distgan.rng import eval_latents
    from distgan.samples import render, save_png

    args = cli.parse(argv, SampleMoreArgs, "sample")
    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise UserError(f"out={args.out}: use a .png (sample grid) or .npy (raw samples) file name")
    psis = parse_floats(args.truncation, "truncation")
    if args.projected_w and len(psis) > 1:
        raise UserError("projected_w= renders the projection as it is: drop the truncation list")
    if args.num_samples <= 0:
        raise UserError(f"num_samples must be positive, got {args.num_samples}")
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    require_style(cfg, "projected_w=" if args.projected_w else f"truncation={args.truncation}")
    classes = int(state.num_classes or 0)
    if args.label is not None and not 0 <= args.label < max(classes, 1):
        raise UserError(f"label={args.label}: the checkpoint is not class-conditional or has no such class")
    if args.projected_w:
        w = load_projected_w(args.projected_w, G)
        with torch.no_grad():
            x = torch.cat([G.synthesis(w[i:i + 64]) for i in range(0, len(w), 64)]).float()
        nrow, what = None, f"{len(w)} projected w ({args.projected_w})"
    else:
        z, labels = eval_latents(args.num_samples, cfg.model.latent_dim, args.seed, classes)
        if args.label is not None:
            labels = torch.full_like(labels, args.label)
        rows = []
        for psi in psis:
            def net(zb, yb=None, psi=psi):
                return G(zb, yb, truncation_psi=psi)
            rows.append(generate(net, z, labels, torch.device("cpu")))
        x = torch.cat(rows)
        nrow, what = args.num_samples, f"{args.num_samples} samples x truncation {','.join(f'{p:g}' for p in psis)}"
    if out.suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lambda f: np.save(f, x.numpy()))
    else:
        save_png(render(x, cfg.dataset.name, nrow=nrow), out)
    print(f"{what} from step {state.step} ({'G_ema' if state.used_ema else 'G'}) -> {out}")
