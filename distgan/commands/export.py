"""Export a StyleGAN2 generator for NVIDIA's code: ``distgan-export checkpoint=RUN out=G.pt``.

The file is ``torch.save`` of a plain dict (readable with ``torch.load(weights_only=True)``)::

    {"format": "stylegan2-ada-pytorch training.networks.Generator",
     "init_kwargs": {z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs},
     "state_dict": G_ema in NVIDIA's names (with its resample_filter buffers), "source": ..., "step": ...}

so that in a StyleGAN2-ADA-pytorch (or StyleGAN3, ``training.networks_stylegan2``) checkout::

    d = torch.load("G.pt", weights_only=True); G = Generator(**d["init_kwargs"]); G.load_state_dict(d["state_dict"])
    img = G(z, c, truncation_psi=psi, noise_mode="const", force_fp32=True)

gives distgan's images (``num_fp16_res=0``: distgan computes in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distgan import cli
from distgan.errors import UserError

FORMAT = "stylegan2-ada-pytorch training.networks.Generator"


@dataclass
class ExportArgs:
    checkpoint: str | None = cli.required()  # a model=stylegan2 run, checkpoint folder or network pickle
    out: str | None = cli.required()  # G.pt
    ema: bool = True  # G_ema when the checkpoint has one


def export_state(G, cfg, data_shape, num_classes: int) -> dict:
    """The exported dict of a distgan StyleGAN2 generator."""
    from distgan.pretrained.nvidia import nvidia_generator_kwargs, to_nvidia

    return {"format": FORMAT, "init_kwargs": nvidia_generator_kwargs(cfg.model, tuple(data_shape), num_classes),
            "state_dict": to_nvidia(G.state_dict(), "G", data_shape[1])}


def main(argv: list[str]) -> None:
    import torch

    from distgan.files import write_atomic

    args = cli.parse(argv, ExportArgs, "export")
    out = Path(args.out)
    if out.suffix not in (".pt", ".pth"):
        raise UserError(f"out={args.out}: use a .pt file name (torch.save of init_kwargs and state_dict)")
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    if cfg.model.name != "stylegan2":
        raise UserError(f"checkpoint {args.checkpoint} holds a model={cfg.model.name}; export writes NVIDIA's "
                        "StyleGAN2 generator, so it needs a model=stylegan2 checkpoint")
    d = export_state(G, cfg, state.data_shape, int(state.num_classes or 0))
    d.update(source=str(args.checkpoint), step=int(state.step), generator="G_ema" if state.used_ema else "G")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: torch.save(d, f))
    print(f"{d['generator']} of {args.checkpoint} -> {out} (NVIDIA's Generator(**init_kwargs), "
          f"{len(d['state_dict'])} tensors)")


def cli_main() -> None:
    """The ``distgan-export`` console script."""
    cli.run_main(main)
