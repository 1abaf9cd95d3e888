"""Speed choices of the CPU path that must change no number: the non-finite guard's fused check, G_ema on
parameter lists made once, and glibc's malloc keeping freed memory for the next step
(docs/benchmarks.md, "Through launch/run.py")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from distgan.ema import EmaPairs
from distgan.nonfinite import _grads_finite


def _opt_with_grads(*dtypes):
    params = [nn.Parameter(torch.zeros(5, 3, dtype=dt)) for dt in dtypes]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 0.5 + i)
    return torch.optim.SGD(params, lr=1.0), params


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_guard_finds_every_non_finite_gradient_and_changes_none(bad, where):
    opt, params = _opt_with_grads(torch.float32, torch.float64, torch.bfloat16)
    before = [p.grad.clone() for p in params]
    assert bool(_grads_finite(opt))
    assert all(torch.equal(b, p.grad) for b, p in zip(before, params))  # multiplied by 1.0: unchanged
    params[where].grad[2, 1] = bad
    assert not bool(_grads_finite(opt))
    params[where].grad[2, 1] = before[where][2, 1]
    params[1].grad = None  # a parameter without a gradient is skipped
    assert bool(_grads_finite(opt))
    assert bool(_grads_finite(torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=1.0)))  # no gradient at all


def test_ema_pairs_follow_the_parameters_after_they_move():
    """The listed parameters are the modules' own objects: an optimizer step or a .to() of the data is seen."""
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    G_ema = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).requires_grad_(False)
    pairs = EmaPairs(G_ema, G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        G[1].running_mean.fill_(3.0)
    expected = [e + (p - e) * (1 - 0.9) for e, p in zip(G_ema.parameters(), G.parameters())]
    pairs.update(0.9)
    for got, want in zip(G_ema.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert torch.equal(G_ema[1].running_mean, G[1].running_mean)


MALLOC_PROBE = """
import ctypes, json, sys
import torch
from distgan.optim import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
class Info(ctypes.Structure):  # glibc's struct mallinfo2: hblkhd = bytes in blocks mmapped on their own
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
before = mallinfo2().hblkhd
act = torch.ones(6 << 20)  # a step's 24 MiB activation
mapped = mallinfo2().hblkhd - before
del act
print(json.dumps({"applied": applied, "mapped_mib": mapped / 2**20}))
"""


def _probe(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], capture_output=True, text=True, timeout=120,
                         check=True, env={**clean, **env})
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_workers_keep_freed_memory_for_the_next_step():
    """keep_freed_memory: a step's blocks come from the heap the next step reuses, not from fresh mappings
    (zeroed pages, page faults); a user's own MALLOC_*_ setting is left alone."""
    default, kept = _probe("default"), _probe("keep")
    assert kept["applied"] is True
    # glibc's default maps a fresh 24 MiB block on its own (and unmaps it when freed: zeroed pages again
    # next step); kept, it comes from the heap that the next step reuses
    assert default["mapped_mib"] >= 24 and kept["mapped_mib"] == 0, (default, kept)
    assert _probe("keep", MALLOC_TRIM_THRESHOLD_="0")["applied"] is False
