"""The arguments of ``distgan-sample`` (defaults in configs/sample.yaml), shared by distgan/commands/sample.py
and sample_more.py (the truncation sweep and projected w)."""

from __future__ import annotations

from dataclasses import dataclass

from distgan import cli


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
    seeds: str | None = None  # NVIDIA's seeds, "0-7" or "1,5,9": z = RandomState(seed).randn(z_dim) per image
    noise_mode: str = "const"  # style models: const (G's saved maps) | random (drawn from the seed) | none


NOISE_MODES = ("const", "random", "none")
