"""Streamed feature statistics (distgan/metrics/stats.py) and the streamed scorer's plumbing
(distgan/metrics/inception_metrics.py), against numpy and pytorch-fid; no Inception weights needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distgan.metrics import inception_metrics as E
from distgan.metrics import sources
from distgan.metrics import stats as S
from tests.conftest import require


def _features(seed: int, n: int, d: int) -> np.ndarray:
    """Correlated, shifted features (float32 values, as an extractor gives)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.2 + rng.uniform(0, 1, d)
    return np.abs(x).astype(np.float32)


def _streamed(x: np.ndarray, world: int = 1, batch: int = 37, keep: int = 0) -> S.FeatureStats:
    """Statistics of ``x`` accumulated as ``world`` strided shards in batches, then summed as all_reduce does."""
    n, d = x.shape
    parts = []
    for rank in range(world):
        st = S.FeatureStats(d, keep=keep, stride=max(1, n // keep) if keep else 1)
        for idx in sources.shard(n, rank, world).split(batch):
            st.update(torch.from_numpy(x[idx.numpy()]), idx)
        parts.append(st)
    total = parts[0]
    for other in parts[1:]:
        for name in ("count", "sum", "sum_outer", "subset", "filled"):
            getattr(total, name).add_(getattr(other, name))
    return total


@pytest.mark.parametrize("n,d", [(2000, 64), (300, 512)])
def test_fd_matches_pytorch_fid(n, d):
    calculate_frechet_distance = require("pytorch_fid.fid_score").calculate_frechet_distance  # fails in CI if missing
    a, b = _features(0, n, d), _features(1, n + 37, d)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = calculate_frechet_distance(a64.mean(0), np.cov(a64, rowvar=False),
                                          b64.mean(0), np.cov(b64, rowvar=False))
    got = S.fid(_streamed(a, world=3), _streamed(b, world=2))
    assert got == pytest.approx(expected, rel=1e-6)


def test_mean_cov_match_numpy_whatever_the_sharding():
    x = _features(2, 501, 16)
    for world, batch in ((1, 501), (1, 7), (4, 10)):
        mean, cov = _streamed(x, world, batch).mean_cov()
        np.testing.assert_allclose(mean.numpy(), x.astype(np.float64).mean(0), rtol=1e-12)
        np.testing.assert_allclose(cov.numpy(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


def test_subset_is_in_global_order_and_spread():
    x = _features(3, 103, 8)
    kept = _streamed(x, world=3, batch=5, keep=10).kept()  # stride 10: samples 0, 10, ..., 90
    np.testing.assert_array_equal(kept.numpy(), x[0:100:10])
    assert _streamed(x, world=2, keep=200).kept().shape == (103, 8)  # keep > N: all of them


def test_subset_refuses_a_missing_or_duplicated_sample():
    x = torch.from_numpy(_features(4, 20, 4))
    st = S.FeatureStats(4, keep=20)
    st.update(x[:10], torch.arange(10))
    st.update(x[5:15], torch.arange(5, 15))  # 5..9 twice, 15..19 never: a sharding bug
    with pytest.raises(RuntimeError, match="incomplete or duplicated"):
        st.kept()


def test_save_load_roundtrip_and_metadata_check(tmp_path):
    ref = S.Reference.of(_streamed(_features(5, 50, 6), keep=20), {"extractor_sha256": "abc", "num_real": 50})
    path = S.save(tmp_path / "ref.pt", ref)
    assert [p.name for p in tmp_path.iterdir()] == ["ref.pt"]  # no temporary file left behind
    back = S.load(path, expect={"extractor_sha256": "abc"})
    assert back.count == 50 and back.meta == ref.meta
    torch.testing.assert_close(back.cov, ref.cov)
    torch.testing.assert_close(back.kept(), ref.kept())
    assert S.load(path, expect={"extractor_sha256": "other"}) is None
    assert S.load(tmp_path / "missing.pt") is None
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert S.load(tmp_path / "bad.pt") is None


@pytest.mark.parametrize("n,full,name", [(50_000, True, "50k_full"), (10_000, False, "10k"), (2500, True, "2500_full")])
def test_metric_names_follow_n(n, full, name):
    assert E.metric_suffix(n, full) == name


def _fake_extractor(images: torch.Tensor) -> torch.Tensor:
    """A cheap stand-in for Inception: fixed random projection of the pixels, then ReLU."""
    w = torch.randn(images[0].numel(), 32, generator=torch.Generator().manual_seed(0))
    return torch.relu(images.float().flatten(1) @ w / 10)


def _images(seed: int):
    def fn(idx: torch.Tensor) -> torch.Tensor:  # image i from (seed, i) alone
        return torch.stack([torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(seed * 10_000 + int(i)))
                            for i in idx]) * 2 - 1
    return fn


def test_reference_is_cached_and_scores_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def real_batches(rank, world):
        calls.append(rank)
        return sources.index_batches(_images(1), 300, 64, rank, world)

    meta = {"extractor_sha256": "fake", "resize": "none", "resolution": 4, "num_real": 300}
    ref = E.reference_stats(real_batches, meta, _fake_extractor, 32, "toy", keep=100)
    again = E.reference_stats(real_batches, meta, _fake_extractor, 32, "toy", keep=100)
    assert calls == [0] and again.count == 300  # the second call read the cache
    assert list((tmp_path / "distgan" / "reference").glob("toy-fake-4px-n300-k100.pt"))
    metrics, info = E.score_streamed(lambda r, w: sources.index_batches(_images(2), 200, 64, r, w), ref,
                               _fake_extractor, 32, num_samples=200, full=False, keep=100)
    assert set(metrics) == {"fid200", "kid200", "precision", "recall"}
    assert info["num_samples"] == 200 and info["num_real"] == 300 and info["kid_pr_samples"] == [100, 100]
    same, _ = E.score_streamed(lambda r, w: sources.index_batches(_images(1), 300, 64, r, w), ref,
                         _fake_extractor, 32, num_samples=300, full=True, keep=100)
    assert same["fid300_full"] == pytest.approx(0, abs=1e-8) and same["precision"] == 1.0
    assert metrics["fid200"] > 1e-3  # other images: a distance


# ----------------------------------------------------------------------------------------- sample files
def test_npy_samples_stream_in_strided_shards(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (11, 1, 5, 5)).astype(np.float32)  # as launch/sample.py writes
    np.save(tmp_path / "s.npy", x)
    seen = {}
    for rank in range(3):
        n, batches = sources.sample_batches(tmp_path / "s.npy", 2, rank, 3)
        assert n == 11
        for idx, images in batches:
            assert set((idx % 3).tolist()) == {rank}
            seen.update({int(i): im for i, im in zip(idx, images)})
    assert sorted(seen) == list(range(11))
    np.testing.assert_array_equal(np.stack([seen[i].numpy() for i in range(11)]), x)


@pytest.mark.parametrize("array,message", [(np.full((2, 3, 4, 4), 3.0, np.float32), "expected \\[-1, 1\\]"),
                                           (np.zeros((2, 4, 4), np.float32), "N x C x H x W"),
                                           (np.zeros((2, 2, 4, 4), np.float32), "C = 1 or 3")])
def test_npy_samples_refuse_what_they_cannot_be(tmp_path, array, message):
    from distgan.errors import UserError

    np.save(tmp_path / "s.npy", array)
    with pytest.raises(UserError, match=message):
        n, batches = sources.sample_batches(tmp_path / "s.npy", 8)
        list(batches)


def test_image_folder_samples(tmp_path):
    from PIL import Image

    from distgan.errors import UserError

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (6, 6), dtype=np.uint8) for _ in range(5)]
    (tmp_path / "sub").mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / ("sub" if i == 4 else ".") / f"{i}.png")
    n, batches = sources.sample_batches(tmp_path, 2)
    got = {int(i): im for idx, ims in batches for i, im in zip(idx, ims)}
    assert n == 5 and got[0].shape == (1, 6, 6) and got[0].dtype == torch.uint8
    files = sources.ImageFiles(tmp_path).files  # sorted, recursive
    for i, f in enumerate(files):
        np.testing.assert_array_equal(got[i][0].numpy(), pixels[int(f.stem)])
    Image.fromarray(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)).save(tmp_path / "9.png")
    with pytest.raises(UserError, match="differ in size"):
        list(sources.sample_batches(tmp_path, 10)[1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .png"):
        sources.sample_batches(tmp_path / "empty", 2)


def test_generated_samples_depend_on_the_index_alone():
    from distgan.rng import eval_latents

    z_all, _ = eval_latents(10, 4, seed=3)
    G = torch.nn.Linear(4, 3)
    fn = sources.generator_fn(G, 4, seed=3)
    torch.testing.assert_close(fn(torch.tensor([5, 2])), G(z_all[[5, 2]]))
    assert torch.equal(sources.spread(10, None), torch.arange(10))
    assert sources.spread(10, 4).tolist() == [0, 2, 5, 7]
