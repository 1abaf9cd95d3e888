"""Non-finite losses and gradients, caught at the update that would spread them into the weights.

The check runs after ``backward`` and before ``optimizer.step``, on the gradients *after* DDP's
all-reduce: every rank holds the same gradients, so every rank reaches the same verdict in the same
phase without an extra collective, and skipping stays consistent (no rank updates while another skips).
Only on a bad step do the ranks gather their local losses, to name the rank whose loss went bad.

Cost: one fused finiteness pass over the gradients; the verdict is one host read per optimizer
step. On CPU that read is free. On a GPU it is one synchronisation per phase — the same one fp16
training already pays in ``GradScaler.step`` (which reads ``found_inf`` on the host) — so under fp16 the
scaler's own skip is used and only its overflow handling applies here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distgan import dist


class NonFiniteError(RuntimeError):
    """Training produced NaN or Inf and ``train.skip_nonfinite`` is off."""


def _grads_finite(opt: torch.optim.Optimizer) -> bool:
    """True when no gradient element is NaN or ±Inf: one fused pass per device and dtype, the check
    GradScaler runs before its own step (its multiply is by 1.0 here, which changes no value), and one host
    read per device. A per-tensor sum took ~2x as long for grid_mlp's D (30 vs 15 µs a phase;
    docs/benchmarks.md)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    found: dict[torch.device, torch.Tensor] = {}  # per device: > 0 when a non-finite value was seen
    for (device, _), grads in groups.items():
        flag = found.setdefault(device, torch.zeros(1, device=device))
        torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, torch.ones(1, device=device))
    return not any(bool(flag) for flag in found.values())


class NonFiniteGuard:
    """``ok(phase, opt, loss)`` before each optimizer step: True to apply the update; False to skip it
    (``skip=True``, counted in ``skipped``); else raises :class:`NonFiniteError` with ``where()`` (the
    step and the last good checkpoint) in the message."""

    def __init__(self, skip: bool, where: Callable[[], str], enabled: bool = True):
        self.skip, self.where, self.enabled = skip, where, enabled
        self.skipped = 0  # skipped updates since the start (or the resumed count)
        self.checked = 0  # updates checked by this process (the skipped share of a tick is bounded)

    def ok(self, phase: str, opt: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
        if not self.enabled:
            return True
        self.checked += 1
        if _grads_finite(opt):  # the host read
            return True
        # every rank is here (same all-reduced gradients): gather whose own loss was bad
        local = (~torch.isfinite(loss.detach())).float().reshape(1)
        bad_loss = dist.all_gather_rows(local).flatten().nonzero().flatten().tolist()
        who = (f"loss non-finite on rank {', '.join(map(str, bad_loss))}" if bad_loss
               else "losses finite, gradient overflowed on every rank")
        if self.skip:
            self.skipped += 1
            return False
        raise NonFiniteError(f"non-finite {phase} gradient ({who}) at {self.where()}; lower train.lr_d/lr_g, "
                             "check the data, or set train.skip_nonfinite=true to skip such updates")

    def check_share(self, since: tuple[int, int], bound: float) -> None:
        """Raise :class:`NonFiniteError` when more than ``bound`` of the updates checked since ``since``
        (``(skipped, checked)`` then) were skipped: a run that skips most of its updates is not training.
        The counts are the same on every rank (same all-reduced gradients), so every rank raises together."""
        skipped, checked = self.skipped - since[0], self.checked - since[1]
        if checked and skipped / checked > bound:
            raise NonFiniteError(f"{skipped} of {checked} updates since the last log tick had non-finite "
                                 f"gradients and were skipped (more than train.max_skipped_fraction={bound:g}) at "
                                 f"{self.where()}; lower train.lr_d/lr_g or check the data")

    @property
    def counts(self) -> tuple[int, int]:
        return self.skipped, self.checked
