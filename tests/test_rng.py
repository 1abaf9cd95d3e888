"""Random streams: one table of ids in distgan/rng.py, each distinct, and every draw in the package names
its stream from that table (a bare number would silently share a stream, as evaluation once did with the
fake labels)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from distgan.rng import Stream, counter_generator, eval_latents, local_noise

ROOT = Path(__file__).resolve().parents[1]


def test_stream_ids_are_distinct_and_named():
    values = [s.value for s in Stream]
    assert len(values) == len(set(values)) == len(Stream.__members__)  # @unique: no alias hides a clash
    assert all(name.isupper() for name in Stream.__members__)


def test_every_draw_names_its_stream():
    second_arg = re.compile(r"\b(?:counter_generator|local_noise|local_labels)\([^,()]*,\s*([^,()]*)")
    first_arg = re.compile(r"\.(?:noise|fake_labels)\(([^,()]*)")  # GANStep's draws for a phase
    streams = []
    for path in [*ROOT.glob("distgan/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("launch/*.py")]:
        if path.name == "rng.py":
            continue
        for m in [*second_arg.finditer(path.read_text()), *first_arg.finditer(path.read_text())]:
            streams.append(m.group(1).strip())
            assert streams[-1].startswith("Stream.") or streams[-1] == "stream", f"{path}: {m.group(0)}"
    assert sum(s.startswith("Stream.") for s in streams) >= 6, streams  # the pattern finds the package's draws


def test_streams_give_different_draws_and_the_same_draw_everywhere():
    a = torch.randn(4, generator=counter_generator(1, Stream.Z_D, 7))
    b = torch.randn(4, generator=counter_generator(1, Stream.Z_G, 7))
    assert not torch.equal(a, b)
    assert torch.equal(a, torch.randn(4, generator=counter_generator(1, Stream.Z_D, 7)))
    whole = local_noise(1, Stream.Z_D, 3, 8, 2, 0, 1, torch.device("cpu"))
    halves = [local_noise(1, Stream.Z_D, 3, 8, 2, r, 2, torch.device("cpu")) for r in (0, 1)]
    assert torch.equal(whole, torch.cat(halves))  # rank r of W holds rows [r B/W, (r+1) B/W)


def test_evaluation_sample_i_depends_on_seed_and_i_alone():
    """Whatever N, the indices asked for (a rank's share) or the latent size: latent_dim = 100 is where one
    draw of all N rows fails (torch's CPU randn redraws the tail of a draw whose size is not a multiple of
    16, so row 9 of 10 and row 9 of 33 differ)."""
    for dim in (100, 8, 512):
        z10, _ = eval_latents(10, dim, seed=3)
        z33, _ = eval_latents(33, dim, seed=3)
        assert torch.equal(z10, z33[:10])
        mine, _ = eval_latents(torch.arange(1, 33, 2), dim, seed=3)  # rank 1 of 2: its own rows only
        assert torch.equal(mine, z33[1::2])
        assert not torch.equal(eval_latents(10, dim, seed=4)[0], z10)
    z, labels = eval_latents(torch.tensor([7, 2, 13]), 4, seed=0, num_classes=5)
    assert labels.tolist() == [2, 2, 3] and torch.equal(z, eval_latents(14, 4, seed=0)[0][[7, 2, 13]])
    assert eval_latents(0, 4, seed=0)[0].shape == (0, 4)
