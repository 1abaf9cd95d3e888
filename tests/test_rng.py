"""Random streams: one table of ids in distgan/rng.py, each distinct, and every draw in the package names
its stream from that table (a bare number would silently share a stream, as evaluation once did with the
fake labels)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from distgan.rng import Stream, counter_generator, eval_latents, local_noise

ROOT = Path(__file__).resolve().parents[1]


def test_stream_ids_are_distinct_and_named():
    values = [s.value for s in Stream]
    assert len(values) == len(set(values)) == len(Stream.__members__)  # @unique: no alias hides a clash
    assert all(name.isupper() for name in Stream.__members__)


# every function that draws from a stream: the position of its stream argument (or keyword ``stream``)
DRAWS = {"counter_generator": 1, "local_noise": 1, "local_labels": 1, "sample_seed": 1, "sample_generator": 1,
         "per_sample": 2, "noise_maps": 2, "local_noise_maps": 2, "mixing": 3, "local_mixing": 3,
         "path_length_noise": 2, "ada_augment": 3, "diffaugment": 3, "no_augment": 3, "draw": 0,
         "noise": 0, "fake_labels": 0}  # the last two: GANStep's draws for a phase (self.noise(...))


def _named(node: ast.AST) -> bool:
    """``Stream.NAME``, or a parameter that passes a caller's stream through (``stream``, ``aug_stream``)."""
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "Stream"
    return isinstance(node, ast.Name) and node.id.endswith("stream")


def test_every_draw_names_its_stream():
    """Every call of a draw function, and every ``*_stream=`` keyword (GANStep.generate, discriminate), names a
    stream of the table or passes its caller's through."""
    streams = []
    for path in [*ROOT.glob("distgan/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("launch/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            args = [kw.value for kw in node.keywords if kw.arg and kw.arg.endswith("stream")]
            if name in DRAWS and not any(kw.arg == "stream" for kw in node.keywords):
                if name == "draw" and path.parent.name != "augment":
                    continue  # ada.draw / diffaugment.draw(seed, stream, ...): only those two
                position = DRAWS[name] + (1 if name == "draw" else 0)
                if len(node.args) > position:
                    args.append(node.args[position])
            for arg in args:
                streams.append(ast.unparse(arg))
                assert _named(arg), f"{path}:{node.lineno}: {ast.unparse(node)[:120]}"
    named = [s for s in streams if s.startswith("Stream.")]
    assert len(named) >= 20, streams  # the walk finds the package's draws
    assert set(s.name for s in Stream) <= {s.split(".")[1] for s in named}, "a stream of the table is never used"


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
