"""Sample-quality metrics: each metric on constructed cases, world-size-invariant gathering on 2 gloo
workers, the cached classifier (tiny settings), and evaluation inside the training loop."""

from __future__ import annotations

import math

import pytest
import torch

from distgan import checkpoint
from distgan.config import Config
from distgan.data import mixture_modes, sample_mixture
from distgan.metrics import distances, mixture
from distgan.metrics.classifier import ClassifierSettings
from distgan.metrics.evaluator import Evaluator, gather_interleave
from distgan.metrics.sources import padded_shard
from distgan.models import build_models
from distgan.testing import gloo
from distgan.train import train_worker

TINY = ClassifierSettings(epochs=2, width=8, lr=5e-3, train_samples=3000, real_samples=400)


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's cores are shared: 2 OpenMP threads under load are many times slower than 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------- 2D protocol
@pytest.mark.parametrize("name", ["ring", "grid"])
def test_mode_metrics_on_true_collapsed_and_lost_generators(name):
    modes, sigma = mixture_modes(name)
    good = mixture.mode_metrics(sample_mixture(name, 2500, seed=1), name)
    assert good["modes"] == len(modes)
    assert good["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)  # 3σ: 98.9 % of a 2D Gaussian
    assert good["reverse_kl"] < 0.02
    collapsed = modes[3] + sigma * torch.randn(2500, 2, generator=torch.Generator().manual_seed(0))
    bad = mixture.mode_metrics(collapsed, name)
    assert bad["modes"] == 1
    assert bad["reverse_kl"] == pytest.approx(math.log(len(modes)))
    lost = mixture.mode_metrics(torch.full((100, 2), 10.0), name)
    assert lost == {"modes": 0, "high_quality": 0.0, "reverse_kl": math.inf}
    assert mixture.better(good, bad) and not mixture.better(bad, good)


def test_high_quality_is_three_sigma_of_the_nearest_mode():
    modes, sigma = mixture_modes("grid")
    offsets = torch.tensor([[2.9 * sigma, 0.0], [3.1 * sigma, 0.0]])
    counts, high = mixture.mode_histogram(modes[:1] + offsets, "grid")
    assert high.tolist() == [True, False]
    assert counts.sum() == 1 and counts[0] == 1


# ------------------------------------------------------------------------------------ image metrics
def test_frechet_distance_closed_forms():
    a = torch.randn(3000, 8, generator=torch.Generator().manual_seed(0))
    assert distances.frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.arange(8.0) / 4
    # equal covariances: FD is the squared distance of the means
    assert distances.frechet_distance_features(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)
    # diagonal covariances: Σ (√s1 − √s2)²
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]).double(), torch.tensor([4.0, 1.0, 9.0]).double()
    zero = torch.zeros(3, dtype=torch.float64)
    want = float(((s1.sqrt() - s2.sqrt()) ** 2).sum())
    assert distances.frechet_distance(zero, s1.diag(), zero, s2.diag()) == pytest.approx(want, rel=1e-9)


def test_kid_is_zero_in_expectation_for_one_distribution():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    same, same_std = distances.kid(x, y, subsets=20, subset_size=500)
    other, _ = distances.kid(x, y * 1.5 + 0.5, subsets=20, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3
    assert other > 20 * max(abs(same), same_std)


def test_precision_recall_when_fakes_cover_half_of_the_reals():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    real = centres[torch.arange(2000) % 2] + torch.randn(2000, 2, generator=g)
    half = centres[0] + torch.randn(1000, 2, generator=g)  # only the left cluster
    full = centres[torch.arange(2000) % 2] + torch.randn(2000, 2, generator=g)
    p_half, r_half = distances.precision_recall(real, half)
    p_full, r_full = distances.precision_recall(real, full)
    assert p_full > 0.9 and r_full > 0.9
    assert p_half > 0.9  # every fake is realistic ...
    assert 0.4 < r_half < 0.6  # ... but only half of the reals are covered
    far = real + 100
    assert distances.precision_recall(real, far) == (0.0, 0.0)


def test_class_coverage():
    real = torch.arange(1000) % 10
    same = distances.class_coverage(real.flip(0), real, 10)
    assert same["class_kl"] == pytest.approx(0.0, abs=1e-12)
    assert same["class_coverage"] == pytest.approx(1.0) and same["classes"] == 10
    one = distances.class_coverage(torch.zeros(500, dtype=torch.long), real, 10)
    assert one["class_kl"] == pytest.approx(math.log(10)) and one["classes"] == 1
    assert one["class_coverage"] == pytest.approx(0.1)


# ------------------------------------------------------------------------- world-size invariance
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_covers_every_index_once_plus_padding(world):
    n = 10
    idx = [padded_shard(n, r, world) for r in range(world)]
    assert len({len(i) for i in idx}) == 1  # all_gather needs equal shapes
    rows = torch.stack(idx).transpose(0, 1).reshape(-1)[:n]  # what gather_interleave does
    assert rows.tolist() == list(range(n))


def test_gather_interleave_without_process_group():
    x = torch.arange(12.0).view(6, 2)
    assert torch.equal(gather_interleave(x, 5), x[:5])


def _cfg(dataset: str, root: str | None = None) -> Config:
    cfg = Config()
    cfg.dataset.name, cfg.dataset.root = dataset, root
    cfg.model.name = "mlp" if dataset in ("ring", "grid") else "dcgan"
    cfg.model.width, cfg.model.latent_dim = 8, 8
    return cfg


def _evaluate(cfg: Config, n: int, settings: ClassifierSettings, shape) -> tuple[dict, torch.Tensor]:
    """One rank's part. Non-zero ranks get perturbed BatchNorm statistics: the evaluator must use rank 0's."""
    from distgan import dist

    torch.manual_seed(0)
    G, _ = build_models(cfg.model, shape)
    for name, buf in G.named_buffers():
        if "running_mean" in name:
            buf.add_(dist.rank())
    ev = Evaluator(cfg, torch.device("cpu"), num_samples=n, seed=3, settings=settings)
    rows = ev.features(G)
    return (ev.score(rows) if dist.rank() == 0 else {}), rows


def test_two_gloo_workers_score_exactly_like_one(tmp_path, monkeypatch, fashion_root):
    monkeypatch.setenv("DISTGAN_CLASSIFIER_CACHE", str(tmp_path))  # inherited by the spawned workers
    ring, fashion = _cfg("ring"), _cfg("fashion_mnist", fashion_root)
    # 1 worker, no process group; 1 thread like the gloo workers, so the same arithmetic (also trains and
    # caches the tiny classifier and the real features for the workers)
    one_ring, one_img = _evaluate_both(ring, fashion)
    two = gloo.run(_evaluate_both, 2, ring, fashion)
    for (scores, rows), one in ((two[0][0], one_ring), (two[0][1], one_img)):
        assert torch.equal(rows, one[1])
        assert scores == one[0]
    assert torch.equal(two[1][0][1], one_ring[1])  # every rank holds the gathered rows
    assert set(one_img[0]) >= {"fd", "kid", "precision", "recall", "class_kl"}
    assert len(one_ring[1]) == 251 and len(one_img[1]) == 151  # odd counts: the padding is dropped


def _evaluate_both(ring: Config, fashion: Config):
    return _evaluate(ring, 251, TINY, (2,)), _evaluate(fashion, 151, TINY, (1, 28, 28))


# ------------------------------------------------------------------------------------- classifier
def test_classifier_is_trained_once_and_cached(tmp_path, monkeypatch, fashion_root):
    from distgan.metrics import classifier

    monkeypatch.setenv("DISTGAN_CLASSIFIER_CACHE", str(tmp_path))
    cfg = _cfg("fashion_mnist", fashion_root).dataset
    model, info = classifier.load_classifier(cfg, TINY)
    assert info["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    monkeypatch.setattr(classifier, "_train", lambda *a: pytest.fail("retrained despite the cache"))
    again, info2 = classifier.load_classifier(cfg, TINY)
    assert info2 == info
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(model(x)[0], again(x)[0]) and model(x)[0].shape == (4, classifier.FEATURES)
    other = ClassifierSettings(**{**TINY.__dict__, "width": 4})
    assert classifier.cache_key(cfg, other) != classifier.cache_key(cfg, TINY)


# ------------------------------------------------------------------------------- in the training loop
def test_training_logs_metrics_and_keeps_the_best_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg("ring")
    cfg.run_dir, cfg.resume = str(tmp_path), "never"
    cfg.dataset.num_samples = 2000
    t = cfg.train
    t.steps, t.batch_size, t.lr_g, t.lr_d = 60, 50, 1e-3, 1e-3
    t.log_every, t.sample_every, t.checkpoint_every, t.eval_every, t.keep_checkpoints = 20, 60, 10, 15, 1
    last = train_worker(cfg)
    assert {"metrics/modes", "metrics/high_quality", "metrics/reverse_kl"} <= set(last)
    acc = EventAccumulator(str(tmp_path / "tb" / "global")).Reload()
    logged = {e.step: e.value for e in acc.Scalars("metrics/modes")}
    assert sorted(logged) == [15, 30, 45, 60]
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in checkpoint.list_checkpoints(ckpts)] == ["step_0000060"]  # retention: keep 1
    best = checkpoint.load(ckpts / "best")
    assert best["step"] in logged and logged[best["step"]] == max(logged.values())
    scores = checkpoint.best_scores(ckpts)
    assert scores["modes"] == logged[best["step"]]
    # the saved best generator reproduces its recorded score
    G, _ = build_models(cfg.model, (2,))
    G.load_state_dict(best["G"])
    assert Evaluator(cfg, torch.device("cpu"), seed=t.seed)(G) == scores


def _rank0_fails(kind: str):
    """One rank of the from_rank0 test: what each rank gets back when rank 0's work succeeds or fails."""
    import torch.distributed as tdist

    from distgan import dist
    from distgan.errors import UserError
    from distgan.metrics import classifier

    def work():
        if kind == "user":
            raise UserError("dataset.root=/nowhere has no labels")
        if kind == "bug":
            raise KeyError("channels")
        return {"from": tdist.get_rank()}

    def attempt():
        if kind != "classifier":
            return dist.from_rank0(work)
        # the classifier feature network: rank 0 loads it and sends it (here: fails to load it)
        classifier.load_classifier = lambda *a: (_ for _ in ()).throw(UserError("no class labels in the data"))
        return classifier.ClassifierFeatures(_cfg("fashion_mnist").dataset).prepare(torch.device("cpu"))

    try:
        return ("ok", attempt())
    except UserError as e:
        return ("UserError", str(e))
    except Exception as e:  # noqa: BLE001
        return (type(e).__name__, str(e))


@pytest.mark.parametrize("kind", ["ok", "user", "bug", "classifier"])
def test_rank_0_work_is_shared_and_its_failure_stops_every_rank(kind):
    """dist.from_rank0 (the feature networks' loading): the others get rank 0's result, or every rank
    raises at once with rank 0's message, instead of waiting in a broadcast that never comes."""
    out = gloo.run(_rank0_fails, 2, kind, timeout=60)
    if kind == "ok":
        assert out == [("ok", {"from": 0})] * 2
    elif kind == "bug":
        assert out[0] == ("KeyError", "'channels'")
        assert out[1] == ("RuntimeError", "rank 0 failed: KeyError: 'channels'")
    else:
        assert out[0] == out[1] and out[0][0] == "UserError", out
