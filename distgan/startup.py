"""The start-up summary: what a run is, in a few lines, printed by the driver before training starts and
written by rank 0 as the first text entry in TensorBoard (``run``), so both say the same thing."""

from __future__ import annotations

from dataclasses import dataclass

from distgan.config import Config, micro_batch


@dataclass(frozen=True)
class DataFacts:
    """What the summary says of the training set (the driver's located view or a worker's loaded one)."""

    images: int
    shape: tuple[int, ...]  # one sample: (C, H, W), or (2,) for 2D points
    classes: int  # 0: unlabelled


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(cfg: Config, data: DataFacts, params_g: int, params_d: int, workers: int, device: str) -> str:
    """The summary's lines (joined by newlines)."""
    micro, n_micro = micro_batch(cfg.train, workers)
    local = cfg.train.batch_size // workers
    batch = f"{workers} worker{'s' if workers > 1 else ''} x batch {local}"
    if n_micro > 1:
        batch += f" ({n_micro} micro-batches of {micro})"
    kind = "points" if len(data.shape) == 1 else "images"
    sample = "x".join(map(str, data.shape))
    classes = f", {data.classes} classes" if data.classes else ", unlabelled"
    cond = ", class-conditional" if cfg.model.conditional else ""
    recipe = f" (experiment={cfg.experiment})" if cfg.experiment else ""
    return "\n".join([
        f"model: {cfg.model.name}{cond}, G {params_g:,} / D {params_d:,} parameters, loss={cfg.loss.name}{recipe}",
        f"data: dataset={cfg.dataset.name}, {data.images:,} {kind} of {sample}{classes}",
        f"batch: {batch} = global batch {cfg.train.batch_size}, {cfg.train.steps:,} steps, "
        f"{cfg.train.precision} on {device}",
        f"run directory: {cfg.run_dir}",
        f"tensorboard --logdir {cfg.run_dir}/tb",
    ])


def markdown(text: str) -> str:
    """The summary as TensorBoard's text plugin shows it (Markdown: one line per line)."""
    return "\n".join(f"    {line}" for line in text.splitlines())
