"""Every check of a run that can fail on user input, once per launch, in the driver, before anything is
started or written: the config (:func:`check_config`: the shared rules of distgan.config.validate and
every registry's own), the data, the run directory, its checkpoints and the cluster's environment. Then
the run directory is created."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

from distgan.config import Config, micro_batch, to_dict, validate
from distgan.errors import UserError, first_line
from distgan.files import probe_writable
from distgan.launcher.backends import backend, cuda_devices_for
from distgan.rundir import RunDir
from distgan.startup import DataFacts, describe, parameters

log = logging.getLogger("distgan")


@dataclass(frozen=True)
class Checked:
    cfg: Config  # validated, with dataset.root resolved
    cuda_devices: int  # CUDA devices this process can give the run (cluster=local)
    resume_note: str | None  # "resuming from checkpoints/step_0000030 (step 30 of 45)" when a run continues
    data: DataFacts  # the training set as the driver sees it (for the start-up summary)
    parameters: tuple[int, int]  # G's and D's parameter counts


_DONE: dict[tuple[str, str], Checked] = {}  # the pre-check and Hydra's run see the same run: check it once


def preflight(cfg: Config, typed: set[str] | None = None) -> Checked:
    """``typed``: the model keys the command line set (checked against ``init=``; None: not known)."""
    key = (cfg.run_dir, json.dumps(to_dict(cfg), sort_keys=True, default=str))
    if key not in _DONE:
        _DONE[key] = _preflight(cfg, typed)
    return _DONE[key]


def check_config(cfg: Config, cuda_devices: int = 0) -> Config:
    """The config's rules, nothing read: the cluster backend's and the shared ones first (no torch, so a
    typo in a number is answered at once), then each registry's own — dataset, loss, augmentation,
    feature network, the model's micro-batch. The model's rules against the data's size run after the data
    is located (:func:`preflight`). Returns ``cfg``."""
    cluster = backend(cfg.cluster.name)
    cluster.check(cfg, cuda_devices)
    workers = cluster.world_size(cfg, cuda_devices)
    validate(cfg, workers)
    from distgan import augment, data, losses, models  # the registries: these import torch
    from distgan.metrics.evaluator import FEATURES

    data.check(cfg)
    losses.check(cfg)
    augment.check(cfg, data.spec(cfg.dataset.name).kind)
    if cfg.metrics.features not in FEATURES:
        raise UserError(f"unknown metrics.features {cfg.metrics.features!r}; choose one of: {', '.join(FEATURES)}")
    if cfg.metrics.inception_score and data.spec(cfg.dataset.name).kind != "image":  # its weights: _check_metrics
        raise UserError(f"metrics.inception_score needs an image dataset; dataset={cfg.dataset.name} is scored by "
                        "the mode-collapse protocol")
    models.check_micro_batch(cfg, micro_batch(cfg.train, workers)[0])
    if cfg.tune.name != "none":  # a search: the metric, the trials' GPUs, every trial's config
        from distgan.launcher import tune_plan

        tune_plan.check(cfg, cuda_devices, check_config)
    return cfg


def _preflight(cfg: Config, typed: set[str] | None = None) -> Checked:
    cuda = cuda_devices_for(cfg)
    cfg = _check_init(cfg, typed)  # init=PATH: the model's settings are the init's
    check_config(cfg, cuda)
    from distgan import data, models

    cfg = replace(cfg, dataset=data.locate(cfg.dataset))  # a folder or zip: its index (no image decoded)
    _check_init(cfg, typed, resolution=data.resolution(cfg.dataset))  # before the model's own size rule
    models.check(cfg)  # after locate(), which pins the resolution of a folder or zip
    facts = _check_data_readable(cfg)
    _check_metrics(cfg)
    run_dir = RunDir(cfg.run_dir)
    _check_writable(run_dir.path)
    G, D = _networks(cfg, facts)
    _check_init(cfg, typed, facts=facts, D=D)  # the data fits the init; train.freeze_d fits D
    note = _init_note(cfg, _check_checkpoints(cfg, run_dir, G, D))
    backend(cfg.cluster.name).check_environment(cfg)
    return Checked(cfg, cuda, note, facts, (parameters(G), parameters(D)))


def _networks(cfg: Config, facts: DataFacts):
    """G and D as the workers will build them, on the meta device (shapes, no memory): for the parameter
    counts and for the same checkpoint test the workers apply."""
    import torch

    from distgan.models import build_models

    classes = facts.classes if cfg.model.conditional else 0
    try:
        with torch.device("meta"):
            return build_models(cfg.model, facts.shape, classes)
    except (RuntimeError, NotImplementedError):  # a layer that computes on its weights when built
        return build_models(cfg.model, facts.shape, classes)


def _check_init(cfg: Config, typed: set[str] | None, resolution: int | None = None, facts: DataFacts | None = None,
                D=None) -> Config:
    """``init=PATH`` (distgan/warm_start.py): read once, the model's settings taken from it (a typed model key
    that contradicts it is one line); then the data's resolution, channels and classes against it, and
    ``train.freeze_d`` against D's layers. Returns ``cfg`` with the init's model settings."""
    from distgan import warm_start

    if D is not None:
        warm_start.check_freeze(cfg, D)
    if facts is not None:
        warm_start.check_data(cfg, shape=facts.shape, classes=facts.classes)
    elif resolution is not None:
        warm_start.check_data(cfg, resolution=resolution)
    elif cfg.init:  # absolute: Ray workers run in another folder
        cfg = warm_start.configure(replace(cfg, init=str(Path(cfg.init).expanduser().absolute())), typed)
    return cfg


def _init_note(cfg: Config, note: str | None) -> str | None:
    """What the start-up says about ``init=``: used (a run without checkpoints) or ignored (it has its own)."""
    if not cfg.init:
        return note
    if note is None:
        return f"starting from init={cfg.init}: its G, D and G_ema at step 0, with new optimizers"
    return (f"{note}\n  init={cfg.init} ignored: the run continues its own checkpoints (the model's settings "
            "are the init's)")


def _check_data_readable(cfg: Config) -> DataFacts:
    """Decode a small in-memory training set once here, so a corrupt file is one line now and not a crash
    in every worker later; a streamed folder or zip is opened over its index (no image is decoded, and
    nothing is staged: the driver may be a login node); the 2D mixtures are generated. Then the rules that
    need the data itself."""
    from distgan import data

    try:
        dataset = data.load(replace(cfg.dataset, stage_dir=None), seed=cfg.train.seed)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - torchvision asserts, unpickling errors, … all mean a bad file
        raise UserError(f"cannot read {cfg.dataset.name} from dataset.root={cfg.dataset.root} "
                        f"({type(e).__name__}{': ' + first_line(e, 120) if str(e).strip() else ''}); the files "
                        "look truncated or corrupt: delete them and copy them again") from None
    data.check_loaded(cfg, dataset)
    return DataFacts(len(dataset), tuple(dataset.shape), dataset.num_classes)


def startup_summary(checked: Checked) -> str:
    """The lines the driver prints before training (distgan/startup.py)."""
    cfg, cluster = checked.cfg, backend(checked.cfg.cluster.name)
    device = "cuda" if cluster.use_gpu(cfg, checked.cuda_devices) else "cpu"
    return describe(cfg, checked.data, *checked.parameters, cluster.world_size(cfg, checked.cuda_devices), device)


def _check_metrics(cfg: Config) -> None:
    """The Inception weights, found and verified here when this run evaluates with them, so a missing file
    is one line now and not a failed evaluation after hours of training. (An async run on SLURM is scored
    by ``launch/evaluate.py watch=RUN_DIR`` elsewhere, which checks them itself.)"""
    from distgan import data
    from distgan.metrics.evaluator import check_weights

    if not cfg.train.eval_every or data.spec(cfg.dataset.name).kind != "image":
        return
    if cfg.train.eval_mode == "async" and cfg.cluster.name != "local":
        return
    check_weights(cfg.metrics)


def _check_writable(path: Path) -> None:
    try:
        probe_writable(path)
    except OSError as e:
        raise UserError(f"run directory {path} is not writable ({e.strerror or e}); set hydra.run.dir to a folder "
                        "you can write") from None


def _check_checkpoints(cfg: Config, run_dir: RunDir, G, D) -> str | None:
    """What the workers will resume from, checked now with the workers' own test (the checkpoint loads,
    has what resuming needs, and fits this config's networks); returns the line that says so, naming
    every newer checkpoint passed over and why."""
    from distgan import checkpoint
    from distgan.train import resumable

    found = checkpoint.list_checkpoints(run_dir.checkpoints)
    if cfg.resume == "never" and found:
        raise UserError(f"{run_dir} already holds checkpoints and resume=never; use resume=auto to continue "
                        "it or a new hydra.run.dir")
    if found:
        # resume=auto (or PATH) on a run with checkpoints: the newest that loads is used; if none does,
        # stop here rather than silently starting over (and later deleting the evidence by retention)
        folder, state, skipped = checkpoint.load_latest(run_dir.checkpoints, check=resumable(G, D))
        if folder is None:
            raise UserError(f"no checkpoint in {run_dir.checkpoints} can be resumed ({skipped[0]}); use a new "
                            "hydra.run.dir, or resume=PATH with a good checkpoint")
        note = _resume_note(folder.relative_to(run_dir.path), state, cfg)
        return "\n".join([note, *(f"skipping a checkpoint: {reason}" for reason in skipped)])
    if cfg.resume not in ("auto", "never"):
        state = checkpoint.load(cfg.resume)
        resumable(G, D)(state, Path(cfg.resume))
        return _resume_note(cfg.resume, state, cfg)
    return None


def _resume_note(source, state: dict, cfg: Config) -> str:
    from distgan.train import optimizer_changes

    changed = optimizer_changes(state.get("config"), cfg)
    applied = f"; applying {', '.join(changed)} (the checkpoint's optimizer state keeps its moments)" if changed else ""
    return f"resuming from {source} (step {state.get('step')} of {cfg.train.steps}){applied}"


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run directory private to the user and save the resolved config."""
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return run_dir.path
