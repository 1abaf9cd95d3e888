"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"), policy
``color,translation,cutout``, applied to every image D sees:

- colour: brightness + U(-0.5, 0.5); saturation (x - mean_c) * U(0, 2) + mean_c; contrast
  (x - mean_chw) * U(0.5, 1.5) + mean_chw;
- translation by an integer in [-H/8, H/8] per axis, zero fill;
- cutout: a zero square of half the image side at a uniform centre (clipped at the borders).

The paper applies every op to every image (p = 1); here each op fires per sample with probability ``p``
(p = 1 is DiffAugment, p = 0 the identity). Sample ``i`` draws its 12 uniforms from its own generator
seeded by (seed, stream, counter, i), like ADA, so the result does not depend on the world size.
"""

from __future__ import annotations

import torch

from distgan.rng import sample_generator

UNIFORMS = ("bright_on", "bright", "sat_on", "sat", "contrast_on", "contrast", "shift_on", "shift_x", "shift_y",
            "cut_on", "cut_x", "cut_y")


def draw(seed: int, stream: int, counter: int, first: int, n: int, device=None) -> dict[str, torch.Tensor]:
    """Columns of ``UNIFORMS`` for samples first .. first + n - 1, drawn on the CPU, moved in one copy."""
    u = torch.empty(n, len(UNIFORMS))
    for i in range(n):
        u[i] = torch.rand(len(UNIFORMS), generator=sample_generator(seed, stream, counter, first + i))
    return dict(zip(UNIFORMS, u.to(device).unbind(1)))


def _where(on: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(on[:, None, None, None], new, old)  # exact pass-through for samples it skips


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[n, :, i, j] = x[n, :, i - dy_n, j - dx_n], zero outside."""
    N, C, H, W = x.shape
    rows = torch.arange(H, device=x.device)[None] - dy[:, None]  # (N, H)
    cols = torch.arange(W, device=x.device)[None] - dx[:, None]  # (N, W)
    out = x.gather(2, rows.clamp(0, H - 1)[:, None, :, None].expand(N, C, H, W))
    out = out.gather(3, cols.clamp(0, W - 1)[:, None, None, :].expand(N, C, H, W))
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    return out * inside[:, None].to(x.dtype)


def _cutout_mask(cy: torch.Tensor, cx: torch.Tensor, H: int, W: int, size: tuple[int, int], device) -> torch.Tensor:
    """(N, 1, H, W): 0 on rows [cy - size/2, cy - size/2 + size) x the same for columns, 1 elsewhere."""
    top, left = cy - size[0] // 2, cx - size[1] // 2
    r = torch.arange(H, device=device)[None]
    c = torch.arange(W, device=device)[None]
    in_r = (r >= top[:, None]) & (r < top[:, None] + size[0])
    in_c = (c >= left[:, None]) & (c < left[:, None] + size[1])
    return (~(in_r[:, :, None] & in_c[:, None, :]))[:, None]


def diffaugment(x: torch.Tensor, p: float, seed: int, stream: int, counter: int, first_index: int,
                translation: float = 0.125, cutout: float = 0.5) -> torch.Tensor:
    """Augment the (n, C, H, W) batch whose first row is global sample ``first_index``."""
    if p == 0:
        return x
    N, _, H, W = x.shape
    d = draw(seed, stream, counter, first_index, N, x.device)
    on = {k: d[k + "_on"] < p for k in ("bright", "sat", "contrast", "shift", "cut")}
    with torch.autocast(x.device.type, enabled=False):
        y = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = _where(on["bright"], y + (d["bright"].to(y.dtype) - 0.5)[:, None, None, None], y)
        mean = y.mean(dim=1, keepdim=True)
        y = _where(on["sat"], (y - mean) * (d["sat"].to(y.dtype) * 2)[:, None, None, None] + mean, y)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = _where(on["contrast"], (y - mean) * (d["contrast"].to(y.dtype) + 0.5)[:, None, None, None] + mean, y)
        sy, sx = int(H * translation + 0.5), int(W * translation + 0.5)
        dy = (d["shift_y"] * (2 * sy + 1)).long().clamp(max=2 * sy) - sy  # uniform integer in [-sy, sy]
        dx = (d["shift_x"] * (2 * sx + 1)).long().clamp(max=2 * sx) - sx
        y = _where(on["shift"], _shift(y, dy, dx), y)
        size = (int(H * cutout + 0.5), int(W * cutout + 0.5))
        span_y, span_x = H + (1 - size[0] % 2), W + (1 - size[1] % 2)  # DiffAugment's range of centres
        cy = (d["cut_y"] * span_y).long().clamp(max=span_y - 1)
        cx = (d["cut_x"] * span_x).long().clamp(max=span_x - 1)
        y = _where(on["cut"], y * _cutout_mask(cy, cx, H, W, size, x.device).to(y.dtype), y)
    return y.to(x.dtype)
