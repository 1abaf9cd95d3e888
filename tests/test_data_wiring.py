"""The datasets as a run uses them (in process; the CLI runs are in test_e2e_datasets.py): config keys and
registry, the pre-flight's view of a folder, training on a streamed zip or folder (resume bit for bit,
skipped images counted, a bad file stopping the run), the metrics reading real images through the Dataset
protocol, and CIFAR-10's python batches read without torchvision."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan import checkpoint, data
from distgan import train as train_mod
from distgan.config import Config, DatasetConfig, ModelConfig, TrainConfig
from distgan.data.image_files import FolderDataset, ZipDataset
from distgan.data.images import BadImageError
from distgan.data.loader import BatchLoader, default_loader_workers
from distgan.data.prepare import prepare
from distgan.errors import UserError
from distgan.launcher.preflight import _preflight, check_config
from distgan.testing import gloo
from distgan.testing.images import alive, make_flat, make_tree, truncate, truncated_png, write_cifar10
from distgan.train import train_worker

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("data") / "tree", 60, extras=False)


@pytest.fixture(scope="module")
def zipped(tree, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("zip") / "tree32.zip"
    prepare(tree, dest, 32, workers=1, progress=False)
    return dest


def image_config(run_dir: Path, name: str, root: Path, steps: int = 4, **dataset) -> Config:
    """A tiny DCGAN on a streamed dataset at 32 px, on the CPU."""
    t = TrainConfig(steps=steps, batch_size=8, log_every=2, sample_every=100, checkpoint_every=2, lr_g=1e-3,
                    lr_d=1e-3, num_sample_images=4, ema_kimg=0.1)
    d = DatasetConfig(name=name, root=str(root), resolution=32, **dataset)
    return Config(model=ModelConfig(name="dcgan", width=4, latent_dim=8), dataset=d, train=t, run_dir=str(run_dir))


# ---------------------------------------------------------------------------------- config, registry
def test_dataset_options_give_streamed_datasets_with_the_configured_loader(tree, zipped, tmp_path):
    for name, root, cls in (("image_folder", tree, FolderDataset), ("zip", zipped, ZipDataset)):
        cfg = image_config(tmp_path / name, name, root)
        cfg.dataset.loader_workers = 1
        cfg = _preflight(cfg).cfg
        ds = data.load(cfg.dataset)
        assert isinstance(ds, cls) and ds.shape == (3, 32, 32) and ds.num_classes == 3
        assert data.spec(name).labelled is None and data.spec(name).streamed  # labelled per index
        with data.batch_source(ds, data.ShardedSampler(len(ds), 8, 0, 1, 0), torch.device("cpu"), 3, cfg) as src:
            assert isinstance(src, BatchLoader) and len(src.worker_pids) == 1
            x, y = src(3)
            assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    cfg = replace(cfg, cluster=replace(cfg.cluster, cpus_per_worker=3),
                  dataset=replace(cfg.dataset, loader_workers=None))
    assert data.loader.loader_workers(cfg) == default_loader_workers(3) == 2


def test_image_size_is_the_deprecated_name_of_resolution(fashion_root, caplog):
    with caplog.at_level(logging.WARNING, logger="distgan"):  # folded once, when the config is made
        cfg = Config(dataset=DatasetConfig(root=fashion_root, image_size=32), run_dir="/tmp/unused")
    assert "dataset.image_size is deprecated: use dataset.resolution=32" in caplog.text
    assert (cfg.dataset.resolution, cfg.dataset.image_size) == (32, None)
    check_config(cfg)
    located = data.locate(cfg.dataset)
    assert (located.resolution, located.image_size) == (32, None) and data.resolution(located) == 32
    assert data.load(located).shape == (1, 32, 32)
    with pytest.raises(UserError, match=r"^dataset\.image_size=32 and dataset\.resolution=64 disagree; "
                                        r"dataset\.image_size is the old name of dataset\.resolution: set only that$"):
        DatasetConfig(root=fashion_root, image_size=32, resolution=64)


def test_the_model_check_sees_the_size_of_the_images(tmp_path):
    """dataset.resolution=null on a folder: the images' own size, which the pre-flight reads from the index."""
    ok = make_flat(tmp_path / "px64", 10, size=64)
    cfg = image_config(tmp_path / "run", "image_folder", ok)
    cfg.dataset.resolution, cfg.train.batch_size = None, 2
    assert _preflight(cfg).cfg.dataset.resolution == 64
    big = make_flat(tmp_path / "px128", 10, size=128)
    with pytest.raises(UserError, match=r"model=dcgan supports 28, 32, 64 px images, got 128; set dataset\.resol"):
        _preflight(replace(cfg, dataset=replace(cfg.dataset, root=str(big))))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ training
def _final_state(cfg: Config) -> dict:
    train_worker(cfg)
    return checkpoint.load(Path(cfg.run_dir) / "checkpoints")


def test_stopped_and_resumed_on_a_zip_equals_a_straight_run_bit_for_bit(zipped, tmp_path):
    kw = dict(xflip=True, loader_workers=1)
    straight = _final_state(image_config(tmp_path / "straight", "zip", zipped, steps=6, **kw))
    _final_state(image_config(tmp_path / "resumed", "zip", zipped, steps=3, **kw))  # stopped at step 3
    resumed = _final_state(image_config(tmp_path / "resumed", "zip", zipped, steps=6, **kw))
    assert straight["step"] == resumed["step"] == 6
    for net in ("G", "D", "G_ema"):
        for k, v in straight[net].items():
            assert torch.equal(v, resumed[net][k]), f"{net}.{k}"
    for opt in ("opt_G", "opt_D"):
        for pid, s in straight[opt]["state"].items():
            assert all(torch.equal(s[k], resumed[opt]["state"][pid][k]) for k in s), opt


def _train_on_bad_folder(run_dir: str, root: str, steps: int) -> dict:
    cfg = image_config(Path(run_dir), "image_folder", Path(root), steps=steps, skip_bad=True, loader_workers=1)
    cfg.train.batch_size = 16
    return train_worker(cfg)


def _draws(n: int, index: int, counters: range, batch: int = 16) -> int:
    s = data.ShardedSampler(n, batch, 0, 1, 0)
    return sum(int((s.indices(c) == index).sum()) for c in counters)


def test_skipped_images_are_summed_over_ranks_logged_and_carried_over_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = make_tree(tmp_path / "bad", 30, seed=4, extras=False)
    truncated_png(root / "dog" / "cut.png", np.random.default_rng(6))  # the header reads: indexed, not decodable
    ds = FolderDataset(root, resolution=32, progress=False)
    bad = next(j for j in range(len(ds)) if ds.name(j).endswith("cut.png"))
    run = tmp_path / "run"
    first = gloo.run(_train_on_bad_folder, 2, str(run), str(root), 4)
    want = _draws(len(ds), bad, range(4))
    assert want > 0 and [m["skipped_images"] for m in first] == [want, want]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(x["data_wait_ms"] >= 0 for x in lines) and lines[-1]["skipped_images"] == want
    resumed, = gloo.run(_train_on_bad_folder, 1, str(run), str(root), 8)  # 1 worker now: same samples
    assert resumed["skipped_images"] == _draws(len(ds), bad, range(8))
    events = EventAccumulator(str(run / "tb" / "global"))
    events.Reload()
    assert [e.value for e in events.Scalars("data/skipped_images")][-1] == resumed["skipped_images"]
    assert [e.step for e in events.Scalars("perf/data_wait_ms")] == [2, 4, 6, 8]
    assert checkpoint.load(run / "checkpoints")["skipped_images"] == resumed["skipped_images"]


def test_a_file_that_fails_to_decode_stops_the_run_naming_it_and_the_last_checkpoint(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data", 30, seed=5, extras=False)
    run = tmp_path / "run"
    train_worker(image_config(run, "image_folder", root, steps=4))
    victim = root / "cat" / "0003.jpg"
    truncate(victim)  # after indexing: the header still reads, the pixels do not
    pids = []
    real = train_mod.batch_source

    def spy(*a, **k):
        source = real(*a, **k)
        pids.extend(source.worker_pids)
        return source

    monkeypatch.setattr(train_mod, "batch_source", spy)
    with pytest.raises(BadImageError) as err:
        train_worker(image_config(run, "image_folder", root, steps=8, loader_workers=2))
    text = str(err.value)
    assert str(victim) in text and "dataset.skip_bad=true" in text and "\n" not in text
    assert text.endswith(f"last good checkpoint: {run / 'checkpoints' / 'step_0000004'}"), text
    assert checkpoint.newest(run / "checkpoints").endswith("step_0000004")  # nothing was written after it
    assert len(pids) == 2 and not any(alive(p) for p in pids), "loader workers outlived the failed run"


# ------------------------------------------------------------------------------------------- metrics
def test_read_batches_streams_any_dataset_in_chunks(tree, fashion_root):
    ds = FolderDataset(tree, resolution=32, progress=False)
    idx = torch.tensor([5, 0, 17, 3, 9, 41, 2])
    chunks = list(data.read_batches(ds, idx, batch_size=3, num_workers=1))
    assert [len(x) for x, _ in chunks] == [3, 3, 1]
    x, y = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
    items = [ds.item(int(i)) for i in idx]
    assert torch.equal(x, torch.stack([a for a, _ in items]).float().div(127.5).sub(1.0))
    assert y.tolist() == [b for _, b in items]
    mem = data.load(data.locate(DatasetConfig(root=fashion_root)))
    (mx, my), = data.read_batches(mem, idx, batch_size=10)
    assert torch.equal(mx, mem.batch(idx, torch.device("cpu"))) and torch.equal(my, mem.labels[idx])


def test_image_metrics_on_a_folder_read_real_images_through_the_dataset(tree, tmp_path, monkeypatch):
    from distgan.metrics import Evaluator
    from distgan.metrics.classifier import ClassifierSettings
    from distgan.models import build_models

    monkeypatch.setenv("DISTGAN_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    cfg = image_config(tmp_path / "run", "image_folder", tree)
    cfg = replace(cfg, dataset=data.locate(cfg.dataset))
    monkeypatch.setattr(data.MemoryDataset, "batch", lambda *a: pytest.fail("a folder read as a MemoryDataset"))
    settings = ClassifierSettings(epochs=1, batch_size=16, train_samples=48, real_samples=30)
    G, _ = build_models(cfg.model, (3, 32, 32))
    scores = Evaluator(cfg, torch.device("cpu"), num_samples=30, settings=settings)(G.eval())
    assert np.isfinite(scores["fd"]) and scores["fd"] > 0
    assert len(list((tmp_path / "cache").glob("image_folder-32-*.pt"))) == 2  # the classifier, the real features


# ------------------------------------------------------------------------------------------- formats
def test_cifar10_batches_are_read_as_torchvision_reads_them(tmp_path, monkeypatch):
    import torchvision

    write_cifar10(tmp_path, per_batch=12)
    cfg = data.locate(DatasetConfig(name="cifar10", root=str(tmp_path)))
    ours, test = data.load(cfg), data.memory.load_torchvision(cfg, train=False)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a: True)  # md5s of the real set
    theirs = torchvision.datasets.CIFAR10(str(tmp_path), train=True)
    assert torch.equal(ours.x, torch.as_tensor(theirs.data).permute(0, 3, 1, 2))
    assert ours.labels.tolist() == theirs.targets and ours.num_classes == len(theirs.classes) == 10
    assert len(test) == 12 and len(ours) == 60


def test_a_crafted_cifar10_pickle_runs_no_code(tmp_path):
    import pickle

    write_cifar10(tmp_path, per_batch=4)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(UserError, match=r"cannot read cifar10 .*refusing to load posix\.system"):
        data.load(data.locate(DatasetConfig(name="cifar10", root=str(tmp_path))))
    assert not marker.exists()
