"""ADA's adaptive augmentation probability (Karras et al. 2020, section 3): the overfitting heuristic
r_t = E[sign(D(x_real))] is measured over ``interval`` D steps and p moves by sign(r_t - target) x (images
seen) / (kimg x 1000), so p can go from 0 to 1 in ``kimg`` thousand real images (StyleGAN2-ADA: target
0.6, interval 4, 500 kimg).

Every rank accumulates the sum of signs and the count of its own reals; at an update both are all-reduced
(sums of integers in float64: exact), so every rank and every world size computes the same r_t and p.
p stays in [0, 1] (StyleGAN2-ADA clamps only at 0; above 1 every transform already fires). The partial
sums go into ``state_dict`` with p, so a resumed run continues mid-interval exactly.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class AdaptiveP:
    def __init__(self, target: float = 0.6, interval: int = 4, kimg: float = 500, p: float = 0.0,
                 device="cpu"):
        self.target, self.interval, self.kimg = target, interval, kimg
        self.p, self.rt = float(p), math.nan
        self._signs = torch.zeros((), dtype=torch.float64, device=device)  # sum of signs, on the logits' device
        self._count = 0  # reals observed, known on the host

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate sign(D(x_real)) of one (micro-)batch; no host sync."""
        logits = real_logits.detach().flatten()
        self._signs = self._signs.to(logits.device) + logits.sign().sum().double()
        self._count += logits.numel()

    def step(self, counter: int) -> bool:
        """Call after D step ``counter`` (0-based) on every rank; updates p after every ``interval``-th step
        (one all-reduce and one host sync then). Returns whether p was updated."""
        if (counter + 1) % self.interval:
            return False
        stats = torch.stack([self._signs, self._signs.new_full((), self._count)])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        total, count = stats.tolist()
        self._signs, self._count = torch.zeros_like(self._signs), 0
        if count == 0:
            return False
        self.rt = total / count
        adjust = math.copysign(1.0, self.rt - self.target) if self.rt != self.target else 0.0
        self.p = min(max(self.p + adjust * count / (self.kimg * 1000), 0.0), 1.0)
        return True

    def scalars(self) -> dict[str, float]:
        """For TensorBoard."""
        return {"aug/p": self.p, "aug/rt": self.rt}

    def state_dict(self) -> dict:
        return {"p": self.p, "rt": self.rt, "signs": float(self._signs), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.rt = float(state["p"]), float(state["rt"])
        self._signs = torch.tensor(float(state["signs"]), dtype=torch.float64, device=self._signs.device)
        self._count = int(state["count"])
