"""Training from a trained network (issue 21): ``init=`` from an NVIDIA-format pickle and from a distgan
checkpoint (weights of G, D, G_ema; step 0, new optimizers, ADA p from its start), ``train.freeze_d``
(StyleGAN2-ADA's Freeze-D) on 1 and 2 gloo workers, NVIDIA's Adam correction for model=stylegan2 and its
fake labels drawn from the training set's label distribution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distgan import checkpoint, warm_start
from distgan.compose import load_config
from distgan.config import TrainConfig
from distgan.errors import UserError
from distgan.launcher.preflight import check_config, preflight
from distgan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from distgan.optim import build_optimizers
from distgan.pretrained.nvidia import to_nvidia
from distgan.rng import local_labels
from distgan.testing import gloo
from distgan.train import Hooks, Training, train_worker
from tests import nvidia_pickle as nvp

RES, Z, W = 32, 16, 16
TINY = ["dataset.resolution=32", "cluster.num_workers=1", "train.batch_size=8", "train.steps=3", "train.log_every=3",
        "train.sample_every=3", "train.checkpoint_every=3", "train.num_sample_images=4", "train.r1_gamma=1",
        "train.r1_interval=2", "train.augment=ada", "train.augment_p=0.2", "train.ada_kimg=0.1",
        "train.ema_kimg=0.05", "train.lr_g=0.01", "train.lr_d=0.01", "train.beta1=0", "train.beta2=0.99"]
FROZEN = ["blocks.0.fromrgb", "blocks.0.conv0", "blocks.0.conv1", "blocks.0.skip"]  # b32's four layers


def _nets(seed=1):
    torch.manual_seed(seed)
    G = StyleGAN2Generator(RES, 1, 256, 16, 2, z_dim=Z, w_dim=W)
    D = StyleGAN2Discriminator(RES, 1, 256, 16)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    return G, D


@pytest.fixture(scope="module")
def pickle_path(tmp_path_factory):
    """An unconditional 1-channel 32 px StyleGAN2 snapshot in NVIDIA's format, and its networks."""
    G, D = _nets()
    path = tmp_path_factory.mktemp("init") / "network-snapshot-000200.pkl"
    nvp.write_snapshot(path, to_nvidia(G.state_dict(), "G", RES), to_nvidia(D.state_dict(), "D", RES),
                       nvp.g_kwargs(Z, W, RES, 1, 0, 2, 256, 16, None), nvp.d_kwargs(RES, 1, 0, 256, 16, None, 4))
    return path, G, D


def _cfg(run_dir: Path, root: str, *extra: str):
    return check_config(load_config([*TINY, f"dataset.root={root}", *extra], str(run_dir)))


# ------------------------------------------------------------------------------------------ init=
def test_init_from_a_pickle_takes_its_model_and_weights_and_starts_at_zero(pickle_path, fashion_root, tmp_path):
    path, G, D = pickle_path
    run = Training(_cfg(tmp_path / "run", fashion_root, f"init={path}"), Hooks())
    assert run.cfg.model.name == "stylegan2" and run.cfg.model.latent_dim == Z and run.cfg.model.channel_max == 16
    run.resume()
    for mine, theirs in ((run.G, G), (run.G_ema, G), (run.D, D)):
        for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert run.step == 0 and run.step_state == {} and not run.opt_g.state and not run.opt_d.state


def test_init_from_a_distgan_checkpoint(fashion_root, tmp_path):
    src = tmp_path / "source"
    train_worker(_cfg(src, fashion_root, "model=stylegan2", "model.latent_dim=16", "model.w_dim=16",
                      "model.channel_base=256", "model.channel_max=16", "model.mapping_layers=2"))
    saved = checkpoint.load(src / "checkpoints")
    # no model= typed: the model's settings come from the checkpoint's config
    run = Training(_cfg(tmp_path / "run", fashion_root, f"init={src}", "train.augment_p=0.5"), Hooks())
    run.resume()
    for name, net in (("G", run.G), ("D", run.D), ("G_ema", run.G_ema)):
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, saved[name][k], rtol=0, atol=0, msg=f"{name}.{k}")
    assert saved["step"] == 3 and run.step == 0 and not run.opt_g.state
    run.prepare()
    try:
        assert run.gan.augment.state_dict()["p"] == 0.5  # ADA's p from the new run's start, not the init's
    finally:
        run.batches.close()
        run.writer.close()


def test_the_start_up_says_init_is_used_then_ignored_once_the_run_has_checkpoints(pickle_path, fashion_root,
                                                                                   tmp_path):
    path, _, _ = pickle_path
    cfg = load_config([*TINY, f"dataset.root={fashion_root}", f"init={path}", "train.steps=1"], str(tmp_path / "r"))
    checked = preflight(cfg, typed=set())
    assert checked.resume_note.startswith(f"starting from init={path}")
    assert checked.cfg.model.name == "stylegan2" and checked.cfg.model.w_dim == W
    train_worker(checked.cfg)
    cfg2 = load_config([*TINY, f"dataset.root={fashion_root}", f"init={path}", "train.steps=2"], str(tmp_path / "r"))
    note = preflight(cfg2, typed=set()).resume_note
    assert "resuming from checkpoints/step_0000001" in note and f"init={path} ignored" in note


def test_typed_model_keys_that_contradict_the_init_are_refused(pickle_path, fashion_root, tmp_path):
    path, _, _ = pickle_path
    cfg = load_config([*TINY, f"dataset.root={fashion_root}", f"init={path}", "model.latent_dim=64"], str(tmp_path))
    with pytest.raises(UserError, match="model.latent_dim=64 contradicts"):
        warm_start.configure(cfg, typed={"latent_dim"})
    with pytest.raises(UserError, match="model=dcgan contradicts"):
        warm_start.configure(load_config([f"init={path}"], str(tmp_path)), typed={"name"})
    # a setting no weight depends on may be set; an untyped one comes from the pickle
    cfg = load_config([f"init={path}", "model=stylegan2", "model.mbstd_group=2"], str(tmp_path))
    assert warm_start.configure(cfg, typed={"name", "mbstd_group"}).model.mbstd_group == 2
    cfg = load_config([f"init={path}", "model.mbstd_group=2"], str(tmp_path))
    assert warm_start.configure(cfg, typed=set()).model.mbstd_group == 4


def test_a_data_set_that_does_not_fit_the_init_is_one_line(pickle_path, tmp_path):
    path, _, _ = pickle_path
    cfg = load_config([f"init={path}", "dataset=zip", "dataset.root=mine.zip"], str(tmp_path))
    with pytest.raises(UserError, match="resolution=32"):
        warm_start.check_data(cfg, resolution=64)
    with pytest.raises(UserError, match="1-channel network: set dataset.channels=1"):
        warm_start.check_data(cfg, shape=(3, 32, 32), classes=0)
    warm_start.check_data(cfg, shape=(1, 32, 32), classes=7)  # an unconditional init takes any labels


# ------------------------------------------------------------------------------------------ Freeze-D
def test_freeze_d_counts_nvidias_layers_from_the_highest_resolution():
    _, D = _nets()
    names = [n for n, _, _ in warm_start.d_layers(D)]
    assert names[:5] == [*FROZEN, "blocks.1.conv0"] and len(names) == 4 + 3 * 2  # 32, 16, 8 px blocks
    frozen = warm_start.freeze(D, 5)
    assert frozen[0] == "blocks.0.fromrgb (b32.fromrgb)" and frozen[4] == "blocks.1.conv0 (b16.conv0)"
    params = {n for n, _ in D.named_parameters()}
    assert "blocks.0.skip.weight" not in params and "blocks.1.conv0.bias" not in params
    assert "blocks.1.conv1.weight" in params and "blocks.0.skip.weight" in D.state_dict()
    D.requires_grad_(True)  # the phases' requires_grad_ cannot thaw a buffer
    assert "blocks.0.conv0.weight" not in {n for n, p in D.named_parameters() if p.requires_grad}


def test_freeze_d_needs_stylegan2_blocks(tmp_path):
    from distgan.models import build_models

    cfg = load_config(["train.freeze_d=2"], str(tmp_path))
    _, D = build_models(cfg.model, (1, 28, 28))
    with pytest.raises(UserError, match="model=dcgan has none"):
        warm_start.check_freeze(cfg, D)
    _, D = _nets()
    with pytest.raises(UserError, match="at most 10"):
        warm_start.check_freeze(load_config(["train.freeze_d=11"], str(tmp_path)), D)


class _Keep(Hooks):
    def end(self, G, D):
        self.G = {k: v.detach().clone() for k, v in G.state_dict().items()}
        self.D = {k: v.detach().clone() for k, v in D.state_dict().items()}


def _fine_tune(run_dir: str, root: str, init: str):
    torch.set_num_threads(1)
    from distgan import dist

    cfg = _cfg(Path(run_dir) / f"w{dist.world_size()}", root, f"init={init}", "train.freeze_d=4")
    hooks = _Keep()
    train_worker(cfg, hooks)
    return hooks.G, hooks.D


def test_init_and_freeze_d_on_1_and_2_gloo_workers(pickle_path, fashion_root, tmp_path):
    """The same weights on 1 and 2 workers; the frozen b32 layers stay bit-identical to the pickle's,
    the rest of D moves."""
    path, _, D0 = pickle_path
    (G1, D1), = gloo.run(_fine_tune, 1, str(tmp_path), fashion_root, str(path))
    (G2a, D2a), (G2b, D2b) = gloo.run(_fine_tune, 2, str(tmp_path), fashion_root, str(path))
    start = D0.state_dict()
    for k in start:
        if any(k.startswith(f + ".") for f in FROZEN):
            for d in (D1, D2a, D2b):
                assert torch.equal(d[k], start[k]), k
    assert not torch.equal(D1["blocks.1.conv0.weight"], start["blocks.1.conv0.weight"])
    for one, two in ((G1, G2a), (D1, D2a), (G2a, G2b), (D2a, D2b)):
        for k in one:
            # float rounding only: the shared (non-fused) modulated conv sums its weight gradient over the
            # batch inside the conv kernel, in another order for 32 than for 2 x 16 samples (~2e-5 seen)
            torch.testing.assert_close(one[k], two[k], rtol=0, atol=1e-4, msg=k)


def test_tensorboard_names_the_frozen_layers(pickle_path, fashion_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, _, _ = pickle_path
    train_worker(_cfg(tmp_path, fashion_root, f"init={path}", "train.freeze_d=2", "train.steps=1"))
    acc = EventAccumulator(str(tmp_path / "tb" / "global"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    tag = next(t for t in tags if "freeze_d" in t)
    text = acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert "blocks.0.fromrgb (b32.fromrgb)" in text and "blocks.0.conv0 (b32.conv0)" in text
    assert "conv1" not in text


# ------------------------------------------------------------------------------------------ NVIDIA's training side
def test_stylegan2_always_gets_the_lazy_regularisation_adam_correction():
    G, D = _nets()
    t = TrainConfig(lr_g=0.0025, lr_d=0.0025, beta1=0.0, beta2=0.99, r1_gamma=0.1, pl_weight=0.0)
    opt_g, opt_d = build_optimizers(G, D, t, lazy_always=True)  # stylegan2_fmnist32: NVIDIA's cifar settings
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.002)
    assert opt_g.param_groups[0]["betas"][1] == pytest.approx(0.99 ** 0.8) == pytest.approx(0.991991, abs=1e-6)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.0025 * 16 / 17)
    opt_g, _ = build_optimizers(G, D, t)  # other models: only with the regulariser on
    assert opt_g.param_groups[0]["lr"] == 0.0025


def test_the_stylegan2_recipe_trains_g_at_nvidias_corrected_rate(fashion_root, tmp_path):
    cfg = check_config(load_config(["experiment=stylegan2_fmnist32", f"dataset.root={fashion_root}",
                                    "cluster.num_workers=1"], str(tmp_path)))
    run = Training(cfg, Hooks())
    assert run.opt_g.param_groups[0]["lr"] == pytest.approx(0.002)
    assert run.opt_g.param_groups[0]["betas"][1] == pytest.approx(0.99 ** 0.8)


def test_fake_labels_follow_the_data_and_do_not_depend_on_the_world_size():
    weights = torch.tensor([1.0, 0.0, 3.0])
    full = local_labels(0, 5, 7, 4000, 3, 0, 1, torch.device("cpu"), weights=weights)
    parts = [local_labels(0, 5, 7, 4000, 3, r, 4, torch.device("cpu"), weights=weights) for r in range(4)]
    assert torch.equal(torch.cat(parts), full)
    assert (full == 1).sum() == 0 and abs((full == 2).float().mean().item() - 0.75) < 0.03


def test_label_weights_are_the_training_sets_class_counts():
    from distgan.data.memory import MemoryDataset

    x = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    assert warm_start.label_weights(MemoryDataset(x, torch.tensor([0, 1, 2, 0, 1, 2]), 3)) is None  # balanced
    w = warm_start.label_weights(MemoryDataset(x, torch.tensor([0, 0, 0, 0, 1, 2]), 3))
    assert w.tolist() == [4.0, 1.0, 1.0]
    assert warm_start.label_weights(MemoryDataset(x, None, 0)) is None


# ------------------------------------------------------------------------------------------ resize_filter
def test_prepare_dataset_resize_filter_is_used_and_recorded(tree, tmp_path):
    import json
    import zipfile

    from distgan.config import DatasetConfig
    from distgan.data.prepare import prepare, recorded_filter
    from distgan.metrics.inception_metrics import dataset_key

    dest = tmp_path / "mine16.zip"
    keys, first = {}, {}
    for f in ("box", "lanczos"):
        prepare(tree, dest, 16, workers=1, progress=False, overwrite=True, resize_filter=f)
        with zipfile.ZipFile(dest) as zf:
            assert json.loads(zf.read("dataset.json"))["resize_filter"] == f
            first[f] = zf.read("00000/img00000000.png")
        assert recorded_filter(dest) == f
        keys[f] = dataset_key(DatasetConfig(name="zip", root=str(dest), resolution=16))
    assert first["box"] != first["lanczos"] and keys["box"] != keys["lanczos"]
    with pytest.raises(UserError, match="resize_filter=bicubic: use lanczos or box"):
        prepare(tree, tmp_path / "x.zip", 16, workers=1, progress=False, resize_filter="bicubic")
