"""What the GAN step is built with: optimizers (with the lazy-regularisation correction), the learning-rate
schedule, autocast, the CUDA speed-ups (channels_last, torch.compile) and the host allocator's setting.
distgan.step re-exports them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import os

import torch
from torch import nn

from distgan.config import Config, TrainConfig
from distgan.regularizers import fused_d_reg

log = logging.getLogger("distgan")


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def call(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``net(x)``, or ``net(x, y)`` for a conditional network."""
    return net(x) if y is None else net(x, y)


def lazy_correction(interval: int, on: bool) -> float:
    """StyleGAN2's c = k / (k + 1) for a regulariser applied every k steps (1 when it is off)."""
    return interval / (interval + 1) if on else 1.0


def corrections(t: TrainConfig, lazy_always: bool = False) -> tuple[float, float]:
    """(c_G, c_D) of :func:`lazy_correction`. ``lazy_always`` (model=stylegan2, as NVIDIA's training loop,
    which builds its optimizers for lazy G and D regularisation whatever the weights): corrected even with
    the regulariser off; other models only when it is on (docs/algorithms.md, departures)."""
    # R1 / R2 at every D step are part of D main's loss, one update per D step (distgan.step): nothing to correct
    c_d = 1.0 if fused_d_reg(t) else lazy_correction(t.r1_interval, lazy_always or t.r1_gamma > 0 or t.r2_gamma > 0)
    c_g = lazy_correction(t.pl_interval, lazy_always or t.pl_weight > 0)
    return c_g, c_d


def build_optimizers(G: nn.Module, D: nn.Module, t: TrainConfig, lazy_always: bool = False):
    """Adam for G and D (separate learning rates: TTUR). A lazy regulariser runs every k steps of its
    network with its loss multiplied by k; StyleGAN2's correction c = k/(k+1) of lr and betas keeps the
    effective optimizer the same as with a penalty at every step (Karras et al. 2020, appendix B): for D
    with R1/R2 (every ``r1_interval`` D steps), for G with the path-length penalty (every ``pl_interval``);
    always for model=stylegan2 (``lazy_always``, :func:`corrections`)."""
    c_g, c_d = corrections(t, lazy_always)
    opt_g = torch.optim.Adam(G.parameters(), lr=t.lr_g * c_g, betas=(t.beta1**c_g, t.beta2**c_g), fused=_fusable(G))
    opt_d = torch.optim.Adam(D.parameters(), lr=t.lr_d * c_d, betas=(t.beta1**c_d, t.beta2**c_d), fused=_fusable(D))
    return opt_g, opt_d


def lr_factor(t: TrainConfig, step: int) -> float:
    """Multiplier of both learning rates for G step ``step`` (0-based): 1 until ``lr_decay_start`` x
    ``steps``, then a linear or half-cosine fall that would reach 0 at ``steps``. A pure function of the
    step, so it is the same on every rank and after a resume."""
    if t.lr_decay == "none":
        return 1.0
    start = t.lr_decay_start * t.steps
    frac = min(max((step - start) / max(t.steps - start, 1), 0.0), 1.0)
    return 1.0 - frac if t.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def build_schedulers(opt_g, opt_d, t: TrainConfig, first_step: int = 0) -> list:
    """torch's LambdaLR over :func:`lr_factor`, stepped once per G step (after the n_critic D steps).
    Built after a resume with ``first_step`` = the resumed step: the factor depends on the step alone,
    so nothing about the schedule needs saving (the optimizers' state keeps the base rates). None at all
    without a decay: the loop then leaves the rates alone."""
    if t.lr_decay == "none":
        return []
    return [torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(t, first_step + k)) for opt in (opt_g, opt_d)]


def apply_schedule(opt_g, opt_d, t: TrainConfig, values, lazy_always: bool = False) -> None:
    """Set this step's scheduled learning rates and Adam beta2 (``values``: a distgan.schedules.Values) on
    both optimizers, with the lazy-regularisation correction of :func:`build_optimizers`."""
    c_g, c_d = corrections(t, lazy_always)
    for opt, lr, c in ((opt_g, values.lr_g, c_g), (opt_d, values.lr_d, c_d)):
        for group in opt.param_groups:
            group["lr"] = lr * c
            group["betas"] = (t.beta1**c, values.beta2**c)


def _fusable(net: nn.Module) -> bool:
    """Fused Adam (one kernel per step instead of ~10 per tensor): same update to ~1e-8, ~4x cheaper on
    CPU, where the for-loop Adam was ~15 % of an MLP step (docs/benchmarks.md)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in net.parameters())


# glibc's mallopt parameters (malloc.h) and the values distgan's workers set
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 1 << 30}


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep what a training step frees for the next step, as jemalloc / tcmalloc do:
    blocks up to 32 MiB come from the heap rather than fresh mmaps, and up to 1 GiB of free heap is kept
    rather than handed back to the kernel. With glibc's defaults every CPU step maps, zeroes and unmaps its
    activations again: 20,000-40,000 page faults a StyleGAN2 step at 32 px, batch 64, and 2-5 s of the ~30
    CPU-s that 64 steps take in the kernel, 0.7 s with this (docs/benchmarks.md). The peak memory is the
    same; it is only not returned between steps. Skipped where the user set either MALLOC_*_ variable
    (glibc reads them at start) or where the C library is not glibc. Returns whether it was applied."""
    if any(name in os.environ for name in KEEP_FREED):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): their allocators decide
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_FREED["MALLOC_MMAP_THRESHOLD_"])
                and mallopt(_M_TRIM_THRESHOLD, KEEP_FREED["MALLOC_TRIM_THRESHOLD_"]))


def accelerate(G: nn.Module, D: nn.Module, cfg: Config, device: torch.device, penalty: bool,
               g_penalty: bool = False) -> bool:
    """On CUDA: channels_last for conv models and, with ``train.compile``, torch.compile in place (state
    dict keys unchanged). torch.compile does not support double backward, so D is not compiled when a
    penalty (``penalty``: R1, R2, WGAN-GP) needs it, nor G with the path-length penalty (``g_penalty``).
    A style model's G compiles its synthesis network only: the mapping network accumulates w_avg in
    Python state, which would make every call recompile. Returns whether inputs should be channels_last."""
    from distgan.models import spec

    if device.type != "cuda":
        return False
    model = spec(cfg.model.name)
    if model.channels_last:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        if g_penalty:
            log.info("train.compile: G left uncompiled (the path-length penalty needs double backward)")
        else:
            (G.synthesis if model.style else G).compile()
        if penalty:
            log.info("train.compile: D left uncompiled (its gradient penalty needs double backward)")
        else:
            D.compile()
    return model.channels_last
