"""Draw samples from a checkpoint: ``distgan-sample checkpoint=PATH num_samples=N out=FILE``.

``out`` ending in ``.png`` writes a sample grid (a density picture for ring/grid), ``.npy`` the raw
samples (images in [-1, 1] as (N, C, H, W) float32, or (N, 2) points). ``seed=`` picks the latents
(sample i depends on (seed, i) only); ``label=K`` draws class K from a class-conditional model;
``truncation=0.7`` pulls w towards its average (the truncation trick, for models with a mapping network).
Samples use G's constant noise maps, like the training grids and evaluation (``noise_mode=random|none``
for style models: per-pixel noise drawn from the seed, or none).

``seeds=0-7`` (or ``1,5,9``) draws sample i from NVIDIA's seed convention instead, z =
``numpy.random.RandomState(seed).randn(z_dim)``, so a StyleGAN2-ADA pickle (``checkpoint=net.pkl``) gives the
images of NVIDIA's generate.py for the same seeds, label and truncation; ``out=DIR/`` then writes one
``seed0000.png`` per seed (NVIDIA's file names and 8-bit conversion), ``.png``/``.npy`` the grid or the raw samples.
"""

from __future__ import annotations

import functools
from pathlib import Path

from distgan import cli
from distgan.commands.sample_args import NOISE_MODES, SampleArgs
from distgan.errors import UserError


def noise_for(G, mode: str, seeds: list[int] | None, n: int):
    """The noise maps of ``noise_mode`` (None: G's constant maps)."""
    import torch

    if mode == "const":
        return None
    if mode == "none":
        return [torch.zeros(n, 1, r, r) for r in G.noise_resolutions]
    per = []
    for k in (seeds if seeds is not None else range(n)):  # one generator per image: its maps in turn
        g = torch.Generator().manual_seed(int(k))
        per.append([torch.randn(1, 1, r, r, generator=g) for r in G.noise_resolutions])
    return [torch.cat([p[j] for p in per]) for j in range(len(G.noise_resolutions))]


def save_seed_pngs(x, seeds: list[int], folder: Path, dtype=None) -> None:
    """One ``seed%04d.png`` per image, 8-bit as NVIDIA's generate.py and R3GAN's gen_images.py (x * 127.5 + 128,
    clamped), computed in ``dtype`` when given (the generator's output type: bfloat16 for R3GAN's bf16 stages)."""
    import PIL.Image
    import torch

    from distgan.files import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    x = x.to(dtype) if dtype is not None else x
    img = (x.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    for s, a in zip(seeds, img):
        pic = PIL.Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else PIL.Image.fromarray(a, "RGB")
        write_atomic(folder / f"seed{s:04d}.png", lambda f, pic=pic: pic.save(f, format="png"))


def main(argv: list[str]) -> None:
    import numpy as np
    import torch

    from distgan.commands import sample_more  # truncation=1,0.7,0.5 (a sweep) and projected_w= (issue 24)
    from distgan.files import write_atomic
    from distgan.latents import parse_seeds, seed_z
    from distgan.metrics.evaluator import generate
    from distgan.rng import eval_latents
    from distgan.samples import render, save_png

    if sample_more.handles(argv):
        return sample_more.main(argv)
    args = cli.parse(argv, SampleArgs, "sample")
    out = Path(args.out)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None  # NVIDIA's 0-7 / 1,5,9
    per_seed = seeds is not None and (str(args.out).endswith("/") or out.is_dir())
    if not per_seed and out.suffix not in (".png", ".npy"):
        raise UserError(f"out={args.out}: use a .png (sample grid) or .npy (raw samples) file name"
                        + (", or a folder DIR/ (one seedNNNN.png per seed)" if seeds is not None else ""))
    if args.num_samples <= 0:
        raise UserError(f"num_samples must be positive, got {args.num_samples}")
    if args.noise_mode not in NOISE_MODES:
        raise UserError(f"noise_mode={args.noise_mode}: use one of {', '.join(NOISE_MODES)}")
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    out_dtype = getattr(G, "output_dtype", None)  # R3GAN's bf16 stages: its 8-bit images are made in bfloat16
    style = hasattr(G, "noise_resolutions")
    if args.noise_mode != "const" and not style:
        raise UserError(f"noise_mode={args.noise_mode}: model={cfg.model.name} has no noise inputs; drop noise_mode=")
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
    if seeds is not None:
        z = seed_z(seeds, cfg.model.latent_dim)  # NVIDIA's: RandomState(seed).randn(z_dim)
        labels = torch.arange(len(seeds)) % classes if classes else None
    else:
        z, labels = eval_latents(args.num_samples, cfg.model.latent_dim, args.seed, classes)
    if args.label is not None:
        labels = torch.full_like(labels, args.label)
    noise = noise_for(G, args.noise_mode, seeds, len(z)) if style else None
    if noise is not None:
        G = functools.partial(G, noise=noise)
    x = generate(G, z, labels, torch.device("cpu"), batch=len(z) if noise is not None else 500)
    n = len(z)
    if per_seed:
        save_seed_pngs(x, seeds, out, out_dtype)
    elif out.suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lambda f: np.save(f, x.numpy()))
    else:
        nrow = args.nrow or (classes if classes and args.label is None and args.num_samples >= classes else None)
        picture = render(x, cfg.dataset.name, nrow=nrow)
        save_png(picture, out)
    psi = f", truncation {args.truncation:g}" if args.truncation != 1.0 else ""
    what = f"seeds {args.seeds}" if seeds is not None else f"{n} samples"
    origin = "the pickle" if state.config is None else f"step {state.step}"
    print(f"{what} from {origin} ({'G_ema' if state.used_ema else 'G'}{psi}) -> {out}"
          + (f"/seedNNNN.png ({n} images)" if per_seed else ""))


def cli_main() -> None:
    """The ``distgan-sample`` console script."""
    cli.run_main(main)
