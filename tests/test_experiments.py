"""Every configs/experiment/ recipe composes, validates and trains a few steps end to end (in process,
through ``train_worker``; the Ray CLI path is tested elsewhere), and holds the settings its paper uses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distgan import checkpoint
from distgan.compose import CONFIG_DIR, compose, to_config
from distgan.launcher.preflight import check_config
from distgan.train import train_worker

RECIPES = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# what each recipe promises in its header and in docs/algorithms.md
PROMISES = {
    "dcgan_bce": {"model.name": "dcgan", "loss.name": "bce", "train.n_critic": 1, "train.beta1": 0.5},
    "sngan_hinge": {"model.name": "resnet", "loss.name": "hinge", "model.spectral_norm": True,
                    "train.n_critic": 5, "train.beta1": 0.0, "train.beta2": 0.9},
    "wgan_gp": {"loss.name": "wgan_gp", "loss.gp_weight": 10.0, "model.norm_d": "none", "train.n_critic": 5,
                "train.beta1": 0.0, "train.beta2": 0.9},
    "resnet_r1": {"model.name": "resnet", "loss.name": "bce", "train.r1_gamma": 10.0, "train.r1_interval": 16},
    "sngan_projection": {"model.name": "resnet", "model.conditional": True, "model.spectral_norm": True,
                         "loss.name": "hinge", "train.n_critic": 5},
    # the 2D mode-collapse protocol (docs/evaluation.md): small MLPs, ReLU in G, cosine decay, light lazy R1
    **{f"{ds}_mlp": {"model.name": "mlp", "dataset.name": ds, "model.activation_g": "relu", "train.r1_gamma": 0.1,
                     "train.lr_decay": "cosine", "train.lr_decay_start": 0.5} for ds in ("grid", "ring")},
    # StyleGAN2-ADA's paper256 (docs/algorithms.md)
    "stylegan2_256": {"model.name": "stylegan2", "loss.name": "bce", "dataset.name": "zip",
                      "dataset.resolution": 256, "model.resolution": 256, "model.channel_base": 16384,
                      "model.channel_max": 512, "model.mapping_layers": 8, "model.mbstd_group": 8,
                      "train.batch_size": 64, "train.r1_gamma": 1.0, "train.r1_interval": 16, "train.pl_weight": 2.0,
                      "train.pl_interval": 4, "train.pl_batch_shrink": 2, "train.style_mixing": 0.9,
                      "train.augment": "ada", "train.ada_target": 0.6, "train.ema_kimg": 20.0, "train.lr_g": 0.0025,
                      "train.lr_d": 0.0025, "train.beta1": 0.0, "train.beta2": 0.99, "train.precision": "bf16"},
    # a small StyleGAN2 for 2 CPU cores, after StyleGAN2-ADA's cifar configuration
    "stylegan2_fmnist32": {"model.name": "stylegan2", "dataset.name": "fashion_mnist", "dataset.resolution": 32,
                           "model.mapping_layers": 2, "train.lr_g": 0.0025, "train.beta1": 0.0, "train.beta2": 0.99},
    # R3GAN's five presets (brownvc/R3GAN train.py; docs/algorithms.md) and a small one for 2 CPU cores
    **{f"r3gan_{name}": {"model.name": "r3gan", "loss.name": "rpgan", "model.widths": widths,
                         "model.blocks": [2] * len(widths),
                         "model.cardinalities": cards, "model.conditional": cond, "model.latent_dim": 64,
                         "train.batch_size": batch, "train.r1_interval": 1, "train.r1_gamma": gamma[0],
                         "train.r2_gamma": gamma[0], "train.gamma_final": gamma[1], "train.lr_g": 2e-4,
                         "train.lr_final": 5e-5, "train.beta1": 0.0, "train.beta2": 0.9, "train.beta2_final": 0.99,
                         "train.schedule_kimg": kimg, "train.ema_kimg": 0.0, "train.ema_final_kimg": ema,
                         "train.augment": "r3gan", "train.augment_p_final": aug, "train.precision": "fp32",
                         "model.bf16_stages": 3 if len(widths) == 4 else 4}  # R3GAN's FP16Stages
       for name, widths, cards, cond, batch, gamma, kimg, ema, aug in [
           ("cifar10", [768] * 4, [96] * 4, True, 512, (0.05, 0.005), 20000, 5000, 0.55),
           ("ffhq64", [768] * 4 + [384], [96] * 4 + [48], False, 256, (2.0, 0.2), 20000, 500, 0.3),
           ("ffhq256", [768] * 4 + [384, 192, 96], [96] * 4 + [48, 24, 12], False, 256, (150.0, 15.0), 20000, 500, 0.3),
           ("imagenet32", [1536] * 4, [96] * 4, True, 4096, (0.5, 0.05), 200000, 50000, 0.5),
           ("imagenet64", [1536] * 5, [96] * 5, True, 4096, (1.0, 0.1), 200000, 50000, 0.4)]},
    "r3gan_fmnist32": {"model.name": "r3gan", "loss.name": "rpgan", "dataset.name": "fashion_mnist",
                       "dataset.resolution": 32, "train.r1_interval": 1, "train.beta1": 0.0},
}
# what a recipe needs beyond TINY to train 2 steps here: the 256 px recipe on Fashion-MNIST at 32 px, narrow
SMOKE = {"stylegan2_256": ["dataset=fashion_mnist", "dataset.resolution=32", "model.resolution=32",
                           "model.channel_base=256", "model.channel_max=16", "model.mapping_layers=2", "model.w_dim=16",
                           "train.batch_size=16"],
         # R3GAN's recipes on Fashion-MNIST at 32 px, narrow (4 stages of width 8, one block each, 2 in bf16)
         **{f"r3gan_{n}": ["dataset=fashion_mnist", "dataset.resolution=32", "model.widths=[8,8,8,8]",
                           "model.cardinalities=[2,2,2,2]", "model.blocks=[1,1,1,1]", "model.bf16_stages=2",
                           "train.augment_p=0.5", "dataset.xflip=false"]
            for n in ("cifar10", "ffhq64", "ffhq256", "imagenet32", "imagenet64")},
         "r3gan_fmnist32": ["model.widths=[8,8,8,8]", "model.cardinalities=[2,2,2,2]"]}
TINY = ["train.steps=2", "train.batch_size=8", "train.log_every=1", "train.sample_every=2",
        "train.checkpoint_every=2", "train.num_sample_images=10", "model.width=4", "model.latent_dim=8",
        "resume=never"]


def compose_recipe(name: str, overrides: list[str]):
    return compose([f"experiment={name}", *overrides])


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_holds_its_promises_as_shipped(name):
    cfg = to_config(compose_recipe(name, []), "/nonexistent/run")
    for key, value in PROMISES[name].items():
        assert _get(cfg, key) == value, f"{name}: {key}"


def test_every_recipe_is_documented_and_promised():
    assert set(RECIPES) == set(PROMISES), "add the new recipe to PROMISES and docs/algorithms.md"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "algorithms.md").read_text()
    for name in RECIPES:
        assert f"experiment={name}" in doc
        assert "# @package _global_" in (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_end_to_end(name, tmp_path, fashion_root):
    overrides = [*TINY, *SMOKE.get(name, []), f"dataset.root={fashion_root}"]
    cfg = to_config(compose_recipe(name, overrides), str(tmp_path / "run"))
    check_config(cfg, cuda_devices=0)
    assert cfg.experiment == name
    for key, value in PROMISES[name].items():
        if not any(o.startswith(f"{key}=") or o.startswith(f"{key.split('.')[0]}=") for o in overrides):
            assert _get(cfg, key) == value, f"{name}: {key}"

    metrics = train_worker(cfg)

    assert metrics["step"] == 2
    assert all(math.isfinite(metrics[f"mean/{k}"]) for k in ("loss/D", "loss/G", "D/real", "D/fake"))
    assert Path(metrics["sample"]).is_file()
    state = checkpoint.load(metrics["checkpoint"])
    assert state["step"] == 2 and state["config"]["experiment"] == name
    if cfg.model.conditional:  # a conditional checkpoint records its classes and the grid's labels
        assert state["num_classes"] == 10 and state["config"]["dataset"]["num_classes"] == 10
        assert state["fixed_y"].tolist() == list(range(10))  # 10 grid images: one per class row
    if cfg.train.ema_kimg > 0:  # samples and checkpoints carry an EMA generator that differs from G
        assert state["G_ema"] is not None
        assert any(not torch.equal(state["G_ema"][k], v) for k, v in state["G"].items() if v.is_floating_point())
    if cfg.train.augment == "ada":  # ADA's p and the path-length mean travel with the checkpoint
        assert state["augment"] is not None and 0 <= state["augment"]["p"] <= 1
    if cfg.train.pl_weight > 0:
        assert state["path_length"]["pl_mean"] > 0
