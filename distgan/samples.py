"""Sample grids: images through torchvision's ``make_grid``, 2D points as a density picture."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from distgan.data.mixture import MIXTURES, mixture_modes
from distgan.files import write_atomic


def render(x: torch.Tensor, dataset: str, nrow: int | None = None) -> torch.Tensor:
    """A (3, H, W) float picture in [0, 1] of generated samples ``x`` (images in [-1, 1], or points)."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        nrow = nrow or max(1, int(math.sqrt(x.shape[0])))
        import torchvision.utils as vutils  # here: torchvision's import pulls in torch._dynamo (~1.5 s)

        return vutils.make_grid(x, nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    return render_points(x, dataset)


def render_points(points: torch.Tensor, dataset: str, size: int = 320) -> torch.Tensor:
    """White canvas, the true modes as grey squares (about 3σ wide), generated points as blue dots."""
    modes, _ = mixture_modes(dataset) if dataset in MIXTURES else (torch.zeros(0, 2), 0)
    extent = 1.5 * float(modes.abs().max()) if len(modes) else 6.0  # ring: 1.5, grid: 6
    img = torch.ones(3, size, size)

    def to_px(p: torch.Tensor) -> torch.Tensor:  # (x, y) -> (column, row), y up
        px = ((p + extent) / (2 * extent) * (size - 1)).round().long()
        return torch.stack([px[:, 0], size - 1 - px[:, 1]], 1)

    for col, row in to_px(modes).tolist():
        img[:, max(row - 4, 0):row + 5, max(col - 4, 0):col + 5] = 0.85
    px = to_px(points)
    for dc in (-1, 0, 1):  # 3x3 dots: single pixels vanish at this scale
        for dr in (-1, 0, 1):
            q = px + torch.tensor([dc, dr])
            q = q[((q >= 0) & (q < size)).all(1)]
            for channel, value in enumerate((0.1, 0.25, 0.7)):
                img[channel, q[:, 1], q[:, 0]] = value
    return img


def save_png(picture: torch.Tensor, path: str | Path) -> None:
    """``picture`` as a PNG file, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image  # what torchvision's save_image does, without importing torchvision (~1.5 s)

    pixels = picture.detach().cpu().float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    pixels = pixels.unsqueeze(0) if pixels.dim() == 2 else pixels
    pixels = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels  # RGB, as save_image writes it
    image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
    write_atomic(path, lambda f: image.save(f, format="png"))


def class_rows(num_classes: int, num_images: int) -> tuple[torch.Tensor, int]:
    """Labels for a conditional grid with one class per row: (labels, images per row). At least one
    image per class, so the grid can hold more than ``num_images`` when there are more classes."""
    per_row = max(1, num_images // num_classes)
    return torch.arange(num_classes).repeat_interleave(per_row), per_row
