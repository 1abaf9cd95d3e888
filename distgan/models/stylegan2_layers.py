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


def clamp(x: torch.Tensor, limit: float | None) -> torch.Tensor:
    """NVIDIA's ``conv_clamp``: conv outputs clipped to +-limit after bias, activation and gain (None: no clamp;
    StyleGAN2-ADA's pickles use 256, a guard for its fp16 layers)."""
    return x if limit is None else x.clamp(-limit, limit)


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
    output (sqrt(0.5) for both branches of a residual D block), which is then clamped to +-conv_clamp * gain."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True, activation: bool = True,
                 down: bool = False, gain: float = 1.0, conv_clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_gain = 1 / math.sqrt(c_in * kernel * kernel)
        self.kernel, self.activation, self.down, self.gain = kernel, activation, down, gain
        self.conv_clamp = None if conv_clamp is None else conv_clamp * gain

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
        return clamp(lrelu(x, self.gain) if self.activation else x * self.gain, self.conv_clamp)


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


def fused_now(layer: nn.Module) -> bool:
    """A layer's ``fused`` setting, where None (``model.fused_modconv=auto``) is NVIDIA's rule: the shared conv
    while training (faster forward and backward for a training batch), the grouped conv in eval mode (sampling,
    evaluation, projection). Both are the same function (modulated_conv2d)."""
    return (not layer.training) if layer.fused is None else layer.fused


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + per-pixel noise with a learned strength + bias + leaky ReLU
    (+ NVIDIA's ``conv_clamp``).

    ``noise=None`` uses the constant noise map ``noise_const`` (r, r): a buffer saved in the state dict
    (NVIDIA's pickles carry theirs), initialised from a fixed seed so every run and rank starts with the
    same one; for sampling and evaluation. Training passes noise drawn per sample
    (:mod:`distgan.models.stylegan2_draws`). A state dict saved before noise_const was saved (distgan
    checkpoints before issue 21) lacks it: loading fills it by that same seeded rule, which is what those
    checkpoints used."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, resolution: int, up: bool = False,
                 fused: bool | None = None, noise_seed: int = 0, conv_clamp: float | None = None):
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.resolution, self.up, self.fused, self.conv_clamp = resolution, up, fused, conv_clamp
        self.noise_seed = noise_seed
        self.register_buffer("noise_const", seeded_noise(resolution, noise_seed))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "noise_const"
        if key not in state_dict:  # an older distgan checkpoint: the map it used, by the seeded rule
            state_dict[key] = seeded_noise(self.resolution, self.noise_seed)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, fused=fused_now(self))
        noise = self.noise_const if noise is None else noise
        x = x + (noise * self.noise_strength).to(x.dtype)
        return clamp(lrelu(x + self.bias.to(x.dtype)[None, :, None, None]), self.conv_clamp)


def seeded_noise(resolution: int, seed: int) -> torch.Tensor:
    """The constant noise map a new SynthesisLayer starts with (and every distgan checkpoint before the map
    was saved used): N(0, 1) from torch's CPU generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, resolution, resolution, generator=g).reshape(resolution, resolution)


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation (its weight gain goes into the styles) + bias, linear."""

    def __init__(self, c_in: int, img_channels: int, w_dim: int, fused: bool | None = None,
                 conv_clamp: float | None = None):
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, c_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain, self.fused, self.conv_clamp = 1 / math.sqrt(c_in), fused, conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_now(self))
        return clamp(x + self.bias.to(x.dtype)[None, :, None, None], self.conv_clamp)


class MinibatchStd(nn.Module):
    """Appends the standard deviation over a group of samples, averaged over channels and pixels, as
    ``num_channels`` extra feature maps (Karras et al. 2018).

    Groups are STRIDED as in StyleGAN2-ADA: within each run of ``span`` consecutive samples, sample j is
    grouped with j + span/G, j + 2 span/G, ... (NVIDIA's span is its per-GPU batch). ``span=None`` is
    ``group_size``: contiguous groups of G, the same on any number of workers (ranks own contiguous slices
    of the global batch). A span set to the per-worker micro-batch of the run being matched gives NVIDIA's
    groups exactly; it must divide every batch D sees."""

    def __init__(self, group_size: int = 4, num_channels: int = 1, span: int | None = None):
        super().__init__()
        if span is not None and (span <= 0 or span % group_size):
            raise ValueError(f"minibatch-std span {span} must be a positive multiple of the group size {group_size}")
        self.group_size, self.num_channels, self.span = group_size, num_channels, span or group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G, F_, S = self.group_size, self.num_channels, self.span
        if N % S:
            what = "group size" if S == G else f"span {S} (groups of {G})"
            raise ValueError(f"D's minibatch-std {what} must divide the per-worker batch, got {N}")
        y = x.float().reshape(N // S, G, S // G, F_, C // F_, H, W)  # sample g * S/G + m of a run: group m
        y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)  # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=(3, 4, 5))  # (N/S, S/G, F): std averaged over channels and pixels
        y = y[:, None].expand(-1, G, -1, -1).reshape(N, F_)[:, :, None, None].expand(N, F_, H, W)
        return torch.cat([x, y.to(x.dtype)], dim=1)
