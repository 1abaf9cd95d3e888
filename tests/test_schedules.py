"""R3GAN's cosine schedules (distgan/schedules.py): the formula against hand-computed values and R3GAN's
own definition, warm-up and hold, what each setting schedules, and the config's rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distgan.config import Config, TrainConfig, validate
from distgan.errors import UserError
from distgan.schedules import at, cosine_decay


def r3gan_reference(cur_nimg, base_value, total_nimg, final_value=0.0, warmup_value=0.0, warmup_nimg=0,
                    hold_base_value_nimg=0):
    """R3GAN's training_loop.cosine_decay_with_warmup, restated with numpy for comparison."""
    start = warmup_nimg + hold_base_value_nimg
    decay = 0.5 * (1 + np.cos(np.pi * (cur_nimg - start) / float(total_nimg - start)))
    value = base_value + (1 - decay) * (final_value - base_value)
    if hold_base_value_nimg > 0:
        value = np.where(cur_nimg > start, value, base_value)
    if warmup_nimg > 0:
        value = np.where(cur_nimg < warmup_nimg, (base_value - warmup_value) / warmup_nimg * cur_nimg + warmup_value,
                         value)
    return float(np.where(cur_nimg > total_nimg, final_value, value))


def test_cosine_by_hand():
    assert cosine_decay(0, 2e-4, 5e-5, 1000) == pytest.approx(2e-4)
    assert cosine_decay(500, 2e-4, 5e-5, 1000) == pytest.approx((2e-4 + 5e-5) / 2)  # half way: the mean
    assert cosine_decay(250, 0.9, 0.99, 1000) == pytest.approx(0.9 + 0.09 * (1 - math.cos(math.pi / 4)) / 2)
    assert cosine_decay(1000, 0.9, 0.99, 1000) == pytest.approx(0.99)
    assert cosine_decay(5000, 0.9, 0.99, 1000) == 0.99  # after the schedule: the final value


@pytest.mark.parametrize("warmup, hold", [(0, 0), (100, 0), (0, 200), (100, 200)])
def test_matches_r3gans_definition(warmup, hold):
    for nimg in [0, 1, 50, 99, 100, 101, 250, 299, 300, 301, 640, 999, 1000, 1001, 4000]:
        mine = cosine_decay(nimg, 0.5, 0.05, 1000, 0.1, warmup, hold)
        ref = r3gan_reference(nimg, 0.5, 1000, 0.05, 0.1, warmup, hold)
        assert mine == pytest.approx(ref, abs=1e-12), nimg


def cfg(**kw) -> TrainConfig:
    t = dict(batch_size=100, lr_g=2e-4, lr_d=4e-4, beta2=0.9, r1_gamma=2.0, r2_gamma=1.0, ema_kimg=0.0,
             augment="r3gan", augment_p=0.0, schedule_kimg=10.0, lr_final=5e-5, beta2_final=0.99, gamma_final=0.2,
             ema_final_kimg=0.5, augment_p_final=0.3)
    t.update(kw)
    return TrainConfig(**t)


def test_values_over_images_not_steps():
    t = cfg()
    start, mid, end = at(t, 0), at(t, 50), at(t, 100)  # 0, 5,000 and 10,000 images
    assert (start.lr_g, start.lr_d, start.beta2, start.r1_gamma, start.r2_gamma, start.ema_nimg, start.aug_p) == \
        pytest.approx((2e-4, 4e-4, 0.9, 2.0, 1.0, 0.0, 0.0))
    assert (end.lr_g, end.lr_d, end.beta2, end.r1_gamma, end.r2_gamma, end.ema_nimg, end.aug_p) == \
        pytest.approx((5e-5, 1e-4, 0.99, 0.2, 0.1, 500.0, 0.3))  # D's rate and R2 keep their ratios
    assert mid.lr_g == pytest.approx((2e-4 + 5e-5) / 2) and mid.aug_p == pytest.approx(0.15)
    # the same images at another batch: the same values
    assert at(cfg(batch_size=50), 100).lr_g == pytest.approx(mid.lr_g)
    assert mid.scalars() == pytest.approx({"sched/lr": mid.lr_g, "sched/beta2": mid.beta2, "sched/gamma": 1.1,
                                           "sched/ema_kimg": 0.25, "sched/aug_p": 0.15})
    assert start.ema_beta(100) == 0.0 and end.ema_beta(100) == pytest.approx(0.5 ** (100 / 500))


def test_nulls_keep_values_constant_and_no_schedule_is_none():
    t = cfg(lr_final=None, beta2_final=None, ema_final_kimg=None, augment_p_final=None)
    v = at(t, 70)
    assert (v.lr_g, v.lr_d, v.beta2, v.ema_nimg, v.aug_p) == (2e-4, 4e-4, 0.9, None, None)
    assert v.r1_gamma < 2.0  # gamma still scheduled
    assert at(TrainConfig(), 10) is None


def test_warmup_and_hold():
    t = cfg(schedule_warmup_kimg=1.0, schedule_hold_kimg=2.0)
    assert at(t, 5).lr_g == pytest.approx(1e-4)  # half way through the warm-up, from 0
    assert at(t, 5).beta2 == 0.9 and at(t, 25).lr_g == pytest.approx(2e-4)  # held
    assert at(t, 30).r1_gamma == 2.0 and at(t, 31).r1_gamma < 2.0  # the decay starts after 3,000 images


@pytest.mark.parametrize("kw, message", [
    (dict(schedule_kimg=-1.0), "train.schedule_kimg must be positive"),
    (dict(schedule_kimg=None), "needs a schedule length"),
    (dict(schedule_warmup_kimg=6.0, schedule_hold_kimg=4.0), "must be shorter than"),
    (dict(lr_decay="cosine"), "both schedule the learning rate"),
    (dict(beta2_final=1.0), "train.beta2_final must be in"),
    (dict(gamma_final=-0.1), "train.gamma_final must be >= 0"),
    (dict(r1_gamma=0.0, r2_gamma=0.0), "train.gamma_final schedules R1/R2"),
    (dict(augment="ada"), "train.augment=ada has none"),
    (dict(augment_p_final=1.5), "train.augment_p_final must be in"),
])
def test_bad_schedules_are_one_line(kw, message):
    with pytest.raises(UserError, match=message) as e:
        validate(Config(train=cfg(**kw)), 1)
    assert "\n" not in str(e.value)
