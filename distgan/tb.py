"""TensorBoard: one run per rank (``tb/rank0``, ``tb/rank1``, …) and ``tb/global`` for the means.

Rank 0 writes every run from the gathered per-rank values, so the per-rank curves overlay on one chart
and nothing but rank 0 touches the run directory. ``purge_step`` makes a resumed run drop the events a
crashed attempt wrote after its last checkpoint, so curves continue without repeated steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter


class TBWriter:
    def __init__(self, root: str | Path, world: int, purge_step: int | None = None):
        """``root``: the run's tb/ folder (distgan.rundir.RunDir.tb)."""
        root = Path(root)
        self.ranks = [SummaryWriter(str(root / f"rank{r}"), purge_step=purge_step, flush_secs=30)
                      for r in range(world)]
        self.glob = SummaryWriter(str(root / "global"), purge_step=purge_step, flush_secs=30)

    def scalars(self, step: int, names: list[str], per_rank: torch.Tensor, extra: dict[str, float]) -> None:
        """``per_rank``: (world, len(names)); each rank's run gets its row, ``global`` the column means."""
        for r, writer in enumerate(self.ranks):
            for name, value in zip(names, per_rank[r].tolist()):
                writer.add_scalar(name, value, step)
        for name, value in zip(names, per_rank.mean(0).tolist()):
            self.glob.add_scalar(name, value, step)
        for name, value in extra.items():
            self.glob.add_scalar(name, value, step)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Sample-quality metrics as ``metrics/<name>`` on the global run (non-finite values skipped)."""
        for name, value in values.items():
            if math.isfinite(value):
                self.glob.add_scalar(f"metrics/{name}", value, step)

    def text(self, step: int, tag: str, markdown: str) -> None:
        """A text entry (TensorBoard's Text tab) on the global run."""
        self.glob.add_text(tag, markdown, step)

    def image(self, step: int, picture: torch.Tensor) -> None:
        self.glob.add_image("samples", picture, step)

    def flush(self) -> None:
        for w in [*self.ranks, self.glob]:
            w.flush()

    def close(self) -> None:
        for w in [*self.ranks, self.glob]:
            w.close()
