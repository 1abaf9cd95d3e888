"""R3GAN's network (Huang et al., "The GAN is dead; long live the GAN! A Modern GAN Baseline", NeurIPS 2024),
in plain PyTorch, with the parameter and buffer names of brownvc/R3GAN (R3GAN/Networks.py) so its weights load.

No normalisation, no mapping network, no noise inputs. Both networks are stages of ConvNeXt-style residual
blocks ``x + conv1x1(act(conv3x3_grouped(act(conv1x1(x)))))`` (expansion ``model.expansion``, the stage's
cardinality as the groups of the 3x3), with a *biased* leaky ReLU 0.2 (a learned per-channel bias before the
activation, no output gain). Initialisation is "MSR" (He): N(0, gain / sqrt(fan_in)); inside a block the two
first layers get gain sqrt(2 / (1 + 0.2^2)) x L^(-1/4) with L the total number of blocks (the variance-scaling
parameter; 3 linear layers: exponent -1 / (2*3 - 2)), the last one gain 0, so each block starts as the identity.

- G: a 4x4 *generative basis* (a learned (C, 4, 4) tensor scaled per channel by a linear map of z, or of
  [z, embed(one-hot y)] when class-conditional), then per stage an interpolative 2x upsampling ([1,3,3,1]
  = [1,2,1] convolved with [1,1], gain 4) preceded by a 1x1 conv where the width changes, and the stage's blocks;
  a 1x1 conv to RGB at the end.
- D: a 1x1 conv from RGB, then per stage the blocks and a 2x downsampling (the same filter) followed by a
  1x1 conv where the width changes; the last stage ends in a 4x4 *discriminative basis* (a depthwise 4x4 conv
  and a linear map) to one logit, or, class-conditional, to an embedding projected on embed(one-hot y).

``model.widths``, ``model.cardinalities`` and ``model.blocks`` list G's stages from 4x4 up; D's are the same
lists reversed (R3GAN's train.py). ``model.bf16_stages`` = n computes the n highest-resolution stages of G and
D in bfloat16, as R3GAN's ``FP16Stages`` (its presets: 3 or 4; each such stage casts its input to bfloat16 and
its weights to the input's type, the others cast back to float32; G's output, and so its 8-bit images, are then
bfloat16 like R3GAN's). It is read from R3GAN's pickles, so their images are R3GAN's; the 4x4 stage (the
bases) always stays float32. ``train.precision=bf16`` (autocast) is the other way to train in bfloat16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distgan.errors import UserError
from distgan.models.conditional import cyclic_labels

ACT_GAIN = math.sqrt(2 / (1 + 0.2**2))  # the leaky ReLU 0.2's gain, used at initialisation only
FILTER = (1, 2, 1)  # R3GAN's resampling filter; convolved with [1, 1] for 2x resampling


def msr_init(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """N(0, gain / sqrt(fan_in)) weights (fan_in: input channels per group x kernel area), zero bias."""
    w = layer.weight
    fan_in = w.shape[1] * (w[0][0].numel() if w.dim() > 2 else 1)
    with torch.no_grad():
        if w.device.type != "meta":
            w.normal_(0.0, gain / math.sqrt(fan_in))
        if getattr(layer, "bias", None) is not None and w.device.type != "meta":
            layer.bias.zero_()
    return layer


def lowpass_kernel(taps=FILTER) -> torch.Tensor:
    """The normalised 2D kernel of a 2x resampler: outer(t, t) / sum with t = taps convolved with [1, 1]."""
    t = torch.tensor(taps, dtype=torch.float64)
    t = F.conv1d(F.pad(t.view(1, 1, -1), (1, 1)), torch.ones(1, 1, 2, dtype=torch.float64)).flatten()
    k = torch.outer(t, t)
    return (k / k.sum()).float()


class Convolution(nn.Module):
    """A bias-free conv (``Layer.weight``), MSR-initialised with ``gain``; "same" padding."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, gain: float = 1.0):
        super().__init__()
        self.Layer = msr_init(nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False),
                              gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.Layer  # its weight cast to the input's type: stages in bfloat16 (model.bf16_stages)
        return F.conv2d(x, conv.weight.to(x.dtype), padding=conv.padding, groups=conv.groups)


class BiasedActivation(nn.Module):
    """leaky_relu(x + b, 0.2), a learned per-channel bias ``Bias`` (zero at start)."""

    def __init__(self, channels: int):
        super().__init__()
        self.Bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if x.dim() > 2 else (1, -1)
        return F.leaky_relu(x + self.Bias.to(x.dtype).view(shape), 0.2)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, cardinality: int, expansion: int, scaling: int, kernel: int = 3):
        super().__init__()
        wide = channels * expansion
        gain = ACT_GAIN * scaling ** (-1 / (2 * 3 - 2))
        self.LinearLayer1 = Convolution(channels, wide, 1, gain=gain)
        self.LinearLayer2 = Convolution(wide, wide, kernel, groups=cardinality, gain=gain)
        self.LinearLayer3 = Convolution(wide, channels, 1, gain=0.0)
        self.NonLinearity1 = BiasedActivation(wide)
        self.NonLinearity2 = BiasedActivation(wide)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.LinearLayer2(self.NonLinearity1(self.LinearLayer1(x)))
        return x + self.LinearLayer3(self.NonLinearity2(y))


class Resampler(nn.Module):
    """Interpolative 2x up- or downsampling with the depthwise kernel ``Kernel`` (a buffer, as in R3GAN):
    up = zero insertion, padding (2, 1), the kernel x 4; down = padding (1, 1), the kernel, stride 2."""

    def __init__(self, up: bool):
        super().__init__()
        self.up = up
        self.register_buffer("Kernel", lowpass_kernel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = x.shape[1], self.Kernel.to(x.dtype)
        if self.up:
            w = (k * 4).expand(c, 1, *k.shape)
            return F.conv_transpose2d(x, w, stride=2, padding=1, groups=c)
        return F.conv2d(F.pad(x, [1, 1, 1, 1]), k.expand(c, 1, *k.shape), stride=2, groups=c)


class UpsampleLayer(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.Resampler = Resampler(up=True)
        if cin != cout:
            self.LinearLayer = Convolution(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.LinearLayer(x) if hasattr(self, "LinearLayer") else x
        return self.Resampler(x)


class DownsampleLayer(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.Resampler = Resampler(up=False)
        if cin != cout:
            self.LinearLayer = Convolution(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Resampler(x)
        return self.LinearLayer(x) if hasattr(self, "LinearLayer") else x


class GenerativeBasis(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.Basis = nn.Parameter(torch.empty(cout, 4, 4))
        if self.Basis.device.type != "meta":
            nn.init.normal_(self.Basis)
        self.LinearLayer = msr_init(nn.Linear(cin, cout, bias=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.Basis.view(1, -1, 4, 4) * self.LinearLayer(z).view(z.shape[0], -1, 1, 1)


class DiscriminativeBasis(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.Basis = msr_init(nn.Conv2d(cin, cin, 4, groups=cin, bias=False))
        self.LinearLayer = msr_init(nn.Linear(cin, cout, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LinearLayer(self.Basis(x).view(x.shape[0], -1))


class Stage(nn.Module):
    """``Layers``: G's transition then blocks; D's blocks then transition (R3GAN's Generator/DiscriminatorStage).
    ``dtype``: the type the stage computes in (its input cast to it, as R3GAN's ``DataType``); None: the input's."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.Layers = nn.ModuleList(layers)
        self.dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None:
            x = x.to(self.dtype)
        for layer in self.Layers:
            x = layer(x)
        return x


def set_bf16_stages(stages: nn.ModuleList, n: int, high_first: bool) -> None:
    """The ``n`` highest-resolution stages compute in bfloat16, the others in float32 (n = 0: no casts)."""
    if not n:
        return
    for i, stage in enumerate(stages):
        high = i < n if high_first else i >= len(stages) - n
        stage.dtype = torch.bfloat16 if high else torch.float32


def _blocks(width: int, card: int, n: int, expansion: int, scaling: int) -> list[nn.Module]:
    return [ResidualBlock(width, card, expansion, scaling) for _ in range(n)]


class R3Generator(nn.Module):
    """G(z) or G(z, y) -> (N, channels, R, R) with R = 4 x 2^(stages - 1)."""

    def __init__(self, latent_dim: int, widths, cards, blocks, expansion: int = 2, channels: int = 3,
                 num_classes: int = 0, embed_dim: int | None = None, bf16_stages: int = 0):
        super().__init__()
        scaling, embed = sum(blocks), (embed_dim or latent_dim) if num_classes else 0
        stages = [Stage([GenerativeBasis(latent_dim + embed, widths[0])]
                        + _blocks(widths[0], cards[0], blocks[0], expansion, scaling))]
        stages += [Stage([UpsampleLayer(widths[i - 1], widths[i])]
                         + _blocks(widths[i], cards[i], blocks[i], expansion, scaling)) for i in range(1, len(widths))]
        self.MainLayers = nn.ModuleList(stages)
        set_bf16_stages(self.MainLayers, bf16_stages, high_first=False)
        self.AggregationLayer = Convolution(widths[-1], channels, 1)
        self.num_classes, self.latent_dim = num_classes, latent_dim
        if num_classes:
            self.EmbeddingLayer = msr_init(nn.Linear(num_classes, embed, bias=False))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if y is None:  # callers that do not choose classes (metrics, sample.py): balanced
                y = cyclic_labels(z.shape[0], self.num_classes, z.device)
            z = torch.cat([z, self.EmbeddingLayer(_one_hot(y, self.num_classes, z.dtype))], dim=1)
        for stage in self.MainLayers:
            z = stage(z)
        return self.AggregationLayer(z)

    @property
    def output_dtype(self) -> torch.dtype | None:
        """bfloat16 when the last stage computes in it (8-bit images are then made in bfloat16, as R3GAN's)."""
        return self.MainLayers[-1].dtype


class R3Discriminator(nn.Module):
    """D(x) or D(x, y) -> (N,) logits; ``widths`` etc. in D's order (high resolution first)."""

    def __init__(self, widths, cards, blocks, expansion: int = 2, channels: int = 3, num_classes: int = 0,
                 embed_dim: int | None = None, bf16_stages: int = 0):
        super().__init__()
        scaling, n = sum(blocks), len(widths)
        embed = (embed_dim or widths[-1]) if num_classes else 0
        stages = [Stage(_blocks(widths[i], cards[i], blocks[i], expansion, scaling)
                        + [DownsampleLayer(widths[i], widths[i + 1])]) for i in range(n - 1)]
        stages += [Stage(_blocks(widths[-1], cards[-1], blocks[-1], expansion, scaling)
                         + [DiscriminativeBasis(widths[-1], embed or 1)])]
        self.ExtractionLayer = Convolution(channels, widths[0], 1)
        self.MainLayers = nn.ModuleList(stages)
        set_bf16_stages(self.MainLayers, bf16_stages, high_first=True)
        self.num_classes = num_classes
        if num_classes:
            self.EmbeddingLayer = msr_init(nn.Linear(num_classes, embed, bias=False), 1 / math.sqrt(embed))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        first = self.MainLayers[0].dtype
        x = self.ExtractionLayer(x if first is None else x.to(first))
        for stage in self.MainLayers:
            x = stage(x)
        if self.num_classes:
            if y is None:
                raise ValueError("a conditional R3GAN D needs the labels y")
            x = (x * self.EmbeddingLayer(_one_hot(y, self.num_classes, x.dtype))).sum(dim=1, keepdim=True)
        return x.view(x.shape[0])


def _one_hot(y: torch.Tensor, n: int, dtype) -> torch.Tensor:
    """Class indices (N,) or already one-hot (N, n) rows (R3GAN's c) -> (N, n) floats."""
    return y.to(dtype) if y.dim() == 2 else F.one_hot(y.long(), n).to(dtype)


def plan(m) -> tuple[list[int], list[int], list[int]]:
    """G's (widths, cardinalities, blocks) from the model config (validated by :func:`check_plan`)."""
    return list(m.widths), list(m.cardinalities), list(m.blocks)


def resolution_of(widths) -> int:
    return 4 * 2 ** (len(widths) - 1)


def check_plan(m, size: int | None) -> None:
    """The stage lists agree, every width splits into its cardinality's groups, and the stages reach the data's
    side ``size`` (None: not known yet). One-line :class:`UserError` otherwise."""
    lists = {"widths": m.widths, "cardinalities": m.cardinalities, "blocks": m.blocks}
    for name, value in lists.items():
        if not value:
            raise UserError(f"model=r3gan needs model.{name}: one entry per stage, 4x4 first "
                            "(e.g. model.widths=[768,768,768,768] for 32 px)")
        if any(int(v) <= 0 for v in value):
            raise UserError(f"model.{name} must be positive integers, got {list(value)}")
    if len({len(v) for v in lists.values()}) != 1:
        raise UserError(f"model.widths, model.cardinalities and model.blocks need one entry per stage each; got "
                        f"{len(m.widths)}, {len(m.cardinalities)} and {len(m.blocks)}")
    if m.expansion <= 0:
        raise UserError(f"model.expansion must be positive, got {m.expansion}")
    n16 = m.bf16_stages
    if not isinstance(n16, int) or isinstance(n16, bool) or not 0 <= n16 < len(m.widths):
        raise UserError(f"model.bf16_stages must be an integer from 0 to {len(m.widths) - 1} (the stages above "
                        f"the 4x4 one, which stays float32), got {n16!r}")
    for w, c in zip(m.widths, m.cardinalities):
        if (w * m.expansion) % c:
            raise UserError(f"model=r3gan: width {w} x model.expansion {m.expansion} is not divisible by its "
                            f"cardinality {c} (the grouped 3x3 conv's groups): change model.widths or "
                            "model.cardinalities")
    if size is not None and resolution_of(m.widths) != size:
        need = int(math.log2(size)) - 1 if size >= 4 and size & (size - 1) == 0 else None
        fix = (f"give model.widths, cardinalities and blocks {need} entries" if need
               else "use a power-of-two dataset.resolution (>= 8)")
        raise UserError(f"model=r3gan with {len(m.widths)} stages makes {resolution_of(m.widths)} px images, the "
                        f"data is {size} px: {fix}")


def check_r3gan(cfg) -> None:
    """model=r3gan's own rules (called from distgan.models.check)."""
    from distgan import data

    m = cfg.model
    check_plan(m, data.resolution(cfg.dataset))
    if m.spectral_norm or m.norm_g != "none" or m.norm_d != "none":
        raise UserError("model=r3gan has no normalisation: set model.spectral_norm=false model.norm_g=none "
                        "model.norm_d=none")


def build_r3gan(m, shape: tuple[int, ...], num_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """(G, D) for images of ``shape`` (C, H, W); class-conditional when ``num_classes`` > 0 (G's label embedding
    as wide as z, D's as its last width: R3GAN's presets)."""
    check_plan(m, shape[-1])
    widths, cards, blocks = plan(m)
    n16 = m.bf16_stages
    G = R3Generator(m.latent_dim, widths, cards, blocks, m.expansion, shape[0], num_classes, bf16_stages=n16)
    D = R3Discriminator(widths[::-1], cards[::-1], blocks[::-1], m.expansion, shape[0], num_classes, bf16_stages=n16)
    return G, D
