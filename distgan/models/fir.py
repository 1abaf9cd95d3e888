"""StyleGAN2's [1, 3, 3, 1] FIR resampling (Karras et al. 2020, after Zhang 2019) in plain torch ops.

The 2D kernel is the outer product of [1, 3, 3, 1] / 8 with itself (sums to 1). Every op here is a depthwise
convolution, so autograd (including double backward for R1) and autocast work as for any conv.

- :func:`upsample2d`: 2x zero-insertion followed by the kernel (gain 4, so a constant image stays constant).
  As one ``conv_transpose2d`` with stride 2 and padding 1: for a symmetric kernel this is exactly
  zero-insertion, padding (2, 1) and filtering (StyleGAN2's ``upsample2d``).
- :func:`downsample2d`: the kernel with padding 1, then every second pixel (one strided depthwise conv).
- :func:`blur`: the kernel alone with explicit padding (around a strided or transposed conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TAPS = (1.0, 3.0, 3.0, 1.0)


_CACHE: dict = {}


def kernel(channels: int, device, dtype, gain: float = 1.0) -> torch.Tensor:
    """The depthwise ``(channels, 1, 4, 4)`` weight: outer([1,3,3,1]) / 64 * gain. Cached per device, dtype
    and gain: building it from Python numbers would copy host -> GPU at every call."""
    key = (torch.device(device), dtype, gain)
    if key not in _CACHE:
        f = torch.tensor(_TAPS, dtype=torch.float64)
        _CACHE[key] = (torch.outer(f, f) / f.sum() ** 2 * gain).to(device, dtype)
    return _CACHE[key].expand(channels, 1, 4, 4)


def blur(x: torch.Tensor, pad: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """Filter with zero padding ``pad = (before, after)`` on both axes: H -> H + before + after - 3."""
    c = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, kernel(c, x.device, x.dtype, gain), groups=c)


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2H, 2W)."""
    c = x.shape[1]
    return F.conv_transpose2d(x, kernel(c, x.device, x.dtype, 4.0), stride=2, padding=1, groups=c)


def downsample2d(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H/2, W/2)."""
    c = x.shape[1]
    return F.conv2d(F.pad(x, [1, 1, 1, 1]), kernel(c, x.device, x.dtype), stride=2, groups=c)
