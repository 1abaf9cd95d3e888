"""DCGAN (Radford et al. 2016) for 28, 32 and 64 px images.

G: z -> linear -> s0 x s0 feature map -> (k=4, s=2) transposed convs doubling the size -> tanh.
D: (k=4, s=2) convs halving the size, LeakyReLU, then a linear layer to one logit. Starting sizes:
28 px = 7 -> 14 -> 28; 32 px = 4 -> 8 -> 16 -> 32; 64 px = 4 -> ... -> 64.
"""

from __future__ import annotations

from torch import nn

from distgan.config import ModelConfig
from distgan.errors import UserError
from distgan.models.layers import IMAGE_LAYOUTS, image_layout
from distgan.models.layers import norm2d as _norm

SIZES = tuple(IMAGE_LAYOUTS)


def _layout(size: int) -> tuple[int, int]:
    return image_layout("dcgan", size)


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int, norm: str):
        super().__init__()
        channels, size, _ = shape
        self.s0, n_up = _layout(size)
        self.c0 = width * 2 ** (n_up - 1)
        self.fc = nn.Linear(latent_dim, self.c0 * self.s0 * self.s0)
        layers: list[nn.Module] = [_norm(norm, self.c0), nn.ReLU(True)]
        ch = self.c0
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=norm != "batch"),
                       _norm(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.fc(z).view(z.shape[0], self.c0, self.s0, self.s0))


class DCGANDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], width: int, norm: str):
        super().__init__()
        channels, size, _ = shape
        s0, n_down = _layout(size)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm != "batch"),
                       _norm(norm, ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * s0 * s0, 1)

    def features(self, x):
        return self.net(x).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x)).squeeze(1)


def build_dcgan(cfg: ModelConfig, shape: tuple[int, ...]):
    if len(shape) != 3:
        raise UserError("model=dcgan needs an image dataset; use model=mlp for ring/grid")
    return (DCGANGenerator(cfg.latent_dim, shape, cfg.width, cfg.norm_g),
            DCGANDiscriminator(shape, cfg.width, cfg.norm_d))
