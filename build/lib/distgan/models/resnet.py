"""SNGAN-style ResNet G and D (Miyato et al. 2018, appendix B.4; Gulrajani et al. 2017) for 28, 32, 64 px.

At 32 px this is SNGAN's CIFAR-10 network: G = linear -> 4x4 -> three up-blocks -> BN, ReLU, 3x3 conv,
tanh; D = an optimised down-block, a down-block, two plain blocks, ReLU, global sum pooling, linear.
Other sizes keep the blocks and change the start: 28 px starts G at 7x7 (two up-blocks, so Fashion-MNIST
and MNIST need no resizing); 64 px adds a block on each side. G has ``2 * width`` channels, D ``width``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from distgan.config import ModelConfig
from distgan.errors import UserError
from distgan.models.layers import IMAGE_LAYOUTS, image_layout
from distgan.models.layers import norm2d as _norm

SIZES = tuple(IMAGE_LAYOUTS)


def _layout(size: int) -> tuple[int, int]:
    return image_layout("resnet", size)


class GBlock(nn.Module):
    """norm -> ReLU -> upsample -> conv3 -> norm -> ReLU -> conv3, plus an upsampled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.norm1, self.conv1 = _norm(norm, c_in), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2, self.conv2 = _norm(norm, c_out), nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(F.interpolate(F.relu(self.norm1(x)), scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + self.shortcut(up)


class DBlock(nn.Module):
    """(ReLU) -> conv3 -> ReLU -> conv3 -> (avgpool), plus a 1x1 (+ avgpool) shortcut. The first block
    of D has no leading ReLU and pools its shortcut before the 1x1 conv (SNGAN's "optimised" block)."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool, norm: str):
        super().__init__()
        self.down, self.first = down, first
        self.conv1, self.norm1 = nn.Conv2d(c_in, c_out, 3, 1, 1), _norm(norm, c_out)
        self.conv2, self.norm2 = nn.Conv2d(c_out, c_out, 3, 1, 1), _norm(norm, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if (down or c_in != c_out) else nn.Identity()

    def forward(self, x):
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.norm1(self.conv1(h))))
        h = self.norm2(h)
        if self.down:
            h = F.avg_pool2d(h, 2)
            s = self.shortcut(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.shortcut(x), 2)
        else:
            s = self.shortcut(x)
        return h + s


class ResNetGenerator(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int, norm: str):
        super().__init__()
        channels, size, _ = shape
        self.s0, n_up = _layout(size)
        self.ch = 2 * width
        self.fc = nn.Linear(latent_dim, self.ch * self.s0 * self.s0)
        self.blocks = nn.Sequential(*[GBlock(self.ch, self.ch, norm) for _ in range(n_up)])
        self.out = nn.Sequential(_norm(norm, self.ch), nn.ReLU(), nn.Conv2d(self.ch, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z):
        return self.out(self.blocks(self.fc(z).view(z.shape[0], self.ch, self.s0, self.s0)))


class ResNetDiscriminator(nn.Module):
    """``features(x)`` is the pooled (N, width) vector; ``fc`` maps it to the logit (projection D uses both)."""

    def __init__(self, shape: tuple[int, int, int], width: int, norm: str):
        super().__init__()
        channels, size, _ = shape
        _layout(size)
        n_down = 0
        while size > 8:  # down to 7 (28 px) or 8 px (32, 64 px), then two blocks at that size
            size, n_down = size // 2, n_down + 1
        blocks = [DBlock(channels, width, down=True, first=True, norm=norm)]
        blocks += [DBlock(width, width, down=True, first=False, norm=norm) for _ in range(n_down - 1)]
        blocks += [DBlock(width, width, down=False, first=False, norm=norm) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, 1)

    def features(self, x):
        return F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling, as in SNGAN

    def forward(self, x):
        return self.fc(self.features(x)).squeeze(1)


def build_resnet(cfg: ModelConfig, shape: tuple[int, ...]):
    if len(shape) != 3:
        raise UserError("model=resnet needs an image dataset; use model=mlp for ring/grid")
    return (ResNetGenerator(cfg.latent_dim, shape, cfg.width, cfg.norm_g),
            ResNetDiscriminator(shape, cfg.width, cfg.norm_d))
