"""ADA's ``bgc`` pipeline (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"):
pixel blitting (x-flip, 90-degree rotations, integer translation), general geometric transforms (isotropic
scaling, pre-rotation, anisotropic scaling, post-rotation, fractional translation) and colour transforms
(brightness, contrast, luma flip, hue rotation, saturation), each applied to a sample with probability
p times its multiplier, with StyleGAN2-ADA's strengths (:class:`ADASpec`).

Randomness: sample ``i`` draws a fixed vector of 21 uniforms and 7 normals from its own generator seeded by
(seed, stream, counter, i) — drawn whatever p is, so p only changes which transforms fire — hence a
sample is augmented identically on 1 worker or on W, and whatever batch it shares.

Geometry: the per-sample inverse 3x3 matrices (output pixel -> input pixel, centred pixel coordinates) are
composed on the CPU in float64 and applied once with ``affine_grid`` + ``grid_sample`` (bilinear,
``padding_mode="reflection"``, ``align_corners=False``). Reflection, like ADA's reflect padding, keeps
borders free of black wedges that would tell D an image was transformed; doing it inside grid_sample needs
no padding margin, whereas ADA pads by the batch's largest margin, which would tie a sample's result to its
batch. ADA also resamples at 2x through a 12-tap wavelet filter to limit blur and aliasing; plain bilinear
sampling blurs fractional transforms slightly, the same on reals and fakes. Samples whose matrix is the
identity are passed through untouched, so p = 0 and non-firing samples are exact.

Colour: per-sample 4x4 matrices on (r, g, b, 1); on 1-channel images the rows are averaged as in ADA.
Images are expected in [-1, 1]. All arithmetic runs in fp32, outside autocast; the result is
differentiable w.r.t. the input (including the double backward R1 needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distgan.rng import sample_generator


@dataclass(frozen=True)
class ADASpec:
    """Probability multipliers (1 = on) and strengths: StyleGAN2-ADA's ``bgc`` with its default strengths."""

    xflip: float = 1.0
    rotate90: float = 1.0
    xint: float = 1.0
    xint_max: float = 0.125  # fraction of the image size
    scale: float = 1.0
    rotate: float = 1.0
    aniso: float = 1.0
    xfrac: float = 1.0
    scale_std: float = 0.2  # log2
    rotate_max: float = 1.0  # 1 = full circle
    aniso_std: float = 0.2  # log2
    xfrac_std: float = 0.125  # fraction of the image size
    brightness: float = 1.0
    contrast: float = 1.0
    lumaflip: float = 1.0
    hue: float = 1.0
    saturation: float = 1.0
    brightness_std: float = 0.2
    contrast_std: float = 0.5  # log2
    hue_max: float = 1.0  # 1 = full circle
    saturation_std: float = 1.0  # log2


BGC = ADASpec()
# per-sample draw layout: one name per column ("_on" columns decide whether a transform fires)
UNIFORMS = ("xflip_on", "xflip", "rot90_on", "rot90", "xint_on", "xint_x", "xint_y", "scale_on", "prerot_on",
            "prerot", "aniso_on", "postrot_on", "postrot", "xfrac_on", "bright_on", "contrast_on", "luma_on",
            "luma", "hue_on", "hue", "sat_on")
NORMALS = ("scale", "aniso", "xfrac_x", "xfrac_y", "bright", "contrast", "sat")


def draw(seed: int, stream: int, counter: int, first: int, n: int) -> dict[str, torch.Tensor]:
    """Columns of ``UNIFORMS`` (U[0, 1)) and ``NORMALS`` (N(0, 1)) for samples first .. first + n - 1 (CPU,
    float64)."""
    u, g = torch.empty(n, len(UNIFORMS)), torch.empty(n, len(NORMALS))
    for i in range(n):
        gen = sample_generator(seed, stream, counter, first + i)
        u[i] = torch.rand(len(UNIFORMS), generator=gen)
        g[i] = torch.randn(len(NORMALS), generator=gen)
    cols = dict(zip(UNIFORMS, u.double().unbind(1)))
    cols.update(zip(NORMALS, g.double().unbind(1)))
    return cols


def _mat(rows: list[list]) -> torch.Tensor:
    """(n, k, k) from a k x k nested list of (n,) tensors and numbers."""
    n = next(v.shape[0] for row in rows for v in row if torch.is_tensor(v))
    return torch.stack([torch.stack([v if torch.is_tensor(v) else torch.full((n,), float(v), dtype=torch.float64)
                                     for v in row], -1) for row in rows], -2)


def translate2d(tx, ty):
    return _mat([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scale2d(sx, sy):
    return _mat([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotate2d(theta):
    return _mat([[theta.cos(), -theta.sin(), 0], [theta.sin(), theta.cos(), 0], [0, 0, 1]])


def geometric_matrices(d: dict, p: float, height: int, width: int, spec: ADASpec = BGC) -> torch.Tensor:
    """(n, 3, 3) float64: G_inv maps an output pixel (x, y, 1), centred on the image, to the input pixel it
    reads. Transforms compose in ADA's order; each multiplies G_inv by its own inverse on the right."""
    zero = torch.zeros_like(d["xflip"])
    one = torch.ones_like(zero)

    def fire(col, mult, value, neutral):
        return torch.where(d[col] < mult * p, value, neutral)

    flip = fire("xflip_on", spec.xflip, torch.floor(d["xflip"] * 2), zero)
    G = scale2d(1 - 2 * flip, one)
    quarter = fire("rot90_on", spec.rotate90, torch.floor(d["rot90"] * 4), zero)
    G = G @ rotate2d(math.pi / 2 * quarter)
    tx = fire("xint_on", spec.xint, (d["xint_x"] * 2 - 1) * spec.xint_max, zero)
    ty = fire("xint_on", spec.xint, (d["xint_y"] * 2 - 1) * spec.xint_max, zero)
    G = G @ translate2d(-torch.round(tx * width), -torch.round(ty * height))
    s = fire("scale_on", spec.scale, torch.exp2(d["scale"] * spec.scale_std), one)
    G = G @ scale2d(1 / s, 1 / s)
    p_rot = 1 - math.sqrt(min(max(1 - spec.rotate * p, 0.0), 1.0))  # P(pre or post rotation) = rotate * p
    theta = torch.where(d["prerot_on"] < p_rot, (d["prerot"] * 2 - 1) * math.pi * spec.rotate_max, zero)
    G = G @ rotate2d(theta)
    s = fire("aniso_on", spec.aniso, torch.exp2(d["aniso"] * spec.aniso_std), one)
    G = G @ scale2d(1 / s, s)
    theta = torch.where(d["postrot_on"] < p_rot, (d["postrot"] * 2 - 1) * math.pi * spec.rotate_max, zero)
    G = G @ rotate2d(theta)
    tx = fire("xfrac_on", spec.xfrac, d["xfrac_x"] * spec.xfrac_std, zero)
    ty = fire("xfrac_on", spec.xfrac, d["xfrac_y"] * spec.xfrac_std, zero)
    return G @ translate2d(-tx * width, -ty * height)


_LUMA = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(3)  # the grey axis


def rotate3d(axis: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(n, 4, 4) rotation by theta about a unit 3-vector (Rodrigues), on homogeneous colours."""
    vx, vy, vz = (float(a) for a in axis[:3])
    s, c = theta.sin(), theta.cos()
    cc = 1 - c
    return _mat([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                 [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                 [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                 [0, 0, 0, 1]])


def colour_matrices(d: dict, p: float, spec: ADASpec = BGC) -> torch.Tensor:
    """(n, 4, 4) float64 acting on (r, g, b, 1); each transform multiplies on the left."""
    zero = torch.zeros_like(d["bright"])
    one = torch.ones_like(zero)
    eye = torch.eye(4, dtype=torch.float64)
    vv = torch.outer(_LUMA, _LUMA)
    b = torch.where(d["bright_on"] < spec.brightness * p, d["bright"] * spec.brightness_std, zero)
    C = _mat([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]])
    c = torch.where(d["contrast_on"] < spec.contrast * p, torch.exp2(d["contrast"] * spec.contrast_std), one)
    C = _mat([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]]) @ C
    flip = torch.where(d["luma_on"] < spec.lumaflip * p, torch.floor(d["luma"] * 2), zero)
    C = (eye - 2 * vv * flip[:, None, None]) @ C  # Householder reflection of the grey axis
    theta = torch.where(d["hue_on"] < spec.hue * p, (d["hue"] * 2 - 1) * math.pi * spec.hue_max, zero)
    C = rotate3d(_LUMA, theta) @ C
    s = torch.where(d["sat_on"] < spec.saturation * p, torch.exp2(d["sat"] * spec.saturation_std), one)
    sat = vv + (eye - vv) * s[:, None, None]
    sat[:, 3, 3] = 1.0  # keep the homogeneous coordinate
    return sat @ C


def _changed(M: torch.Tensor) -> torch.Tensor:
    """Indices of the samples whose matrix is not exactly the identity."""
    return (M != torch.eye(M.shape[-1], dtype=M.dtype)).flatten(1).any(1).nonzero().flatten()


def apply_geometric(x: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """Resample each image by its (n, 3, 3) pixel-space G_inv (bilinear, reflected borders)."""
    idx = _changed(G_inv)
    if idx.numel() == 0:
        return x
    N, C, H, W = x.shape
    to_norm = torch.diag(torch.tensor([2 / W, 2 / H, 1.0], dtype=torch.float64))  # pixels -> [-1, 1]
    theta = to_norm @ G_inv[idx] @ torch.linalg.inv(to_norm)
    idx = idx.to(x.device)
    sub = x.index_select(0, idx)
    grid = F.affine_grid(theta[:, :2].to(x.device, x.dtype), list(sub.shape), align_corners=False)
    out = F.grid_sample(sub, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x.index_copy(0, idx, out)


def apply_colour(x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    idx = _changed(C)
    if idx.numel() == 0:
        return x
    M = C[idx].to(x.device, x.dtype)
    idx = idx.to(x.device)
    sub = x.index_select(0, idx)
    n, c, H, W = sub.shape
    if c == 3:
        out = (M[:, :3, :3] @ sub.reshape(n, 3, H * W) + M[:, :3, 3:]).reshape(sub.shape)
    elif c == 1:
        grey = M[:, :3, :].mean(dim=1)  # (n, 4): average of the r, g, b rows, as ADA
        out = sub * grey[:, :3].sum(1)[:, None, None, None] + grey[:, 3][:, None, None, None]
    else:
        raise ValueError(f"ADA's colour transforms need 1 or 3 channels, got {c}")
    return x.index_copy(0, idx, out)


def ada_augment(x: torch.Tensor, p: float, seed: int, stream: int, counter: int, first_index: int,
                spec: ADASpec = BGC) -> torch.Tensor:
    """Augment the (n, C, H, W) batch whose first row is global sample ``first_index``. p = 0: x itself."""
    if p == 0:
        return x
    d = draw(seed, stream, counter, first_index, x.shape[0])
    with torch.autocast(x.device.type, enabled=False):
        y = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = apply_geometric(y, geometric_matrices(d, p, x.shape[2], x.shape[3], spec))
        y = apply_colour(y, colour_matrices(d, p, spec))
    return y.to(x.dtype)
