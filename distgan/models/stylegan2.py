"""StyleGAN2 config F (Karras et al. 2020) with StyleGAN2-ADA's channel plans (Karras et al. 2020b), pure torch.

G = mapping network (z, optional label -> w, ``mapping_layers`` equalised FC layers with lr multiplier 0.01)
+ synthesis network (a learned 4x4 constant, per resolution two modulated/demodulated 3x3 convs with
per-pixel noise, the first of them 2x up, and a toRGB whose outputs are upsampled and summed: the "skip"
generator). D = residual blocks ([1,3,3,1] down) + an epilogue with minibatch standard deviation, a 3x3 conv
and two FC layers; conditional D projects onto the label mapped by its own mapping network (StyleGAN2-ADA).

Interface: ``G(z, y=None, noise=None, mixing=None, ...) -> (N, C, H, W)``, ``D(x, y=None) -> (N,)``.
Training passes ``noise`` (one (N, 1, r, r) map per entry of ``G.noise_resolutions``) and ``mixing`` = (z2,
cutoff) drawn per global sample index (:mod:`distgan.models.stylegan2_draws`); without them G uses its
constant noise and no mixing (sampling, evaluation). ``return_ws=True`` also returns the (mixed) w's that
the synthesis network consumed, for the path-length penalty (:mod:`distgan.regularizers`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distgan.errors import UserError
from distgan.models.conditional import cyclic_labels
from distgan.models.fir import upsample2d
from distgan.models.stylegan2_layers import (
    EqualConv2d,
    EqualLinear,
    MinibatchStd,
    SynthesisLayer,
    ToRGB,
    normalize_2nd_moment,
)

SIZES = tuple(32 << i for i in range(6))  # 32 .. 1024
D_MAPPING_LAYERS = 8  # the conditional D's label mapping depth: StyleGAN2-ADA's default, whatever G's


def check_shape(resolution: int, channels: int) -> None:
    if resolution < 32 or resolution > 1024 or resolution & (resolution - 1):
        raise UserError(f"model=stylegan2 needs a power-of-two resolution from 32 to 1024, got {resolution}; "
                        "set model.resolution (and dataset.resolution) to 32, 64, ..., 1024")
    if channels not in (1, 3):
        raise UserError(f"model=stylegan2 needs 1- or 3-channel images, got {channels}")


def auto_channel_base(resolution: int) -> int:
    """StyleGAN2-ADA's ``auto``/``paper256`` plans: 16384 below 512 px (half width), 32768 (config F) from 512."""
    return 32768 if resolution >= 512 else 16384


def channel_plan(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Feature maps per resolution: min(channel_base / res, channel_max), for 4, 8, ..., resolution."""
    return {4 << i: min(channel_base // (4 << i), channel_max) for i in range(int(math.log2(resolution)) - 1)}


class MappingNetwork(nn.Module):
    """z (and a label) -> w, broadcast to ``num_ws`` copies (None: one (N, w_dim) row, for D's labels).

    The label is one-hot -> equalised FC (= an embedding) -> normalised, concatenated to the normalised z.
    ``w_avg`` tracks the mean w (decay ``w_avg_beta``) for truncation. Calls with ``update_w_avg=True`` only
    accumulate their w's; :meth:`flush_w_avg` (every rank, once per D step, after its micro-batches) moves
    w_avg once towards the mean over the GLOBAL batch (all-reduced), so every rank, world size and
    micro-batch split holds the same w_avg. StyleGAN2-ADA moves it per call from the local batch instead.
    """

    def __init__(self, z_dim: int, w_dim: int, num_ws: int | None, num_classes: int = 0, num_layers: int = 8,
                 lr_mul: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_classes = z_dim, w_dim, num_ws, num_classes
        self.embed = EqualLinear(num_classes, w_dim) if num_classes else None
        dims = [z_dim + (w_dim if num_classes else 0)] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=lr_mul, activation=True)
                                      for a, b in zip(dims[:-1], dims[1:])])
        self.w_avg_beta = w_avg_beta
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))
        self._w_sum, self._w_count = None, 0  # accumulated since the last flush (not state: flushed every step)

    def forward(self, z: torch.Tensor | None, y: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        parts = [normalize_2nd_moment(z)] if self.z_dim else []
        if self.num_classes:
            onehot = F.one_hot(y, self.num_classes).to(self.embed.weight.dtype)
            parts.append(normalize_2nd_moment(self.embed(onehot)))
        w = self.layers(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        if update_w_avg:
            w_sum = w.detach().float().sum(0)
            self._w_sum = w_sum if self._w_sum is None else self._w_sum + w_sum
            self._w_count += w.shape[0]
        if self.num_ws is None:
            return w
        ws = w[:, None].expand(-1, self.num_ws, -1)
        if truncation_psi != 1:  # psi = 1: w itself, nothing to compute
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            layers = (torch.arange(self.num_ws, device=w.device) < cut)[None, :, None]
            ws = torch.where(layers, self.w_avg.to(ws.dtype).lerp(ws, truncation_psi), ws)
        return ws

    @torch.no_grad()
    def flush_w_avg(self) -> None:
        """w_avg <- lerp(global mean of the accumulated w's, w_avg, beta). A collective: every rank calls it."""
        if self._w_sum is None:
            w_sum = self.w_avg.new_zeros(self.w_dim)  # a rank with nothing to add still joins the all-reduce
        else:
            w_sum = self._w_sum
        stats = torch.cat([w_sum, w_sum.new_full((1,), self._w_count)])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        self._w_sum, self._w_count = None, 0
        moved = (stats[:-1] / stats[-1].clamp(min=1)).lerp(self.w_avg, self.w_avg_beta)
        self.w_avg.copy_(torch.where(stats[-1] > 0, moved, self.w_avg))  # no host sync


class SynthesisBlock(nn.Module):
    """One resolution: (const | 2x-up conv) -> conv -> toRGB, added to the upsampled image so far."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, resolution: int, img_channels: int, fused: bool | None,
                 conv_clamp: float | None = None):
        super().__init__()
        self.first = c_in == 0
        seed = 2 * int(math.log2(resolution))  # distinct constant-noise seeds per layer
        if self.first:
            self.const = nn.Parameter(torch.randn(c_out, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(c_in, c_out, w_dim, resolution, up=True, fused=fused, noise_seed=seed,
                                        conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(c_out, c_out, w_dim, resolution, fused=fused, noise_seed=seed + 1,
                                    conv_clamp=conv_clamp)
        self.torgb = ToRGB(c_out, img_channels, w_dim, fused=fused, conv_clamp=conv_clamp)
        self.num_conv = 1 if self.first else 2

    def forward(self, x, img, ws, noise):
        """``ws``: (N, num_conv + 1, w_dim) — the toRGB's w is the next block's first (StyleGAN2's layout)."""
        if self.first:
            x = self.conv1(self.const.to(ws.dtype)[None].expand(ws.shape[0], -1, -1, -1), ws[:, 0], noise[0])
        else:
            x = self.conv1(self.conv0(x, ws[:, 0], noise[0]), ws[:, 1], noise[1])
        y = self.torgb(x, ws[:, self.num_conv])
        return x, (y if img is None else upsample2d(img).to(y.dtype) + y)


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, resolution: int, img_channels: int, channels: dict[int, int], fused: bool | None,
                 conv_clamp: float | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(
            [SynthesisBlock(channels.get(r // 2, 0) if r > 4 else 0, channels[r], w_dim, r, img_channels, fused,
                            conv_clamp) for r in channels])
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1
        self.noise_resolutions = [r for r, b in zip(channels, self.blocks) for _ in range(b.num_conv)]

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        if ws.shape[1] != self.num_ws:
            raise ValueError(f"synthesis expects {self.num_ws} w's per sample, got {ws.shape[1]}")
        if noise is None:
            noise = [None] * len(self.noise_resolutions)
        elif len(noise) != len(self.noise_resolutions):
            raise ValueError(f"synthesis expects {len(self.noise_resolutions)} noise maps, got {len(noise)}")
        x = img = None
        w_idx = n_idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise[n_idx:n_idx + block.num_conv])
            w_idx, n_idx = w_idx + block.num_conv, n_idx + block.num_conv
        return img


class StyleGAN2Generator(nn.Module):
    def __init__(self, resolution: int, channels: int = 3, channel_base: int | None = None,
                 channel_max: int = 512, mapping_layers: int = 8, z_dim: int = 512, w_dim: int = 512,
                 num_classes: int = 0, fused_modconv: bool | None = None, conv_clamp: float | None = None):
        super().__init__()
        check_shape(resolution, channels)
        plan = channel_plan(resolution, channel_base or auto_channel_base(resolution), channel_max)
        self.z_dim, self.w_dim, self.num_classes, self.resolution = z_dim, w_dim, num_classes, resolution
        self.synthesis = SynthesisNetwork(w_dim, resolution, channels, plan, fused_modconv, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, num_classes, mapping_layers)

    @property
    def noise_resolutions(self) -> list[int]:
        return self.synthesis.noise_resolutions

    def flush_w_avg(self) -> None:
        """Move w_avg by the w's of the calls made with ``update_w_avg=True`` (see :class:`MappingNetwork`)."""
        self.mapping.flush_w_avg()

    def map(self, z: torch.Tensor, y: torch.Tensor | None = None, mixing=None, truncation_psi: float = 1.0,
            truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        """(N, num_ws, w_dim). ``mixing`` = (z2, cutoff): layers >= cutoff[i] of sample i take w(z2[i])
        (cutoff = num_ws: no mixing). The second mapping never moves w_avg."""
        if self.num_classes and y is None:
            y = cyclic_labels(z.shape[0], self.num_classes, z.device)
        ws = self.mapping(z, y, truncation_psi, truncation_cutoff, update_w_avg)
        if mixing is not None:
            z2, cutoff = mixing
            ws2 = self.mapping(z2, y, truncation_psi, truncation_cutoff)
            later = torch.arange(self.num_ws, device=ws.device)[None, :] >= cutoff.to(ws.device)[:, None]
            ws = torch.where(later[:, :, None], ws2, ws)
        return ws

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, noise: list[torch.Tensor] | None = None,
                mixing=None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False, return_ws: bool = False):
        ws = self.map(z, y, mixing, truncation_psi, truncation_cutoff, update_w_avg)
        img = self.synthesis(ws, noise)
        return (img, ws) if return_ws else img


class DiscriminatorBlock(nn.Module):
    """Residual: (fromRGB) -> conv3 -> conv3 down, plus a 1x1 down skip; both branches scaled by sqrt(1/2)."""

    def __init__(self, c_tmp: int, c_out: int, img_channels: int, first: bool, conv_clamp: float | None = None):
        super().__init__()
        self.fromrgb = EqualConv2d(img_channels, c_tmp, 1, conv_clamp=conv_clamp) if first else None
        self.conv0 = EqualConv2d(c_tmp, c_tmp, 3, conv_clamp=conv_clamp)
        self.conv1 = EqualConv2d(c_tmp, c_out, 3, down=True, gain=math.sqrt(0.5), conv_clamp=conv_clamp)
        # NVIDIA's skip conv is built without conv_clamp: it is never clamped
        self.skip = EqualConv2d(c_tmp, c_out, 1, bias=False, activation=False, down=True, gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        return self.skip(x) + self.conv1(self.conv0(x))


class StyleGAN2Discriminator(nn.Module):
    """``mbstd_group`` (and ``mbstd_span``) must divide every batch D sees (per worker and micro-batch); see
    :class:`MinibatchStd`. Conditional (``num_classes`` > 0): logit = <out(x), mapping(y)> / sqrt(cmap_dim),
    cmap_dim = channels at 4x4, with a label mapping network of ``mapping_layers`` layers: 8 as StyleGAN2-ADA
    (its D mapping is built with no kwargs, whatever G's depth; :func:`build_stylegan2` always uses 8)."""

    def __init__(self, resolution: int, channels: int = 3, channel_base: int | None = None,
                 channel_max: int = 512, num_classes: int = 0, mapping_layers: int = D_MAPPING_LAYERS,
                 mbstd_group: int = 4, mbstd_channels: int = 1, conv_clamp: float | None = None,
                 mbstd_span: int | None = None):
        super().__init__()
        check_shape(resolution, channels)
        plan = channel_plan(resolution, channel_base or auto_channel_base(resolution), channel_max)
        self.num_classes, self.resolution = num_classes, resolution
        self.blocks = nn.Sequential(*[DiscriminatorBlock(plan[r], plan[r // 2], channels, first=r == resolution,
                                                         conv_clamp=conv_clamp)
                                      for r in sorted(plan, reverse=True) if r > 4])
        c4 = plan[4]
        self.mbstd = MinibatchStd(mbstd_group, mbstd_channels, mbstd_span)
        self.conv = EqualConv2d(c4 + mbstd_channels, c4, 3, conv_clamp=conv_clamp)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.cmap_dim = c4 if num_classes else 0
        self.out = EqualLinear(c4, self.cmap_dim or 1)
        self.mapping = (MappingNetwork(0, c4, None, num_classes, mapping_layers, w_avg_beta=None)
                        if num_classes else None)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(self.mbstd(self.blocks(x)))
        x = self.out(self.fc(x.flatten(1)))
        if self.mapping is None:
            return x.squeeze(1)
        if y is None:
            raise ValueError("a conditional StyleGAN2 D needs the labels y")
        cmap = self.mapping(None, y)
        return (x * cmap.to(x.dtype)).sum(dim=1) / math.sqrt(self.cmap_dim)


def build_stylegan2(cfg, shape: tuple[int, ...], num_classes: int = 0):
    """The registry's builder (distgan.models.MODELS): ``model.latent_dim`` is z's size; conditional models
    (``num_classes`` > 0) embed the label in the mapping network and project D's output on it."""
    channels, height = shape[0], shape[1]
    resolution = cfg.resolution or height
    if resolution != height:
        raise UserError(f"model.resolution={resolution} does not match the data ({height} px)")
    G = StyleGAN2Generator(resolution, channels, cfg.channel_base, cfg.channel_max, cfg.mapping_layers,
                           z_dim=cfg.latent_dim, w_dim=cfg.w_dim, num_classes=num_classes,
                           fused_modconv=None if cfg.fused_modconv == "auto" else bool(cfg.fused_modconv),
                           conv_clamp=cfg.conv_clamp)
    D = StyleGAN2Discriminator(resolution, channels, cfg.channel_base, cfg.channel_max, num_classes=num_classes,
                               mbstd_group=cfg.mbstd_group, conv_clamp=cfg.conv_clamp, mbstd_span=cfg.mbstd_span)
    return G, D


def check_stylegan2(cfg) -> None:
    """model=stylegan2's own rules (distgan.models.check has already checked the data size is in SIZES)."""
    from distgan import data

    m, size = cfg.model, data.resolution(cfg.dataset)
    if m.resolution is not None:
        if m.resolution not in SIZES:
            raise UserError(f"model.resolution={m.resolution} is not a power of two from 32 to 1024; "
                            "set model.resolution=null (the data's size) or 32, 64, ..., 1024")
        if m.resolution != size:
            raise UserError(f"model.resolution={m.resolution} does not match the data ({size} px): set "
                            f"dataset.resolution={m.resolution}, or model.resolution=null")
    if m.spectral_norm:
        raise UserError("model.spectral_norm applies to mlp, dcgan and resnet; StyleGAN2 uses equalised "
                        "learning rates instead: set model.spectral_norm=false")
    if m.norm_g != "none" or m.norm_d != "none":
        raise UserError("model=stylegan2 has no BatchNorm (demodulation instead): set model.norm_g=none "
                        "model.norm_d=none")
    if m.activation_g != "leaky_relu":
        raise UserError("model.activation_g applies to model=mlp; StyleGAN2 always uses leaky ReLU")
    if m.conv_clamp is not None and not m.conv_clamp > 0:
        raise UserError(f"model.conv_clamp must be positive (StyleGAN2-ADA uses 256) or null, got {m.conv_clamp}")
    # model.mbstd_span: a multiple of the group (distgan/config.py), dividing every micro-batch
    # (models.check_micro_batch, in the pre-flight's config checks)


def fill_noise_const(net: nn.Module, state_dict: dict) -> dict:
    """``state_dict`` with the constant noise maps a distgan checkpoint from before issue 21 lacks (it did not
    save them) filled in by the seeded rule those checkpoints used, so it passes an exact key comparison
    (checkpoint.check_architecture); ``load_state_dict`` fills them by itself. Other models: unchanged."""
    from distgan.models.stylegan2_layers import seeded_noise

    out = dict(state_dict)
    for name, m in net.named_modules():
        key = f"{name}.noise_const" if name else "noise_const"
        if isinstance(m, SynthesisLayer) and key not in out:
            out[key] = seeded_noise(m.resolution, m.noise_seed)
    return out
