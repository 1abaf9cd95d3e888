"""What a ``tune=`` search is, before anything starts: its metric (what the trials log, min or max), its
checks (every trial's config through the single run's pre-flight), each trial's config, and Ray Tune's
search space and scheduler. Imports neither torch nor Ray at module level; distgan/launcher/tune.py runs
the search (docs/tune.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from distgan.config import Config, TuneConfig, parse_space
from distgan.errors import UserError

MAXIMISED = ("modes", "high_quality", "D/real", "precision", "recall", "class_coverage", "classes", "img_per_sec")


# ------------------------------------------------------------------------------------------- the metric
def resolve_metric(cfg: Config) -> tuple[str, str, str]:
    """(name, mode, what to read in a metrics.jsonl row) of ``tune.metric``; a metric no trial logs is one
    UserError naming what to set."""
    from distgan import data
    from distgan.train import REG_STATS, STAT_NAMES

    t, train = cfg.tune, cfg.train
    points = data.spec(cfg.dataset.name).kind == "points"
    inception = cfg.metrics.features == "inception"
    name = t.metric
    if name == "auto":
        name = "reverse_kl" if points else "fid" if inception else "fd"
    scores = (("modes", "high_quality", "reverse_kl") if points else
              ("fid", "kid", "precision", "recall") if inception else
              ("fd", "kid", "kid_std", "precision", "recall", "class_kl", "class_coverage", "classes"))
    every_score = {"modes", "high_quality", "reverse_kl", "fid", "kid", "kid_std", "precision", "recall", "fd",
                   "class_kl", "class_coverage", "classes"}
    scalars = {*STAT_NAMES, *(n for n, _, on in REG_STATS if on(train)), "img_per_sec", "data_wait_ms"}
    if train.augment == "ada":
        scalars |= {"aug/p", "aug/rt"}
    if name in scores:
        if not train.eval_every:
            raise UserError(f"tune.metric={name}: no trial evaluates (train.eval_every=0); set train.eval_every=N "
                            "(steps between evaluations, e.g. 2000) or a logged scalar such as tune.metric=loss/G")
        if train.eval_mode != "inline":
            raise UserError(f"tune.metric={name}: train.eval_mode=async scores outside the trials; use "
                            "train.eval_mode=inline for a search")
        row = f"metrics/{name}" if name not in ("fid", "kid") else f"metrics/{name}*"
    elif name in every_score:
        what = ("the 2D mode protocol (modes, high_quality, reverse_kl)" if points else
                f"metrics.features={cfg.metrics.features} ({', '.join(scores)})")
        fix = "metrics.features=inception" if name in ("fid",) and not points else "another tune.metric"
        raise UserError(f"tune.metric={name}: no trial logs it: dataset={cfg.dataset.name} is scored by {what}; "
                        f"set {fix}")
    elif name in scalars:
        row = name if name in ("img_per_sec", "data_wait_ms") or name.startswith("aug/") else f"mean/{name}"
    else:
        known = sorted(scalars) + ([*scores] if train.eval_every else [])
        raise UserError(f"unknown tune.metric {name!r}: no trial logs it; choose one of: {', '.join(known)} "
                        "(or auto)")
    base = name.split("/")[-1]
    mode = t.mode or ("max" if base in MAXIMISED or name in MAXIMISED else "min")
    return name, mode, row


def metric_value(row: dict, key: str) -> float | None:
    """The metric in one metrics.jsonl row (``metrics/fid*``: the FID whatever its N), or None."""
    if key.endswith("*"):
        key = next((k for k in row if k.startswith(key[:-1]) and not k.startswith(key[:-1] + "_")), None)
        if key is None:
            return None
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -------------------------------------------------------------------------------------------- checks
def trial_workers(t: TuneConfig) -> int:
    return t.trial_workers or t.trial_gpus or 1


def node_gpus(cfg: Config, cuda_devices: int) -> int:
    return cfg.cluster.gpus_per_node if cfg.cluster.name == "slurm" else cuda_devices


def check(cfg: Config, cuda_devices: int, check_config: Callable[[Config, int], Config]) -> None:
    """The search's rules that need more than the config's own (distgan.config._check_tune): the metric
    against what the trials log, the trials' GPUs against a node's, and every trial's config (each value of a
    choice or grid, the bounds of a range) through ``check_config``, the pre-flight's checks of a single run
    (handed in: the pre-flight calls this)."""
    t = cfg.tune
    gpus = node_gpus(cfg, cuda_devices)
    if t.trial_gpus > gpus:
        where = f"cluster.gpus_per_node={gpus}" if cfg.cluster.name == "slurm" else f"{gpus} GPU(s) on this machine"
        raise UserError(f"tune.trial_gpus={t.trial_gpus} is more than a node has ({where}); "
                        f"set tune.trial_gpus<={gpus}")
    resolve_metric(cfg)
    values = {key: parse_space(key, text) for key, text in t.params.items()}
    first = {key: vals[0] for key, (_, vals) in values.items()}
    for key, (_, vals) in values.items():
        for value in vals:
            check_config(trial_config(cfg, {**first, key: value}, cfg.run_dir), cuda_devices)


def trial_config(base: Config, params: dict[str, Any], run_dir: str | Path) -> Config:
    """``base`` with the trial's values (typed as the schema says: a bad value is one UserError), one
    ``cluster=local``-style Ray Train job of ``tune.trial_workers`` workers in ``run_dir``, no search."""
    from omegaconf import OmegaConf

    from distgan.config import config_key_known

    node = OmegaConf.structured(base)
    for key, value in params.items():
        if not config_key_known(key):
            raise UserError(f"tune.params: unknown key {key!r}")
        current = OmegaConf.select(node, key)
        if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
            value = int(round(value))  # PBT's x0.8 / x1.2 of an integer setting
        try:
            OmegaConf.update(node, key, value, merge=False)
        except Exception as e:  # noqa: BLE001 - omegaconf's validation errors: a value of the wrong type
            raise UserError(f"tune.params: {key}={value!r} does not fit the setting "
                            f"({str(e).splitlines()[0]})") from None
    cfg: Config = OmegaConf.to_object(node)
    t = base.tune
    cluster = replace(cfg.cluster, name="local", num_workers=trial_workers(t), use_gpu=t.trial_gpus > 0)
    train = cfg.train
    if t.name == "pbt":  # every report carries a checkpoint: checkpoint at each reporting tick
        train = replace(train, checkpoint_every=train.eval_every or train.log_every)
    return replace(cfg, cluster=cluster, train=train, tune=TuneConfig(), run_dir=str(Path(run_dir).resolve()),
                   resume="auto")


# ----------------------------------------------------------------------------------- search space
def search_space(t: TuneConfig) -> dict[str, Any]:
    """tune.params as Ray Tune's own domains."""
    from ray import tune

    space = {}
    for key, text in t.params.items():
        kind, values = parse_space(key, text)
        space[key] = {"choice": lambda v: tune.choice(v), "grid": lambda v: tune.grid_search(v),
                      "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}[kind](values)
    return space


def max_kimg(cfg: Config) -> float:
    return cfg.train.steps * cfg.train.batch_size / 1000


def report_kimg(cfg: Config) -> float:
    """Thousands of images between two reports of the metric (an evaluation, or a log tick)."""
    name, _, row = resolve_metric(cfg)
    steps = cfg.train.eval_every if row.startswith("metrics/") else cfg.train.log_every
    if cfg.tune.name == "pbt":
        steps = cfg.train.eval_every or cfg.train.log_every
    return min(steps, cfg.train.steps) * cfg.train.batch_size / 1000


def scheduler(cfg: Config, mode: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    t, total, first = cfg.tune, max_kimg(cfg), report_kimg(cfg)
    if t.name == "asha":
        # max_t a little past the end: a trial that reaches train.steps ends by itself, never by a stop
        return ASHAScheduler(time_attr="kimg", max_t=total * 1.001, grace_period=min(t.grace_kimg or first, total),
                             reduction_factor=t.reduction_factor)
    if t.name == "pbt":
        space = search_space(t)
        keys = t.perturb if t.perturb is not None else list(t.params)
        return PopulationBasedTraining(time_attr="kimg", perturbation_interval=t.perturbation_kimg or first,
                                       hyperparam_mutations={k: space[k] for k in keys}, quantile_fraction=0.25,
                                       resample_probability=0.25, synch=False)
    return FIFOScheduler()
