"""Class-conditional wrappers that work with every model in the registry.

- :class:`ConditionalGenerator`: a learned class embedding concatenated to z (Mirza & Osindero 2014).
  The base G is built for ``latent_dim + embed_dim`` inputs, so any unconditional G becomes conditional.
- :class:`ProjectionDiscriminator`: D(x, y) = fc(φ(x)) + <embed(y), φ(x)> (Miyato & Koyama 2018), where
  φ is the base D's ``features`` and fc its last linear layer. Spectral norm, when on, also covers the
  class embedding (``apply_spectral_norm`` visits ``nn.Embedding``).
"""

from __future__ import annotations

import torch
from torch import nn


def cyclic_labels(n: int, num_classes: int, device) -> torch.Tensor:
    """0, 1, …, C-1, 0, 1, …: balanced classes for callers that do not choose them (metrics, sample.py)."""
    return torch.arange(n, device=device) % num_classes


class ConditionalGenerator(nn.Module):
    def __init__(self, base: nn.Module, num_classes: int, embed_dim: int):
        super().__init__()
        self.base, self.num_classes = base, num_classes
        self.embed = nn.Embedding(num_classes, embed_dim)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            y = cyclic_labels(z.shape[0], self.num_classes, z.device)
        return self.base(torch.cat([z, self.embed(y).to(z.dtype)], dim=1))


class ProjectionDiscriminator(nn.Module):
    def __init__(self, base: nn.Module, num_classes: int):
        super().__init__()
        self.base, self.num_classes = base, num_classes
        self.embed = nn.Embedding(num_classes, base.fc.in_features)
        nn.init.xavier_uniform_(self.embed.weight)  # as the authors' code; not zeros (spectral norm of 0 is NaN)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.base.features(x)
        return self.base.fc(h).squeeze(1) + (self.embed(y).to(h.dtype) * h).sum(1)
