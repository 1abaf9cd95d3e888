"""The blog post's MLP GAN, fixed.

Fixes against the published code: z is a flat ``(N, latent_dim)`` vector (the post fed ``(N,100,1,1)``
to a Linear layer), real images are scaled to [-1, 1] like G's tanh output (the post compared [0,1]
reals with [-1,1] fakes), and D returns logits for a numerically stable loss (the post took the log of
a sigmoid). For the 2D mixtures G's output is linear (points are not bounded to [-1, 1]).

``model.activation_g=relu`` swaps G's LeakyReLU(0.2) for ReLU, DCGAN's choice for generators (Radford
et al. 2016). On the 2D mixtures it is what lets G map regions of z flat onto a mode and jump between
modes, instead of spreading samples along bridges (docs/benchmarks.md, "Quality").
"""

from __future__ import annotations

import math

from torch import nn

from distgan.config import ModelConfig


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, ...], width: int, activation: str = "leaky_relu"):
        super().__init__()
        self.shape = shape
        out = math.prod(shape)
        hidden = [4 * width, 8 * width, 16 * width]
        layers: list[nn.Module] = []
        prev = latent_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU() if activation == "relu" else nn.LeakyReLU(0.2)]
            prev = h
        layers.append(nn.Linear(prev, out))
        if len(shape) == 3:  # images live in [-1, 1]
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, ...], width: int, dropout: float):
        super().__init__()
        hidden = [16 * width, 8 * width, 4 * width]
        layers: list[nn.Module] = []
        prev = math.prod(shape)
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.LeakyReLU(0.2)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            prev = h
        layers.append(nn.Linear(prev, 1))
        self.net = nn.Sequential(*layers)

    @property
    def fc(self) -> nn.Linear:
        return self.net[-1]

    def features(self, x):
        return self.net[:-1](x.flatten(1))

    def forward(self, x):
        return self.net(x.flatten(1)).squeeze(1)


def build_mlp(cfg: ModelConfig, shape: tuple[int, ...]):
    return (MLPGenerator(cfg.latent_dim, shape, cfg.width, cfg.activation_g),
            MLPDiscriminator(shape, cfg.width, cfg.dropout))
