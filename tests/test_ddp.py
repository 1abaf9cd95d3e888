"""DDP correctness on 2 plain gloo processes (no Ray): the real training loop, tiny settings."""

from __future__ import annotations

import pytest

from distgan.config import Config
from distgan.testing import gloo
from distgan.train import Hooks, train_worker


class Capture(Hooks):
    def end(self, G, D):
        self.weights = {f"G.{k}": v.detach().clone() for k, v in G.state_dict().items()}
        self.weights.update({f"D.{k}": v.detach().clone() for k, v in D.state_dict().items()})


def tiny_config(run_dir: str, data_root: str, model: str = "mlp", steps: int = 3, norm: str = "none") -> Config:
    cfg = Config()
    cfg.run_dir = run_dir
    cfg.resume = "never"
    cfg.dataset.root = data_root
    cfg.model.name = model
    cfg.model.width = 8
    cfg.model.latent_dim = 16
    cfg.model.norm_g = cfg.model.norm_d = norm
    t = cfg.train
    t.steps, t.batch_size, t.seed = steps, 16, 7
    t.log_every = t.sample_every = t.checkpoint_every = steps
    t.num_sample_images = 4
    return cfg


def train_and_capture(cfg: Config):
    hooks = Capture()
    train_worker(cfg, hooks)
    return hooks.weights


def _max_diff(a: dict, b: dict, skip_buffers: bool = False) -> float:
    keys = [k for k in a if not (skip_buffers and ("running_" in k or "num_batches" in k))]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


def test_two_workers_equal_one_worker_and_ranks_identical(tmp_path, fashion_root):
    """1 worker x B and 2 workers x B/2 give the same steps (BN-free model); both ranks end identical."""
    one = train_and_capture(tiny_config(str(tmp_path / "one"), fashion_root))
    two = gloo.run(train_and_capture, 2, tiny_config(str(tmp_path / "two"), fashion_root))
    assert _max_diff(two[0], two[1]) == 0.0, "ranks hold different weights"
    assert _max_diff(one, two[0]) < 1e-5
    # and the run really trained: weights moved away from their initialisation
    init = train_and_capture(tiny_config(str(tmp_path / "zero"), fashion_root, steps=1))
    assert _max_diff(init, one) > 1e-4


def test_batchnorm_model_trains_under_ddp(tmp_path, fashion_root):
    """DCGAN with BatchNorm in G and D: no 'modified by an inplace operation' error; weights agree."""
    cfg = tiny_config(str(tmp_path / "bn"), fashion_root, model="dcgan", steps=4, norm="batch")
    ranks = gloo.run(train_and_capture, 2, cfg)
    # parameters agree exactly; BatchNorm running statistics are per rank by design
    assert _max_diff(ranks[0], ranks[1], skip_buffers=True) == 0.0
    assert any("running_mean" in k for k in ranks[0])
    assert (tmp_path / "bn" / "checkpoints" / "latest" / "state.pt").exists()


def test_indivisible_batch_is_rejected_before_training():
    from distgan.errors import UserError
    from distgan.launcher.preflight import check_config

    cfg = Config()
    cfg.cluster.num_workers = 3
    with pytest.raises(UserError, match="does not divide over 3 workers"):
        check_config(cfg)
