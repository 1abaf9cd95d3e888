"""``tune=asha|pbt|grid|random``: a hyper-parameter search with Ray Tune inside one Ray cluster (docs/tune.md).

Every trial is a normal distgan run — the same Ray Train TorchTrainer as a single run (ray_train.fit), with
its own run directory ``<sweep>/trials/<trial id>`` — started by a Tune function trainable (Ray Train V2's
way of running Train in Tune: the trial function calls ``trainer.fit()``). The trial function follows the
run's ``metrics.jsonl`` and hands Tune the metric at each evaluation (``tune.report``), with the distgan
checkpoint of that tick for PBT. ASHA stops a trial by ending its trial actor; the nested trainer's
controller and workers are owned by it and end with it. PBT's exploit hands the worse trial the better
one's checkpoint folder (networks, optimizers, EMA, ADA's p): it is copied into the trial's own
``checkpoints/`` and the run resumes from it with the perturbed settings (an optimizer setting typed at
resume is applied: distgan.train.optimizer_changes).

The sweep directory (``hydra.run.dir``): ``tune/`` (Tune's experiment state: a rerun of the same command
resumes it with ``Tuner.restore``), ``trials/<id>/`` (run directories), ``results.csv``, ``results.md``,
``tb/hparams`` (TensorBoard's HParams over all trials). Imports neither torch nor Ray at module level. What the search
is (metric, checks, trial configs, Tune's space and scheduler) is distgan/launcher/tune_plan.py, which the
pre-flight checks before anything starts.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from distgan.config import Config, from_dict, parse_space, to_dict
from distgan.files import write_atomic
from distgan.launcher.tune_plan import (
    max_kimg,
    metric_value,
    resolve_metric,
    scheduler,
    search_space,
    trial_config,
    trial_workers,
)
from distgan.rundir import RunDir

log = logging.getLogger("distgan")

TUNE_DIR, TRIALS, RESULTS_CSV, RESULTS_MD, HPARAMS = "tune", "trials", "results.csv", "results.md", "tb/hparams"
TRIAL_RECORD = "tune.json"  # in a trial's run directory: its parameters and the checkpoints it was handed


# ------------------------------------------------------------------------------------------- a trial
def _adopt(ckpt, run_dir: RunDir) -> dict | None:
    """PBT's exploit: the checkpoint Tune hands a trial. Another trial's (its state names that trial's run
    directory) replaces this trial's own checkpoints, and the run resumes from it; the trial's own (a resumed
    search) needs nothing: resume=auto continues the run directory's newest."""
    import torch

    from distgan import checkpoint

    with ckpt.as_directory() as folder:
        folder = Path(folder)
        meta = checkpoint.read_meta(folder)
        if "step" not in meta:
            raise RuntimeError(f"the checkpoint PBT handed this trial is gone or incomplete: {folder}")
        step = int(meta["step"])
        state = torch.load(folder / checkpoint.STATE, map_location="cpu", weights_only=True, mmap=True)
        source = Path(state["config"]["run_dir"])
        del state
        if source == run_dir.path:
            return None
        root = run_dir.checkpoints
        root.mkdir(parents=True, exist_ok=True)
        for old in [*root.glob("step_*"), root / checkpoint.BEST]:
            shutil.rmtree(old, ignore_errors=True)
        (root / checkpoint.LATEST).unlink(missing_ok=True)
        target = root / f"step_{step:07d}"
        shutil.copytree(folder, target)
        (root / checkpoint.LATEST).symlink_to(target.name)
    return {"from": source.name, "step": step}


def _record(run_dir: RunDir, params: dict, exploit: dict | None) -> None:
    """``tune.json`` of a trial: its first and current parameters, and each checkpoint PBT handed it (from
    which trial, at which step, the parameters it continued with, and where its metrics.jsonl then stood)."""
    path = run_dir / TRIAL_RECORD
    record = json.loads(path.read_text()) if path.exists() else {"initial": params, "exploited": []}
    if exploit is not None:
        size = run_dir.metrics.stat().st_size if run_dir.metrics.exists() else 0
        record["exploited"].append({**exploit, "params": params, "metrics_offset": size})
    record["params"] = params
    write_atomic(path, json.dumps(record, indent=1, default=str))


def _trial(config: dict, base: dict, cuda_devices: int) -> None:
    """The Tune function trainable: one distgan run, its metric reported at every evaluation."""
    from omegaconf import OmegaConf
    from ray import tune

    from distgan.launcher.progress import read_progress
    from distgan.launcher.ray_train import fit, run_in_thread

    logging.basicConfig(level=logging.INFO)
    sweep = from_dict(base)
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(sweep, config, Path(sweep.run_dir) / TRIALS / trial_id)
    run_dir = RunDir(cfg.run_dir)
    _, _, key = resolve_metric(sweep)
    pbt = sweep.tune.name == "pbt"
    handed = tune.get_checkpoint()
    run_dir.create(OmegaConf.to_yaml(OmegaConf.structured(cfg)))  # as preflight.prepare_run_dir does
    exploit = _adopt(handed, run_dir) if handed is not None else None
    _record(run_dir, config, exploit)
    if exploit:
        log.info("trial %s: exploit: continuing from trial %s's checkpoint at step %d with %s", trial_id,
                 exploit["from"], exploit["step"], config)
    offset = run_dir.metrics.stat().st_size if run_dir.metrics.exists() else 0
    thread, box = run_in_thread(fit, cfg, cuda_devices)
    last_step = exploit["step"] if exploit else -1
    while True:
        alive = thread.is_alive()
        rows, offset = read_progress(run_dir.path, offset)
        for row in rows:
            value = metric_value(row, key)
            if value is None or row["step"] <= last_step or (pbt and "checkpoint" not in row):
                continue
            last_step = row["step"]
            metrics = {"metric": value, "kimg": row["step"] * cfg.train.batch_size / 1000, "step": row["step"]}
            checkpoint = tune.Checkpoint.from_directory(row["checkpoint"]) if pbt else None
            tune.report(metrics, checkpoint=checkpoint)  # ends this function when the scheduler stops the trial
        if not alive:
            break
        time.sleep(0.5)
    thread.join()
    if box["error"] is not None:
        raise box["error"]


# ------------------------------------------------------------------------------------------ the sweep
def reap_orphaned_placement_groups() -> int:
    """Remove the placement groups whose creator actor has died; returns how many.

    A scheduler stops (ASHA) or pauses (PBT) a trial by ending its trial actor; the trial's Ray Train
    controller, owned by it, ends with it, but the placement group holding the trial's workers' CPUs and GPUs
    lives as long as the driver's job (Ray's placement-group lifetime), so the next trial would wait for them
    forever. Ray Train's own cleaner asks the State API, which needs the dashboard distgan keeps off; the
    GCS's table says the same (``creator_actor_dead``). Tune's own placement groups are the driver's (no
    creator actor) and are left alone."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():  # private API: GCS's own table
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if pg.state == gcs_pb2.PlacementGroupTableData.REMOVED or pg.is_detached:
            continue
        if pg.creator_actor_dead and pg.creator_actor_id.strip(b"\xff\x00"):
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed += 1
    return removed


class _Lines:
    """A line per trial event on the driver (Tune's own tables are off), and the reaper of the placement
    groups of stopped trials (:func:`reap_orphaned_placement_groups`, every 2 s of the Tune loop)."""

    def __new__(cls, metric: str):
        from ray.tune import Callback

        class Lines(Callback):
            reaped_at = 0.0

            def on_step_begin(self, iteration, trials, **info):
                if time.monotonic() - self.reaped_at > 2.0:
                    self.reaped_at = time.monotonic()
                    try:
                        count = reap_orphaned_placement_groups()
                    except Exception as e:  # noqa: BLE001 - a private API: say so, never stop the search
                        log.warning("cannot reap stopped trials' placement groups: %s", e)
                        count = 0
                    if count:
                        log.info("freed the resources of %d stopped trial(s)", count)

            def on_trial_start(self, iteration, trials, trial, **info):
                print(f"trial {trial.trial_id} started: {_params_text(trial.config)}", flush=True)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                print(f"trial {trial.trial_id}: {result['kimg']:g} kimg  {metric} {result['metric']:.4g}", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info):
                print(f"trial {trial.trial_id} ended", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                print(f"trial {trial.trial_id} failed (its train.log and {TRIALS}/{trial.trial_id}/)", flush=True)

        return Lines()


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def startup(checked, startup_summary: Callable) -> str:
    """The start-up summary of a search: a trial's run as ``startup_summary`` (the pre-flight's) describes it
    (with the first value of each search space), then the search."""
    cfg, t = checked.cfg, checked.cfg.tune
    first = {key: parse_space(key, text)[1][0] for key, text in t.params.items()}
    trial = replace(checked, cfg=trial_config(cfg, first, cfg.run_dir))
    name, mode, _ = resolve_metric(cfg)
    spaces = ", ".join(f"{k}: {v}" for k, v in t.params.items())
    return (f"{startup_summary(trial)}\nsearch: tune={t.name}, {t.num_trials} trial(s) of {{{spaces}}}, "
            f"{name} ({mode}); trial run directories in {Path(cfg.run_dir) / TRIALS}")


def concurrency(cfg: Config, resources: dict) -> int:
    """Trials at once: tune.max_concurrent, else as many as the cluster's CPUs (GPUs) hold."""
    t = cfg.tune
    if t.max_concurrent:
        return t.max_concurrent
    fits = int(resources.get("CPU", 1) // (trial_workers(t) * cfg.cluster.cpus_per_worker))
    if t.trial_gpus:
        fits = min(fits, int(resources.get("GPU", 0) // t.trial_gpus))
    return max(1, fits)


def run_sweep(cfg: Config, cuda_devices: int) -> str:
    """The search on the connected Ray cluster; writes the results and returns the summary text."""
    import ray
    from ray import tune

    sweep = Path(cfg.run_dir)
    name, mode, _ = resolve_metric(cfg)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then silences Tune's tables: _Lines reports
    warnings.filterwarnings("ignore", message=".*reuse_actors.*")  # PBT's advice for class trainables
    trainable = tune.with_parameters(_trial, base=to_dict(cfg), cuda_devices=cuda_devices)
    # the trial's Ray Train workers hold its CPUs and GPUs; the trial function itself asks for a token amount of
    # memory (Tune refuses an empty request, and any CPU share would leave a worker's last CPU unschedulable)
    trainable = tune.with_resources(trainable, {"cpu": 0, "memory": 1 << 20})
    state = sweep / TUNE_DIR
    if tune.Tuner.can_restore(str(state)):
        print(f"resuming the search in {state}", flush=True)
        tuner = tune.Tuner.restore(str(state), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        limit = concurrency(cfg, ray.cluster_resources())
        tuner = tune.Tuner(
            trainable, param_space=search_space(cfg.tune),
            tune_config=tune.TuneConfig(metric="metric", mode=mode, scheduler=scheduler(cfg, mode),
                                        search_alg=BasicVariantGenerator(random_state=cfg.train.seed),
                                        num_samples=cfg.tune.num_trials, max_concurrent_trials=limit,
                                        trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(sweep), verbose=0,
                                      callbacks=[_Lines(name)],
                                      # pbt: every reported checkpoint stays until the search ends (an
                                      # exploit may hand any of them on while its trial trains ahead)
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
        )
        print(f"tune={cfg.tune.name}: {cfg.tune.num_trials} trial(s), {limit} at once, {name} ({mode}), "
              f"{trial_workers(cfg.tune)} worker(s) each; sweep directory {sweep}", flush=True)
    grid = tuner.fit()
    text = write_results(cfg, grid)
    errors = [r.error for r in grid if r.error is not None]
    if errors and len(errors) == len(grid):  # nothing trained: the first trial's error is the command's
        print(text, flush=True)
        raise errors[0]
    return text


def _status(cfg: Config, trial_dir: Path, kimg: float | None, error: BaseException | None) -> str:
    parts = []
    if error is not None:
        from distgan.errors import first_line
        from distgan.launcher.ray_train import root_cause

        cause = root_cause(error)
        parts.append(f"failed: {type(cause).__name__}: {first_line(cause, 100)}")
    elif kimg is not None and kimg >= max_kimg(cfg) - 1e-9:
        parts.append("finished")
    else:
        parts.append("stopped early")
    record = trial_dir / TRIAL_RECORD
    if record.exists():
        for ex in json.loads(record.read_text()).get("exploited", []):
            parts.append(f"exploited-from {ex['from']} at step {ex['step']}")
    return "; ".join(parts)


def write_results(cfg: Config, grid) -> str:
    """results.csv, results.md and TensorBoard HParams in the sweep directory; returns the table, the best
    trial and how to sample it."""
    sweep = Path(cfg.run_dir)
    name, mode, key = resolve_metric(cfg)
    keys = list(cfg.tune.params)
    rows = []
    for result in grid:
        m = result.metrics or {}
        trial_id = m.get("trial_id") or Path(result.path).name
        trial_dir = sweep / TRIALS / trial_id
        record = trial_dir / TRIAL_RECORD
        params = json.loads(record.read_text())["params"] if record.exists() else dict(result.config or {})
        best = _best_reported(trial_dir, key, mode)
        rows.append({"trial": trial_id, **{k: params.get(k) for k in keys}, name: m.get("metric"), f"best {name}": best,
                     "kimg": m.get("kimg"), "step": m.get("step"),
                     "status": _status(cfg, trial_dir, m.get("kimg"), result.error), "run_dir": str(trial_dir)})
    rows.sort(key=lambda r: r["trial"])
    columns = ["trial", *keys, name, f"best {name}", "kimg", "step", "status", "run_dir"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep / RESULTS_CSV, buf.getvalue())
    shown = [c for c in columns if c != "run_dir"]
    table = [f"| {' | '.join(shown)} |", f"|{'---|' * len(shown)}"]
    table += [f"| {' | '.join(_cell(r[c]) for c in shown)} |" for r in rows]
    scored = [r for r in rows if isinstance(r[name], (int, float)) and math.isfinite(r[name])]
    best = (min if mode == "min" else max)(scored, key=lambda r: r[name]) if scored else None
    lines = [f"tune={cfg.tune.name}: {len(rows)} trial(s), {name} ({mode}) at the last report", *table]
    if best is not None:
        ckpts = Path(best["run_dir"]) / "checkpoints"
        pick = ckpts / "best" if (ckpts / "best").exists() else ckpts / "latest"
        lines += ["", f"best trial    : {best['trial']} ({name} {_cell(best[name])}; "
                      f"{_params_text({k: best[k] for k in keys})})",
                  f"run directory : {best['run_dir']}",
                  f"sample it     : python launch/sample.py checkpoint={pick} num_samples=64 out=grid.png"]
    lines += [f"results       : {sweep / RESULTS_CSV}, {sweep / RESULTS_MD}",
              f"tensorboard   : tensorboard --logdir {sweep}   (HParams: {sweep / HPARAMS})"]
    text = "\n".join(lines)
    write_atomic(sweep / RESULTS_MD, text + "\n")
    _hparams(sweep, rows, keys, name)
    return text


def _best_reported(trial_dir: Path, key: str, mode: str) -> float | None:
    """The trial's best value of the metric over its whole run (its metrics.jsonl)."""
    from distgan.launcher.progress import read_progress

    rows, _ = read_progress(trial_dir, 0)
    values = [v for v in (metric_value(row, key) for row in rows) if v is not None and math.isfinite(v)]
    return (min if mode == "min" else max)(values) if values else None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _hparams(sweep: Path, rows: list[dict], keys: list[str], name: str) -> None:
    """One HParams run per trial under tb/hparams (rewritten whole: a resumed search writes it again)."""
    from torch.utils.tensorboard import SummaryWriter

    root = sweep / HPARAMS
    shutil.rmtree(root, ignore_errors=True)
    with SummaryWriter(log_dir=str(root)) as writer:
        for r in rows:
            hp = {k: (r[k] if isinstance(r[k], (int, float, str, bool)) else str(r[k])) for k in keys}
            hp["status"] = r["status"].split(";")[0]
            metrics = {f"hparam/{name}": r[name] if r[name] is not None else math.nan,
                       "hparam/kimg": r["kimg"] if r["kimg"] is not None else 0.0}
            writer.add_hparams(hp, metrics, run_name=r["trial"])


# ------------------------------------------------------------------------------------- cluster=local
def launch(cfg: Config, cuda_devices: int) -> str:
    """cluster=local: Ray in this process, the search, the results."""
    from distgan.launcher.local import loopback_env
    from distgan.launcher.ray_train import RAY_ENV, RAY_SYSTEM_CONFIG, secure_ray_env

    secure_ray_env(Path(cfg.run_dir))
    os.environ.update({**RAY_ENV, **loopback_env()})  # one machine: every Ray port on 127.0.0.1, as local.py
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # trials write their own TensorBoard
    import ray

    t = cfg.tune
    per_trial = trial_workers(t) * cfg.cluster.cpus_per_worker
    cpus = max(os.cpu_count() or 1, per_trial * (t.max_concurrent or 1))
    ray.init(num_cpus=cpus, num_gpus=cuda_devices, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=True, _system_config=RAY_SYSTEM_CONFIG)
    try:
        return run_sweep(cfg, cuda_devices)
    finally:
        ray.shutdown()
