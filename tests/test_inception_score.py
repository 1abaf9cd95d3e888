"""The Inception Score: distgan's streamed per-split sums against the textbook formula (Salimans et al.'s
per-split KL, written out here with numpy/scipy), on hand-made probabilities; the same number from 2 gloo
ranks as from one process; the weights without logits refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from distgan.errors import UserError
from distgan.metrics import inception_score as IS
from distgan.testing import gloo


def reference_is(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Salimans et al.'s formula: per split, exp(mean over samples of KL(p(y|x) || p(y)))."""
    n = len(probs)
    scores = []
    for k in range(splits):
        part = probs[k * n // splits:(k + 1) * n // splits]
        py = part.mean(0)
        scores.append(np.exp(np.mean([entropy(p, py) for p in part])))
    return float(np.mean(scores)), float(np.std(scores))


def hand_made(n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    logits = rng.randn(n, IS.NUM_CLASSES) * 3 + rng.randn(1, IS.NUM_CLASSES)
    return softmax(logits, axis=1)


def test_is_of_hand_made_logits_equals_the_formula():
    probs = hand_made(1003)  # not a multiple of 10: uneven splits as NVIDIA cuts them
    mean, std = IS.inception_score(torch.from_numpy(probs))
    ref_mean, ref_std = reference_is(probs)
    assert mean == pytest.approx(ref_mean, rel=1e-9) and std == pytest.approx(ref_std, rel=1e-6, abs=1e-9)
    assert 1 < mean < IS.NUM_CLASSES


def test_is_extremes():
    uniform = torch.full((50, IS.NUM_CLASSES), 1 / IS.NUM_CLASSES)
    assert IS.inception_score(uniform, splits=5) == pytest.approx((1.0, 0.0))
    onehot = torch.zeros(100, IS.NUM_CLASSES)
    onehot[torch.arange(100), torch.arange(100) % 10] = 1  # each split: 10 sure and distinct classes
    assert IS.inception_score(onehot) == pytest.approx((10.0, 0.0))


def test_is_batches_in_any_order_give_the_same_score():
    probs = torch.from_numpy(hand_made(400, seed=1))
    st = IS.ISStats(400)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    for idx in perm.split(37):
        st.update(probs[idx], idx)
    assert st.score() == pytest.approx(IS.inception_score(probs), rel=1e-9)


def _ranks(probs: torch.Tensor):
    from distgan import dist
    from distgan.metrics.sources import index_batches

    batches = index_batches(lambda idx: probs[idx], len(probs), 64, dist.rank(), dist.world_size())
    return IS.score_streamed(batches, lambda p: p, len(probs))


def test_is_streamed_over_two_gloo_ranks_equals_one_process():
    probs = torch.from_numpy(hand_made(500, seed=2))
    results = gloo.run(_ranks, 2, probs, timeout=120)
    mean, std = reference_is(probs.numpy())
    assert results[0]["is500"] == pytest.approx(mean, rel=1e-9)
    assert results[0]["is500_std"] == pytest.approx(std, rel=1e-6)
    assert results[1] == {}


def test_logits_are_read_from_nvidias_file_only(tmp_path, monkeypatch):
    from distgan.metrics.inception import packaged_weights

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError, match="inception-2015-12-05.pt"):
        IS.locate_logits(None, download=False)
    helper = packaged_weights()
    if helper is not None:  # fid-helper's file is a known Inception file, but cut before the logits
        with pytest.raises(UserError, match="stops at the pool features"):
            IS.locate_logits(str(helper))
    assert torch.equal(IS.as_probabilities(torch.tensor([[0.25, 0.75]])), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(IS.as_probabilities(torch.tensor([[0.0, 0.0]])), torch.tensor([[0.5, 0.5]]))
