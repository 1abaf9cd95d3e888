"""Sample grids: images through torchvision's ``make_grid``, 2D points as a density picture."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision.utils as vutils

from distgan.data import mixture_modes


def render(x: torch.Tensor, dataset: str, nrow: int | None = None) -> torch.Tensor:
    """A (3, H, W) float picture in [0, 1] of generated samples ``x`` (images in [-1, 1], or points)."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        nrow = nrow or max(1, int(math.sqrt(x.shape[0])))
        return vutils.make_grid(x, nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    return render_points(x, dataset)


def render_points(points: torch.Tensor, dataset: str, size: int = 256) -> torch.Tensor:
    """White canvas, true modes as grey rings, generated points as dark dots."""
    modes, _ = mixture_modes(dataset) if dataset in ("ring", "grid") else (torch.zeros(0, 2), 0)
    extent = 1.5 if dataset == "ring" else 6.0
    img = torch.ones(3, size, size)

    def to_px(p: torch.Tensor) -> torch.Tensor:
        return ((p + extent) / (2 * extent) * (size - 1)).round().long()

    for m in to_px(modes):  # a small grey square around each true mode
        x0, y0 = m.tolist()
        img[:, max(size - 1 - y0 - 3, 0):size - y0 + 3, max(x0 - 3, 0):x0 + 4] = 0.8
    px = to_px(points)
    keep = ((px >= 0) & (px < size)).all(1)
    px = px[keep]
    img[0, size - 1 - px[:, 1], px[:, 0]] = 0.1
    img[1, size - 1 - px[:, 1], px[:, 0]] = 0.2
    img[2, size - 1 - px[:, 1], px[:, 0]] = 0.6
    return img


def save_png(picture: torch.Tensor, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    vutils.save_image(picture, tmp)
    tmp.replace(path)


def class_rows(num_classes: int, num_images: int) -> tuple[torch.Tensor, int]:
    """Labels for a conditional grid with one class per row: (labels, images per row). At least one
    image per class, so the grid can hold more than ``num_images`` when there are more classes."""
    per_row = max(1, num_images // num_classes)
    return torch.arange(num_classes).repeat_interleave(per_row), per_row
