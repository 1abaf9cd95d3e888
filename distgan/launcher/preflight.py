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


_DONE: dict[tuple[str, str], Checked] = {}  # the pre-check and Hydra's run see the same run: check it once


def preflight(cfg: Config) -> Checked:
    key = (cfg.run_dir, json.dumps(to_dict(cfg), sort_keys=True, default=str))
    if key not in _DONE:
        _DONE[key] = _preflight(cfg)
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
    models.check_micro_batch(cfg, micro_batch(cfg.train, workers)[0])
    return cfg


def _preflight(cfg: Config) -> Checked:
    cuda = cuda_devices_for(cfg)
    check_config(cfg, cuda)
    from distgan import data, models

    cfg = replace(cfg, dataset=data.locate(cfg.dataset))  # a folder or zip: its index (no image decoded)
    models.check(cfg)  # after locate(), which pins the resolution of a folder or zip
    facts = _check_data_readable(cfg)
    _check_metrics(cfg)
    run_dir = RunDir(cfg.run_dir)
    _check_writable(run_dir.path)
    note = _check_checkpoints(cfg, run_dir)
    backend(cfg.cluster.name).check_environment(cfg)
    return Checked(cfg, cuda, note, facts)


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
    """The lines the driver prints before training (distgan/startup.py); the networks are built on the
    meta device only to count their parameters."""
    import torch

    from distgan.models import build_models

    cfg, facts = checked.cfg, checked.data
    classes = facts.classes if cfg.model.conditional else 0
    try:
        with torch.device("meta"):
            G, D = build_models(cfg.model, facts.shape, classes)
    except (RuntimeError, NotImplementedError):  # a layer that computes on its weights when built
        G, D = build_models(cfg.model, facts.shape, classes)
    cluster = backend(cfg.cluster.name)
    device = "cuda" if cluster.use_gpu(cfg, checked.cuda_devices) else "cpu"
    return describe(cfg, facts, parameters(G), parameters(D), cluster.world_size(cfg, checked.cuda_devices), device)


def _check_metrics(cfg: Config) -> None:
    """The Inception weights, found and verified here when this run evaluates with them, so a missing file
    is one line now and not a failed evaluation after hours of training. (An async run on SLURM is scored
    by ``launch/evaluate.py watch=RUN_DIR`` elsewhere, which checks them itself.)"""
    from distgan import data
    from distgan.metrics.inception_metrics import check_weights

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


def _check_checkpoints(cfg: Config, run_dir: RunDir) -> str | None:
    """What the workers will resume from, checked now; returns the line that says so."""
    from distgan import checkpoint

    found = checkpoint.list_checkpoints(run_dir.checkpoints)
    if cfg.resume == "never" and found:
        raise UserError(f"{run_dir} already holds checkpoints and resume=never; use resume=auto to continue "
                        "it or a new hydra.run.dir")
    if found:
        # resume=auto (or PATH) on a run with checkpoints: the newest that verifies is used; if none does,
        # stop here rather than silently starting over (and later deleting the evidence by retention)
        folder, _, skipped = checkpoint.load_latest(run_dir.checkpoints, verify_only=True)
        if folder is None:
            raise UserError(f"no checkpoint in {run_dir.checkpoints} is readable ({skipped[0]}); use a new "
                            "hydra.run.dir, or resume=PATH with a good checkpoint")
        for reason in skipped:  # the workers fall back to ``folder`` the same way
            log.warning("skipping a checkpoint: %s", reason)
        return _resume_note(folder.relative_to(run_dir.path), checkpoint.read_meta(folder).get("step"), cfg)
    if cfg.resume not in ("auto", "never"):
        state = _check_resume_checkpoint(cfg)
        return _resume_note(cfg.resume, state.step, cfg)
    return None


def _resume_note(source, step, cfg: Config) -> str:
    return f"resuming from {source} (step {step} of {cfg.train.steps})"


def _check_resume_checkpoint(cfg: Config):
    """``resume=PATH``: the checkpoint must load and match this config's architecture."""
    from distgan import checkpoint
    from distgan.models import build_models
    from distgan.state import TrainState

    state = TrainState.from_dict(checkpoint.load(cfg.resume), cfg.resume)
    num_classes = int(state.num_classes or 0) if cfg.model.conditional else 0
    G, D = build_models(cfg.model, tuple(state.data_shape or ()), num_classes)
    checkpoint.check_architecture(G, state.G, "generator", cfg.resume)
    checkpoint.check_architecture(D, state.D, "discriminator", cfg.resume)
    return state


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run directory private to the user and save the resolved config."""
    run_dir = RunDir(cfg.run_dir)
    run_dir.create(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return run_dir.path
