"""Process-group facts and collectives. The process group itself is made by Ray Train (or by a test);
nothing here imports Ray."""

from __future__ import annotations

import inspect
import os

import torch
import torch.distributed as dist
from torch import nn


def from_rank0(fn):
    """Every rank: rank 0 runs ``fn`` and sends its result to the others. If it fails, every rank
    raises with rank 0's message (a UserError stays one), instead of the others waiting in a
    collective for a result that never comes."""
    if world_size() == 1:
        return fn()
    from distgan.errors import UserError, first_line

    payload: list = [None, None, None]
    error = None
    if rank() == 0:
        try:
            payload[0] = fn()
        except Exception as e:  # noqa: BLE001 - sent to the other ranks, then raised here unchanged
            error, payload[1:] = e, [isinstance(e, UserError), str(e) if isinstance(e, UserError)
                                     else f"rank 0 failed: {type(e).__name__}: {first_line(e)}"]
    dist.broadcast_object_list(payload, src=0)
    if error is not None:
        raise error
    if payload[2] is not None:
        raise (UserError if payload[1] else RuntimeError)(payload[2])
    return payload[0]


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


# torch >= 2.14 renamed broadcast_buffers=False to forward_sync_buffers=False (same effect per forward)
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """One DDP per network (one DDP around both G and D fails or needs find_unused_parameters), without
    the per-forward buffer sync (``broadcast_buffers=False``): DDP would otherwise overwrite BatchNorm's
    running stats in place before every forward, which breaks calling D on real and on fake before one
    backward (pytorch #22095). Running stats stay per rank; checkpoints take rank 0's."""
    if world_size() == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    # gradient_as_bucket_view: gradients live in the all-reduce buckets, no copy in and out per step
    # (~15 % less CPU per image for 2 CPU workers on mlp, docs/benchmarks.md)
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, bucket_cap_mb=25, gradient_as_bucket_view=True,
                                               **_NO_BUFFER_SYNC)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Stack every rank's 1-D tensor into ``(world, n)`` (rank order)."""
    if world_size() == 1:
        return x.unsqueeze(0)
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.stack(out)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (every rank must call it)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def max_param_difference(module: nn.Module, ignore: tuple[str, ...] = ("running_", "num_batches")) -> float:
    """Largest |difference| between this rank's parameters and rank 0's (every rank must call it).

    BatchNorm running statistics are per rank by design (``broadcast_buffers=False``) and are ignored.
    """
    if world_size() == 1:
        return 0.0
    worst = torch.zeros(())
    for name, tensor in unwrap(module).state_dict().items():
        if any(key in name for key in ignore) or not tensor.is_floating_point():
            continue
        ref = tensor.detach().clone()
        dist.broadcast(ref, 0)
        worst = torch.maximum(worst, (ref - tensor).abs().max().cpu())
    return float(worst)
