"""The one training loop: ``train_worker(cfg, hooks)``, run by every DDP worker.

It imports neither Ray nor submitit: Ray workers, plain gloo test processes and a single process all
call it; whatever a backend needs (metric reporting, checkpoint hand-off) comes in through ``hooks``.
Read top to bottom: build -> resume -> prepare -> loop over steps (D phases, D reg, G phase, G reg, EMA) -> ticks.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from distgan import checkpoint, dist, schedules
from distgan.config import Config, to_dict
from distgan.data import ShardedSampler, batch_source, load
from distgan.ema import EmaPairs, ema_beta
from distgan.errors import UserError
from distgan.files import append_line
from distgan.latents import walk_strip
from distgan.losses import build_loss
from distgan.metrics import Evaluator
from distgan.metrics.watcher import enqueue
from distgan.models import build_models
from distgan.models import spec as model_spec
from distgan.models.stylegan2 import fill_noise_const
from distgan.nonfinite import NonFiniteError, NonFiniteGuard
from distgan.optim import (
    accelerate,
    apply_schedule,
    autocast,
    build_optimizers,
    build_schedulers,
    call,
    keep_freed_memory,
)
from distgan.rng import Stream, counter_generator
from distgan.rundir import RunDir
from distgan.samples import class_rows, render, save_png
from distgan.startup import DataFacts, describe, markdown, parameters
from distgan.state import TrainState
from distgan.step import GANStep, StepContext, StepStats, Trainable
from distgan.warm_start import configure, forget, freeze, label_weights, read, start_from

STAT_NAMES = ["loss/D", "loss/G", "D/real", "D/fake"]  # per rank and global, every log tick
R1_STAT = "loss/R1"  # with train.r1_gamma > 0: the mean lazy-R1 penalty of the tick
# the regularisers' means over the steps of a tick that ran them: (name, StepStats field, on for this config)
REG_STATS = [(R1_STAT, "r1", lambda t: t.r1_gamma > 0), ("loss/R2", "r2", lambda t: t.r2_gamma > 0),
             ("loss/PL", "pl", lambda t: t.pl_weight > 0)]
log = logging.getLogger("distgan")


class Hooks:
    """What a backend plugs into the loop. The defaults do nothing (plain processes, tests)."""

    device: torch.device | None = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Called on every rank at every log tick and checkpoint, the same number of times."""

    def end(self, G: torch.nn.Module, D: torch.nn.Module) -> None:
        """Called on every rank when training ends, with the unwrapped networks (tests inspect them)."""


def train_worker(cfg: Config, hooks: Hooks | None = None) -> dict[str, Any]:
    run = Training(cfg, hooks or Hooks())  # data, networks, optimizers: identical on every rank
    run.resume()  # the run's latest checkpoint, else resume=PATH, else a fresh start
    run.prepare()  # schedulers, DDP, the GAN step, writers, the batch source
    try:
        while run.step < run.t.steps:
            run.train_step()
            if run.tick_due() and run.tick():  # True: a stop was requested (e.g. the SLURM time limit)
                break
    finally:
        run.batches.close()
        if run.writer is not None:
            run.writer.close()
    if run.rank == 0 and run.step >= run.t.steps:  # an async evaluator may finish once it has scored the rest
        run.run_dir.done_file.touch()
    run.hooks.end(run.G, run.D)
    return run.metrics


OPTIMIZER_KEYS = ("lr_g", "lr_d", "beta1", "beta2")  # train.* keys the optimizers' saved state would override


def optimizer_changes(saved: dict | None, cfg: Config) -> list[str]:
    """``train.lr_g: 0.0002 -> 0.0005`` for each optimizer key that differs between a checkpoint's config
    and this run's: resuming applies the new value (never silently the saved one)."""
    before = (saved or {}).get("train", {})
    now = to_dict(cfg)["train"]
    return [f"train.{k}: {before[k]:g} -> {now[k]:g}" for k in OPTIMIZER_KEYS if k in before and before[k] != now[k]]


def resumable(G: torch.nn.Module, D: torch.nn.Module):
    """The test a checkpoint must pass to be resumed by a run with networks ``G`` and ``D`` (real or on
    the meta device): everything resuming reads is there, and the networks fit. The driver's pre-flight
    and every worker apply this same test (checkpoint.load_latest), so they pick the same checkpoint."""
    def test(raw: dict, folder: Path) -> None:
        state = TrainState.from_dict(raw, str(folder))
        state.require("opt_G", "opt_D", "scaler", "rng_cpu", "step", source=str(folder), purpose="resume training")
        # a StyleGAN2 checkpoint from before its noise maps were saved: filled by the rule it was made with
        checkpoint.check_architecture(G, fill_noise_const(G, state.G), "generator", str(folder))
        checkpoint.check_architecture(D, state.D, "discriminator", str(folder))

    return test


class Training:
    """The state of one worker's run and the helpers of :func:`train_worker`."""

    def __init__(self, cfg: Config, hooks: Hooks):
        cfg = configure(cfg)  # init=PATH: the init's model settings (distgan/warm_start.py)
        self.hooks, self.t = hooks, cfg.train
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = hooks.device or dist.default_device()
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.cluster.cpus_per_worker)
        keep_freed_memory()  # host memory reused from step to step (glibc; docs/benchmarks.md)
        self.run_dir = RunDir(cfg.run_dir)
        # same seed on every rank, so the networks start identical (DDP also broadcasts)
        self.data = load(cfg.dataset, seed=self.t.seed)
        torch.manual_seed(self.t.seed)
        self.num_classes = self.data.num_classes if cfg.model.conditional else 0
        self.cfg = replace(cfg, dataset=replace(cfg.dataset, num_classes=self.data.num_classes))  # recorded
        G, D = build_models(cfg.model, self.data.shape, self.num_classes)
        self.G, self.D = G.to(self.device), D.to(self.device)
        self.frozen_d = freeze(self.D, self.t.freeze_d)  # train.freeze_d: before the optimizers and DDP
        ema_on = self.t.ema_kimg > 0 or (self.t.ema_final_kimg or 0) > 0  # a scheduled EMA may start at 0
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if ema_on else None
        self.opt_g, self.opt_d = build_optimizers(self.G, self.D, self.t, lazy_always=model_spec(cfg.model.name).style)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.t.precision == "fp16")
        # conditional grids show one class per row
        fixed_y, self.sample_nrow = class_rows(self.num_classes, self.t.num_sample_images) \
            if self.num_classes else (None, None)
        self.fixed_z = torch.randn(self.t.num_sample_images if fixed_y is None else len(fixed_y),
                                   cfg.model.latent_dim, generator=counter_generator(self.t.seed, Stream.FIXED_Z, 0)
                                   ).to(self.device)
        self.fixed_y = fixed_y.to(self.device) if fixed_y is not None else None
        self.step, self.skipped_at_start, self.metrics = 0, 0, {}
        self.skipped_images = self.skipped_images_at_start = 0  # dataset.skip_bad: all ranks, the whole run
        self.step_state: dict = {}  # ADA's p and the path-length mean of a resumed run, for the GAN step
        self.passed_over: list[str] = []  # newer checkpoints a resume could not use, with the reasons
        self.writer = None

    # ------------------------------------------------------------------------------------ resume
    def _resume_state(self) -> tuple[TrainState | None, str]:
        """The run's newest checkpoint that passes :func:`resumable` (the driver named the same one), else
        ``resume=PATH``, else nothing. A run whose checkpoints all fail stops: it never starts over."""
        if self.cfg.resume == "never":
            return None, ""
        test = resumable(self.G, self.D)
        root = self.run_dir.checkpoints
        folder, raw, skipped = checkpoint.load_latest(root, self.device, check=test)
        if folder is None and skipped:
            raise UserError(f"no checkpoint in {root} can be resumed ({skipped[0]}); use a new hydra.run.dir, "
                            "or resume=PATH with a good checkpoint")
        self.passed_over = skipped
        for reason in skipped:  # a restart after a fault may meet a checkpoint damaged since the launch
            log.warning("skipping a checkpoint: %s (resuming from %s instead)", reason, folder)
        source = str(folder) if raw is not None else ""
        if raw is None and self.cfg.resume not in ("auto", "never"):
            raw, source = checkpoint.load(self.cfg.resume, self.device), self.cfg.resume
            test(raw, Path(source))
        return (TrainState.from_dict(raw, source), source) if raw is not None else (None, "")

    def resume(self) -> None:
        state, source = self._resume_state()
        if state is None:
            if self.cfg.init:  # a new run from a trained network: weights only (distgan/warm_start.py)
                note = start_from(read(self.cfg.init), self.G, self.D, self.G_ema)
                forget()
                if self.rank == 0:
                    log.info("%s", note)
            return
        self.G.load_state_dict(state.G)
        self.D.load_state_dict(state.D)
        fresh = [[(g["lr"], g["betas"]) for g in opt.param_groups] for opt in (self.opt_g, self.opt_d)]
        self.opt_g.load_state_dict(state.opt_G)
        self.opt_d.load_state_dict(state.opt_D)
        changed = optimizer_changes(state.config, self.cfg)
        if changed:  # keys typed for this launch win over the checkpoint's (the driver said so too)
            for opt, groups in zip((self.opt_g, self.opt_d), fresh):
                for group, (lr, betas) in zip(opt.param_groups, groups):
                    group["lr"], group["betas"] = lr, betas
                    if "initial_lr" in group:  # a schedule's base rate
                        group["initial_lr"] = lr
        self.scaler.load_state_dict(state.scaler)
        if self.G_ema is not None and state.G_ema is not None:
            self.G_ema.load_state_dict(state.G_ema)
        torch.set_rng_state(state.rng_cpu)
        self.step_state = {"augment": state.augment, "pl": state.path_length}
        self.step, self.skipped_at_start = int(state.step), int(state.skipped_steps)
        self.skipped_images = self.skipped_images_at_start = int(state.skipped_images)
        if self.rank == 0:
            log.info("resumed from %s at step %d", source, self.step)

    # ----------------------------------------------------------------------------------- prepare
    def prepare(self) -> None:
        t, cfg = self.t, self.cfg
        self.schedulers = build_schedulers(self.opt_g, self.opt_d, t, first_step=self.step)
        loss = build_loss(cfg.loss)
        channels_last = accelerate(self.G, self.D, cfg, self.device,
                                   penalty=loss.needs_gradient_penalty or t.r1_gamma > 0 or t.r2_gamma > 0,
                                   g_penalty=t.pl_weight > 0)
        # NaN/Inf is caught at the update, before it reaches the weights (distgan/nonfinite.py); under fp16
        # GradScaler already skips overflowing updates, so only the log-tick loss check applies.
        self.ema = EmaPairs(self.G_ema, self.G) if self.G_ema is not None else None  # after accelerate()
        self.guard = NonFiniteGuard(t.skip_nonfinite, enabled=t.precision != "fp16", where=lambda: (
            f"step {self.step + 1}; last good checkpoint: {checkpoint.newest(self.run_dir.checkpoints)}"))
        self.guard.skipped = self.skipped_at_start
        self.gan = GANStep(Trainable(dist.wrap(self.G, self.device), self.opt_g),
                           Trainable(dist.wrap(self.D, self.device), self.opt_d), loss, t,
                           StepContext(self.device, self.scaler, cfg.model.latent_dim, self.num_classes,
                                       channels_last, style=model_spec(cfg.model.name).style,
                                       label_weights=label_weights(self.data) if self.num_classes else None),
                           guard=self.guard)
        self.gan.load_state_dict(self.step_state)
        self.reg_stats = [(name, field) for name, field, on in REG_STATS if on(t)]
        self.stat_names = STAT_NAMES + [name for name, _ in self.reg_stats]
        self.acc = torch.zeros(len(self.stat_names), device=self.device)  # sums since the last tick
        self._zero = torch.zeros((), device=self.device)  # a lazy statistic's value on steps without it
        self.counts = [0] * len(self.stat_names)  # steps that had each statistic (host: no per-step writes)
        self.nonfinite = torch.zeros((), device=self.device)
        self.tick_time, self.tick_step = time.perf_counter(), self.step
        self.tick_guard = self.guard.counts  # (skipped, checked) at the last tick: a tick's skipped share is bounded
        if self.rank == 0:
            from distgan.tb import TBWriter

            self.writer = TBWriter(self.run_dir.tb, self.world, purge_step=self.step + 1 if self.step else None)
            facts = DataFacts(len(self.data), tuple(self.data.shape), self.data.num_classes)
            self.writer.text(self.step, "run", markdown(describe(cfg, facts, parameters(self.G), parameters(self.D),
                                                                   self.world, self.device.type)))
            if self.frozen_d:
                self.writer.text(self.step, "freeze_d", markdown("\n".join(
                    [f"train.freeze_d={self.t.freeze_d}: D layers frozen (StyleGAN2-ADA --freezed):", *self.frozen_d])))
            if self.passed_over:
                self.writer.text(self.step, "resume", markdown("\n".join(
                    [f"resumed at step {self.step}; passed over:", *self.passed_over])))
        # train.eval_mode=async: no evaluation here; evaluation ticks' checkpoints go to the async evaluator
        self.evaluator = Evaluator(cfg, self.device, seed=t.seed, best=checkpoint.best_scores(self.run_dir.checkpoints),
                                   data=self.data) if t.eval_every and t.eval_mode == "inline" else None
        if self.rank == 0 and self.step < t.steps:
            self.run_dir.done_file.unlink(missing_ok=True)  # a finished run continued (train.steps raised)
        # last: a streamed dataset starts its loader workers here (train_worker's finally stops them); a file
        # that fails to decode stops the run naming it and what a resume would start from
        sampler = ShardedSampler(len(self.data), t.batch_size, self.rank, self.world, t.seed)
        self.batches = batch_source(
            self.data, sampler, self.device, first_counter=self.step * t.n_critic, cfg=cfg,
            where=lambda: f"last good checkpoint: {checkpoint.newest(self.run_dir.checkpoints)}")

    # -------------------------------------------------------------------------------------- step
    def train_step(self) -> None:
        skipped_before = self.guard.skipped
        values = self.schedule()  # R3GAN's cosine schedules at this step's images (None: no schedule)
        stats = self.gan.train_step(self.step, self.batches)  # n_critic D steps (+ lazy R1), one G step
        self.step += 1
        for sched in self.schedulers:
            sched.step()
        if self.ema is not None:
            beta = values.ema_beta(self.t.batch_size) if values is not None else None
            self.ema.update(beta if beta is not None else
                            ema_beta(self.cfg, self.t.batch_size, self.step * self.t.batch_size))
        if self.guard.skipped == skipped_before:  # a skipped update's NaN losses stay out of the means
            self._accumulate(stats)

    def schedule(self) -> schedules.Values | None:
        """Set the scheduled lr, beta2, gamma and augmentation p of this step (a function of the step alone,
        so a resumed run continues exactly); kept for the log ticks (``sched/...``)."""
        values = self.sched = schedules.at(self.t, self.step)
        if values is not None:
            apply_schedule(self.opt_g, self.opt_d, self.t, values, lazy_always=model_spec(self.cfg.model.name).style)
            self.gan.gammas = (values.r1_gamma, values.r2_gamma)
            if values.aug_p is not None:
                self.gan.augment.fixed_p = values.aug_p
        return values

    def _accumulate(self, s: StepStats) -> None:
        values = [s.d.loss_d, s.loss_g, s.d.d_real, s.d.d_fake]
        for i, (_, field) in enumerate(self.reg_stats, start=len(STAT_NAMES)):  # lazy: on some steps only
            value = getattr(s, field)
            values.append(value if value is not None else self._zero)
            self.counts[i] += value is not None
        for i in range(len(STAT_NAMES)):
            self.counts[i] += 1
        values = torch.stack(values)
        self.nonfinite += (~torch.isfinite(values)).any()
        self.acc += values

    # -------------------------------------------------------------------------------------- tick
    def tick_due(self) -> bool:
        t, last = self.t, self.step == self.t.steps
        self.evaluate_now = t.eval_every > 0 and (self.step % t.eval_every == 0 or last)
        self.checkpoint_now = (self.step % t.checkpoint_every == 0 or last
                               or (self.evaluate_now and t.eval_mode == "async"))  # the evaluator scores it
        return self.step % t.log_every == 0 or last or self.evaluate_now or self.checkpoint_now

    def tick(self) -> bool:
        """Reduce once on every rank (collectives), write on rank 0; True when a stop was requested."""
        t, step, rank = self.t, self.step, self.rank
        last = step == t.steps
        # a stop request (e.g. the SLURM time limit is near) is honoured at a tick, by all ranks together
        stop = dist.any_rank(rank == 0 and self.run_dir.stop_file.exists(), self.device)
        ckpt = self.checkpoint_now or stop
        bad = dist.all_gather_rows(self.nonfinite.reshape(1).float()).flatten()
        if bad.any():
            raise NonFiniteError(
                f"non-finite loss at or before step {step} on rank {int(bad.nonzero()[0])}; last good checkpoint: "
                f"{checkpoint.newest(self.run_dir.checkpoints)}. Lower train.lr_d/lr_g or use train.precision=fp32")
        self.guard.check_share(self.tick_guard, t.max_skipped_fraction)
        counts = torch.tensor(self.counts, dtype=self.acc.dtype).clamp(min=1).to(self.device)
        per_rank = dist.all_gather_rows(self.acc / counts).cpu()
        data_wait_ms = self._data_stats()
        now = time.perf_counter()
        img_per_sec = (step - self.tick_step) * t.batch_size * t.n_critic / max(now - self.tick_time, 1e-9)
        metrics = {"step": step, "img_per_sec": img_per_sec, "rank": rank, "skipped_steps": self.guard.skipped,
                   "checkpointed": bool(ckpt), "data_wait_ms": data_wait_ms,
                   **({"skipped_images": self.skipped_images} if self.cfg.dataset.skip_bad else {}),
                   **{k: v for k, v in self.gan.augment.scalars().items() if math.isfinite(v)},  # same on every rank
                   **{n: float(v) for n, v in zip(self.stat_names, per_rank[rank])},
                   **{f"mean/{n}": float(v) for n, v in zip(self.stat_names, per_rank.mean(0))}}
        # sample-quality metrics: every rank generates its share (collectives), rank 0 scores
        scores = self.evaluator(self.G_ema if self.G_ema is not None else self.G) \
            if self.evaluate_now and self.evaluator is not None else {}
        metrics.update({f"metrics/{k}": v for k, v in scores.items()})
        if ckpt and self.world > 1:  # never save weights the ranks disagree on
            diff = max(dist.max_param_difference(self.G), dist.max_param_difference(self.D))
            if diff > 1e-6:
                raise RuntimeError(f"ranks diverged: weights differ by up to {diff:g} at step {step}")
        # the final tick of this attempt (the end, or a stop request) also writes a sample grid
        saved = self._write_tick(metrics, per_rank, img_per_sec, scores, ckpt, last or stop) if rank == 0 else None
        self.hooks.report(metrics, saved)
        self.acc.zero_()
        self.counts = [0] * len(self.stat_names)
        self.tick_time, self.tick_step, self.metrics = time.perf_counter(), step, metrics
        self.tick_guard = self.guard.counts
        if stop:
            if rank == 0:  # honoured: the request is used up, so a later resume of this run trains on
                self.run_dir.stop_file.unlink(missing_ok=True)
                log.info("stop requested: checkpointed at step %d, leaving the loop", step)
            metrics["stopped"] = True
        return stop

    def _data_stats(self) -> float:
        """Every rank (a collective): the slowest rank's mean wait for a batch since the last tick, in ms
        (``perf/data_wait_ms``); ``skipped_images`` updated with every rank's replaced images."""
        local = torch.tensor([self.batches.take_wait_ms(), self.batches.skipped], device=self.device)
        rows = dist.all_gather_rows(local).cpu()
        self.skipped_images = self.skipped_images_at_start + int(rows[:, 1].sum())
        return float(rows[:, 0].max())

    def _write_tick(self, metrics: dict, per_rank: torch.Tensor, img_per_sec: float, scores: dict,
                    ckpt: bool, last: bool) -> Path | None:
        """Rank 0: TensorBoard, best/regular checkpoints, samples, the progress line. Returns the
        checkpoint written, if any."""
        step, saved = self.step, None
        extra = {"perf/img_per_sec": img_per_sec, "train/skipped_steps": self.guard.skipped,
                 "perf/data_wait_ms": metrics["data_wait_ms"],
                 **({"data/skipped_images": self.skipped_images} if self.cfg.dataset.skip_bad else {}),
                 **{k: v for k, v in metrics.items() if k.startswith("aug/")},  # ADA's p and r_t
                 **(schedules.at(self.t, step).scalars() if schedules.enabled(self.t) else {})}  # sched/...
        self.writer.scalars(step, self.stat_names, per_rank, extra)
        if scores:
            self.writer.metrics(step, scores)
            if self.evaluator.improved(scores):
                metrics["best"] = str(self.save_checkpoint(best=scores))
        if step % self.t.sample_every == 0 or last:
            metrics["sample"] = str(self.write_samples())
        if ckpt:
            saved = self.save_checkpoint()
            metrics["checkpoint"] = str(saved)
        self.writer.flush()
        # the launcher's progress bar follows this; durable, and a crash's torn last line is cut off first
        append_line(self.run_dir.metrics, json.dumps({k: v for k, v in metrics.items() if k != "rank"}))
        log.info("step %d/%d  loss/D %.4f  loss/G %.4f  %.0f img/s", step, self.t.steps,
                 metrics["mean/loss/D"], metrics["mean/loss/G"], img_per_sec)
        return saved

    # ------------------------------------------------------------------------------ what is saved
    def state(self) -> TrainState:
        extra = self.gan.state_dict()
        return TrainState(
            G=self.G.state_dict(), D=self.D.state_dict(),
            G_ema=self.G_ema.state_dict() if self.G_ema is not None else None,
            opt_G=self.opt_g.state_dict(), opt_D=self.opt_d.state_dict(), scaler=self.scaler.state_dict(),
            step=self.step, images_seen=self.step * self.t.batch_size, rng_cpu=torch.get_rng_state(),
            config=to_dict(self.cfg), data_shape=list(self.data.shape), num_classes=self.num_classes,
            fixed_z=self.fixed_z.cpu(), fixed_y=self.fixed_y.cpu() if self.fixed_y is not None else None,
            skipped_steps=self.guard.skipped, skipped_images=self.skipped_images, augment=extra["augment"],
            path_length=extra["pl"])

    def save_checkpoint(self, best: dict | None = None) -> Path:
        state = self.state().to_dict()
        if best is not None:  # checkpoints/best, with its scores; retention never deletes it
            return checkpoint.save_best(self.run_dir.checkpoints, self.step, state, best)
        path = checkpoint.save(self.run_dir.checkpoints, self.step, state, keep=self.t.keep_checkpoints)
        if self.evaluate_now and self.t.eval_mode == "async":
            enqueue(path)  # checkpoints/unscored: retention cannot take it from the async evaluator
        return path

    def write_samples(self) -> Path:
        net = self.G_ema if self.G_ema is not None else self.G
        was_training = net.training
        net.eval()
        with torch.no_grad(), autocast(self.t.precision, self.device):
            picture = render(call(net, self.fixed_z, self.fixed_y), self.cfg.dataset.name, nrow=self.sample_nrow)
            walk = call(net, *walk_strip(self.fixed_z, self.fixed_y))  # a latent walk strip (issue 24)
        net.train(was_training)
        self.writer.image(self.step, picture)
        if walk.dim() == 4:  # images (not 2D points): the same walk through the fixed latents at every tick
            self.writer.glob.add_image("samples/walk", render(walk, self.cfg.dataset.name, nrow=len(walk)), self.step)
        path = self.run_dir.sample_png(self.step)
        save_png(picture, path)
        if self.t.keep_samples > 0:  # bounded folder on long runs; TensorBoard keeps every grid
            for old in sorted(path.parent.glob("step_*.png"))[:-self.t.keep_samples]:
                old.unlink(missing_ok=True)
        return path
