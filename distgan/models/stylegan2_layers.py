"""StyleGAN2's layers (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Equalised learning rate (Karras et al. 2018): every weight is stored as N(0, 1) / lr_mul and scaled by
lr_mul / sqrt(fan_in) at run time, so Adam's per-parameter step moves every layer at the same relative
speed; ``lr_mul`` (0.01 in the mapping network) slows a layer down. Leaky ReLU (0.2) is followed by a gain
of sqrt(2) so that activations keep unit variance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distgan.models import fir

LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * (LRELU_GAIN * gain)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit mean square (StyleGAN's "pixel norm" of z and of the label embedding)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain, self.bias_gain = lr_mul / math.sqrt(in_features), lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Conv with equalised lr, optional [1,3,3,1] 2x downsampling, optional leaky ReLU; ``gain`` scales the
    output (sqrt(0.5) for both branches of a residual D block)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True, activation: bool = True,
                 down: bool = False, gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_gain = 1 / math.sqrt(c_in * kernel * kernel)
        self.kernel, self.activation, self.down, self.gain = kernel, activation, down, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        if self.down and self.kernel == 1:
            x = F.conv2d(fir.downsample2d(x), w)  # a 1x1 conv commutes with the filter: filter the cheap side
        elif self.down:
            # blur with padding 2 (H -> H + 1), then a stride-2 valid conv (-> H / 2), as StyleGAN2
            x = F.conv2d(fir.blur(x, (2, 2)), w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.kernel // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)[None, :, None, None]
        return lrelu(x, self.gain) if self.activation else x * self.gain


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, fused: bool = True) -> torch.Tensor:
    """StyleGAN2's weight (de)modulation: w'_ijk = s_i w_ijk, divided by sqrt(sum_ik w'^2) when demodulating,
    which keeps unit-variance inputs at unit-variance outputs without instance norm's droplet artefacts.

    ``fused``: one grouped conv with a per-sample weight (groups = N); otherwise the input is scaled by the
    styles, convolved with the shared weight and the output scaled by the demodulation coefficients —
    the same function (StyleGAN2's two code paths), the second often faster for large batches.
    ``up``: transposed conv with stride 2, then the [1,3,3,1] filter with gain 4 (2H -> 2H exactly).
    Styles and coefficients are computed in fp32 (squares of bf16 lose too much), the convs may autocast.
    """
    N, c_in, H, W = x.shape
    c_out, _, k, _ = weight.shape
    styles = styles.float() if styles.dtype in (torch.float16, torch.bfloat16) else styles
    dcoefs = None
    if demodulate:  # sum_ik (s_i w_ojk)^2 = sum_i s_i^2 (sum_k w_oik^2)
        dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()  # (N, c_out)
    if fused:
        w = weight[None] * styles[:, None, :, None, None]  # (N, c_out, c_in, k, k)
        if dcoefs is not None:
            w = w * dcoefs[:, :, None, None, None]
        x = x.reshape(1, N * c_in, H, W)
        if up:
            w = w.transpose(1, 2).reshape(N * c_in, c_out, k, k)
            x = F.conv_transpose2d(x, w.to(x.dtype), stride=2, groups=N)
        else:
            x = F.conv2d(x, w.reshape(N * c_out, c_in, k, k).to(x.dtype), padding=k // 2, groups=N)
        x = x.reshape(N, c_out, *x.shape[2:])
    else:
        x = x * styles.to(x.dtype)[:, :, None, None]
        if up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=k // 2)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype)[:, :, None, None]
    if up:  # (H - 1) * 2 + 3 = 2H + 1 -> filter with padding 1 -> 2H
        x = fir.blur(x, (1, 1), gain=4.0)
    return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + per-pixel noise with a learned strength + bias + leaky ReLU.

    ``noise=None`` uses a constant noise map (``noise_const``, drawn once from a fixed seed, so every run
    and rank holds the same one): for sampling and evaluation. Training passes noise drawn per sample
    (:mod:`distgan.models.stylegan2_draws`)."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, resolution: int, up: bool = False, fused: bool = True,
                 noise_seed: int = 0):
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.resolution, self.up, self.fused = resolution, up, fused
        const = torch.randn(1, 1, resolution, resolution, generator=torch.Generator().manual_seed(noise_seed))
        # not persistent: rebuilt identically from the seed, so checkpoints stay small
        self.register_buffer("noise_const", const, persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, fused=self.fused)
        noise = self.noise_const if noise is None else noise
        x = x + (noise * self.noise_strength).to(x.dtype)
        return lrelu(x + self.bias.to(x.dtype)[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation (its weight gain goes into the styles) + bias, linear."""

    def __init__(self, c_in: int, img_channels: int, w_dim: int, fused: bool = True):
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, c_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain, self.fused = 1 / math.sqrt(c_in), fused

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=self.fused)
        return x + self.bias.to(x.dtype)[None, :, None, None]


class MinibatchStd(nn.Module):
    """Appends the standard deviation over a group of samples, averaged over channels and pixels, as
    ``num_channels`` extra feature maps (Karras et al. 2018).

    Groups are CONTIGUOUS runs of ``group_size`` samples (StyleGAN2-ADA strides them across the local
    batch instead). Ranks own contiguous slices of the global batch, so with contiguous groups a sample's
    group is the same whatever the world size — strided groups would change with the per-rank batch."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G, F_ = self.group_size, self.num_channels
        if N % G:
            raise ValueError(f"D's minibatch-std group size {G} must divide the per-worker batch, got {N}")
        y = x.float().reshape(N // G, G, F_, C // F_, H, W)
        y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)  # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # (N/G, F): std averaged over channels and pixels
        y = y.repeat_interleave(G, dim=0)[:, :, None, None].expand(N, F_, H, W)
        return torch.cat([x, y.to(x.dtype)], dim=1)
