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


# ------------------------------------------------------------------ wired: training, launch/evaluate.py
# A 6-step Fashion-MNIST run, then ``metrics.inception_score=true`` as a user meets it. The network with
# logits is a stand-in: a small TorchScript file with NVIDIA's calling convention (0..255 pixels in;
# ``return_features`` -> 2048 features, else the softmax of a 1008-way output layer, ``no_output_bias``),
# registered as NVIDIA's digest for the test, so that the real path runs: locate, sha256, load, resize.
class _FakeNvidia(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.output = torch.nn.Linear(3 * 4, IS.NUM_CLASSES)
        with torch.no_grad():
            self.output.weight.normal_(0, 4, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        f = torch.nn.functional.adaptive_avg_pool2d(x / 255, 2).flatten(1)  # (N, 12)
        if return_features:
            return f.repeat(1, 171)[:, :2048]
        y = torch.nn.functional.linear(f, self.output.weight) if no_output_bias else self.output(f)
        return torch.softmax(y, 1)


@pytest.fixture
def fake_nvidia(tmp_path, monkeypatch):
    """The stand-in file, known as NVIDIA's for this test; an empty cache (no other NVIDIA file found)."""
    import hashlib

    from distgan.metrics import inception as I

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(_FakeNvidia().eval()), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(I.KNOWN, digest, I.Known("NVIDIA inception-2015-12-05.pt", takes_pixels=True))
    monkeypatch.setattr(IS, "NVIDIA_SHA256", digest)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fashion_root):
    """A 6-step Fashion-MNIST run, never evaluated (needs no weights)."""
    from tests.test_evaluate_inception import _tiny_run

    return _tiny_run(tmp_path_factory.mktemp("run"), fashion_root, inception=False)[0]


def _evaluate(*args: str, env: dict | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / "launch" / "evaluate.py"), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_is_without_nvidias_file_is_one_line_before_any_sample(tiny_run, fashion_root, tmp_path, monkeypatch,
                                                               capsys):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from distgan.metrics import evaluator, inception
    from tests.test_sample_evaluate import run_in_process

    env = {"XDG_CACHE_HOME": str(tmp_path / "empty-cache")}
    helper = inception.packaged_weights()
    for given in ([], [f"metrics.inception_path={helper}"] if helper else []):  # none; fid-helper's (no logits)
        for features in ("classifier", "inception"):
            out = _evaluate(f"checkpoint={tiny_run}", "metrics.inception_score=true", f"metrics.features={features}",
                            f"dataset_root={fashion_root}", *given, env=env)
            lines = [line for line in out.stderr.splitlines() if line.strip()]
            assert out.returncode == 2 and len(lines) == 1 and out.stdout == "", out.stderr
            assert lines[0].startswith("error: ") and "the Inception Score (metrics.inception_score=true) needs" \
                in lines[0]
            assert "inception-2015-12-05.pt" in lines[0] and "metrics.inception_path=PATH" in lines[0]
    # ... before any sample is drawn, or any feature network loaded or trained
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(evaluator.Evaluator, "_scores", lambda *a: pytest.fail("sampled without IS weights"))
    code, out, err = run_in_process("evaluate", f"checkpoint={tiny_run}", "metrics.inception_score=true",
                                    f"dataset_root={fashion_root}", capsys=capsys)
    assert code == 2 and err.strip().startswith("error: the Inception Score") and len(err.strip().splitlines()) == 1
    # training that would report it stops in its pre-flight, before its run directory exists
    run_dir = tmp_path / "new-run"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "launch" / "run.py"), f"dataset.root={fashion_root}",
                          "metrics.inception_score=true", "train.eval_every=10", f"hydra.run.dir={run_dir}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, **env})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "metrics.inception_path=PATH" in lines[0], out.stderr
    assert not run_dir.exists()


def test_is_is_refused_on_2d_data_in_one_line():
    from distgan.config import Config
    from distgan.launcher.preflight import check_config

    cfg = Config()
    cfg.dataset.name, cfg.metrics.inception_score = "ring", True
    with pytest.raises(UserError, match="metrics.inception_score needs an image dataset"):
        check_config(cfg)


def test_is_wired_through_evaluate_and_training(tiny_run, fashion_root, fake_nvidia, capsys):
    import json

    from distgan import cli
    from distgan.metrics import sources
    from tests.test_sample_evaluate import run_in_process

    n = 20
    args = [f"checkpoint={tiny_run}", "metrics.features=inception", "metrics.inception_score=true",
            f"metrics.inception_path={fake_nvidia}", f"metrics.num_samples={n}", "metrics.num_real=10",
            "metrics.kid_pr_samples=10", f"dataset_root={fashion_root}", "seed=3"]
    code, out, err = run_in_process("evaluate", *args, "--json", capsys=capsys)
    assert code == 0, err
    report = json.loads(out)
    scores = report["metrics"]
    assert {"fid20", "is20", "is20_std"} <= set(scores)
    assert report["is_num_samples"] == n and report["is_splits"] == 10
    assert report["is_weights"] == "NVIDIA inception-2015-12-05.pt"
    # the number is Salimans et al.'s formula over the probabilities of samples 0..n-1 of seed 3
    G, cfg, _ = cli.load_generator(str(tiny_run))
    net = IS.InceptionProbs(str(fake_nvidia))
    images = sources.generator_fn(G.eval(), cfg.model.latent_dim, 3)(torch.arange(n))
    mean, std = reference_is(net(images).double().numpy())
    assert scores["is20"] == pytest.approx(mean, rel=1e-5) and scores["is20_std"] == pytest.approx(std, rel=1e-4)
    assert 1 < mean < IS.NUM_CLASSES
    code, out, err = run_in_process("evaluate", *args, capsys=capsys)  # the table names it
    assert code == 0 and "is20 " in out and "IS:       20 samples in 10 splits" in out, err


def test_is_in_the_training_loop_is_the_checkpoints(tmp_path, fashion_root, fake_nvidia, capsys):
    import json

    from distgan.config import Config
    from distgan.train import train_worker
    from tests.test_sample_evaluate import run_in_process

    torch.set_num_threads(1)
    cfg = Config()
    cfg.run_dir, cfg.resume, cfg.dataset.root = str(tmp_path / "run"), "never", fashion_root
    cfg.model.width, cfg.model.latent_dim = 8, 8
    t = cfg.train
    t.steps, t.batch_size, t.ema_kimg, t.seed = 6, 20, 0.1, 5
    t.log_every = t.sample_every = t.checkpoint_every = t.eval_every = 6
    m = cfg.metrics
    m.features, m.inception_score, m.inception_path = "inception", True, str(fake_nvidia)
    m.num_samples, m.num_real, m.kid_pr_samples = 20, 10, 10
    last = train_worker(cfg)
    inline = {k[len("metrics/"):]: v for k, v in last.items() if k.startswith("metrics/")}
    assert {"fid20", "is20", "is20_std"} <= set(inline)
    code, out, err = run_in_process("evaluate", f"checkpoint={cfg.run_dir}", "metrics.features=inception",
                                    "metrics.inception_score=true", f"metrics.inception_path={fake_nvidia}",
                                    "metrics.num_samples=20", "metrics.num_real=10", "metrics.kid_pr_samples=10",
                                    f"dataset_root={fashion_root}", "seed=5", "--json", capsys=capsys)
    assert code == 0, err
    scores = json.loads(out)["metrics"]
    assert scores["is20"] == pytest.approx(inline["is20"], rel=1e-6)


def test_is_of_samples_from_a_file(tmp_path, fashion_root, fake_nvidia, capsys):
    import json

    from tests.test_sample_evaluate import run_in_process

    images = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    np.save(tmp_path / "samples.npy", images.numpy())
    code, out, err = run_in_process("evaluate", f"samples={tmp_path / 'samples.npy'}", "dataset=fashion_mnist",
                                    f"dataset_root={fashion_root}", "metrics.features=inception",
                                    "metrics.inception_score=true", f"metrics.inception_path={fake_nvidia}",
                                    "metrics.num_real=10", "metrics.kid_pr_samples=10", "--json", capsys=capsys)
    assert code == 0, err
    report = json.loads(out)
    mean, std = reference_is(IS.InceptionProbs(str(fake_nvidia))(images).double().numpy())
    assert report["metrics"]["is20"] == pytest.approx(mean, rel=1e-5) and report["is_num_samples"] == 20
