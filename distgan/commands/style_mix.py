"""The style-mixing figure of StyleGAN's paper: ``distgan-style-mix checkpoint=PATH rows=85,100,75
cols=55,821,1789 styles=0-6 out=mix.png``.

The first row holds the column seeds' images, the first column the row seeds' images (seed s: NVIDIA's
``RandomState(s).randn(z_dim)``, :mod:`distgan.latents`); cell (r, c) is row seed r's w with the layers in
``styles`` taken from column seed c's w (NVIDIA's style_mixing.py layout). With ``styles`` empty every
cell is its row seed's image; low layer indices are the coarse styles (pose, shape), high ones the fine
(colour, texture). Models with a mapping network only; G's constant noise maps.
"""

from __future__ import annotations

from dataclasses import dataclass

from distgan import cli
from distgan.errors import UserError


@dataclass
class StyleMixArgs:
    checkpoint: str | None = cli.required()
    out: str | None = cli.required()  # FILE.png
    rows: str = "85,100,75,458,1500"  # seeds whose w's are the base of each row
    cols: str = "55,821,1789,293"  # seeds whose styles (the layers in styles) replace the row's
    styles: str | None = "0-6"  # w layers taken from the column seed (0-6: coarse + middle); empty: none
    truncation: float = 1.0
    ema: bool = True
    label: int | None = None  # class-conditional checkpoints: the class of every image (default 0)


def mix_grid(G, row_z, col_z, styles: list[int], truncation: float = 1.0, labels=None):
    """(rows + 1) x (cols + 1) images as a (N, C, H, W) batch in row-major order: the top-left is blank
    (-1: black), then the column seeds, then per row its seed and its mixes."""
    import torch

    with torch.no_grad():
        def w_of(z):
            y = None if labels is None else labels[:1].expand(len(z))
            return G.mapping(z, y, truncation_psi=truncation)

        w_rows, w_cols = w_of(row_z), w_of(col_z)
        layers = torch.zeros(G.num_ws, dtype=torch.bool)
        layers[styles] = True
        tiles = [None] + [w_cols[c] for c in range(len(w_cols))]
        for r in range(len(w_rows)):
            tiles.append(w_rows[r])
            for c in range(len(w_cols)):
                tiles.append(torch.where(layers[:, None], w_cols[c], w_rows[r]))
        ws = torch.stack([t for t in tiles if t is not None])
        images = torch.cat([G.synthesis(ws[i:i + 32]) for i in range(0, len(ws), 32)])
    blank = torch.full_like(images[:1], -1.0)
    return torch.cat([blank, images])


def main(argv: list[str]) -> None:
    import torchvision.utils as vutils

    from distgan.commands.video import check_out, class_labels, require_style
    from distgan.latents import parse_seeds, seed_z
    from distgan.samples import save_png

    args = cli.parse(argv, StyleMixArgs, "style_mix")
    out = check_out(args.out, (".png",), "the style-mixing figure")
    rows, cols = parse_seeds(args.rows, "rows"), parse_seeds(args.cols, "cols")
    styles = sorted(set(parse_seeds(args.styles, "styles", allow_empty=True)))
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    require_style(cfg, "style mixing")
    if styles and styles[-1] >= G.num_ws:
        raise UserError(f"styles={args.styles}: this generator has w layers 0..{G.num_ws - 1}")
    labels = class_labels(state, args.label, 1)
    images = mix_grid(G, seed_z(rows, cfg.model.latent_dim), seed_z(cols, cfg.model.latent_dim), styles,
                      args.truncation, labels)
    grid = vutils.make_grid(images.add(1).div(2).clamp(0, 1), nrow=len(cols) + 1, padding=0)
    save_png(grid, out)
    print(f"{len(rows)} x {len(cols)} style mixes (styles {args.styles or 'none'} from the columns) of step "
          f"{state.step} ({'G_ema' if state.used_ema else 'G'}) -> {out}")


def cli_main() -> None:
    """The ``distgan-style-mix`` console script."""
    cli.run_main(main)
