"""The one training loop: ``train_worker(cfg, hooks)``, run by every DDP worker.

It imports neither Ray nor submitit: Ray workers, plain gloo test processes and a single process all
call it; whatever a backend needs (metric reporting, checkpoint hand-off) comes in through ``hooks``.
Read top to bottom: build -> resume -> loop over steps (D phases, R1, G phase, EMA) -> log ticks.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from distgan import checkpoint, dist
from distgan.config import Config, to_dict
from distgan.data import ShardedSampler, counter_generator, load
from distgan.losses import build_loss
from distgan.metrics import Evaluator
from distgan.models import build_models
from distgan.nonfinite import NonFiniteError, NonFiniteGuard
from distgan.samples import class_rows, render, save_png
from distgan.step import GANStep, accelerate, autocast, build_optimizers, build_schedulers, call

STAT_NAMES = ["loss/D", "loss/G", "D/real", "D/fake"]
STOP_FILE = "STOP"  # in the run directory: checkpoint at the next log tick and return
log = logging.getLogger("distgan")


class Hooks:
    """What a backend plugs into the loop. The defaults do nothing (plain processes, tests)."""

    device: torch.device | None = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Called on every rank at every log tick and checkpoint, the same number of times."""

    def end(self, G: torch.nn.Module, D: torch.nn.Module) -> None:
        """Called on every rank when training ends, with the unwrapped networks (tests inspect them)."""


def ema_beta(cfg: Config, batch: int, images_seen: int) -> float:
    """Per-step decay for a G_ema half-life of ``ema_kimg`` thousand images, ramped up over the first
    images (StyleGAN2-ADA: the half-life is at most 5 % of the images seen so far). In images, not
    steps, so the average does not change with the world size or the batch."""
    half_life = min(cfg.train.ema_kimg * 1000, max(images_seen, batch) * 0.05)
    return 0.5 ** (batch / max(half_life, 1e-8))


@torch.no_grad()
def ema_update(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def _last_checkpoint(run_dir: Path) -> str:
    found = checkpoint.list_checkpoints(run_dir / "checkpoints")
    return str(found[0]) if found else "none"


def _find_resume_state(cfg: Config, device) -> tuple[dict | None, str]:
    """Latest loadable checkpoint of this run, else ``resume=PATH``, else nothing."""
    if cfg.resume == "never":
        return None, ""
    folder, state, skipped = checkpoint.load_latest(Path(cfg.run_dir) / "checkpoints", device)
    for reason in skipped:
        log.warning("skipping a checkpoint: %s", reason)
    if state is not None:
        return state, str(folder)
    if cfg.resume not in ("auto", "never"):
        return checkpoint.load(cfg.resume, device), cfg.resume
    return None, ""


def train_worker(cfg: Config, hooks: Hooks | None = None) -> dict[str, Any]:
    hooks = hooks or Hooks()
    t = cfg.train
    rank, world = dist.rank(), dist.world_size()
    device = hooks.device or dist.default_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.cluster.cpus_per_worker)
    run_dir = Path(cfg.run_dir)

    # ---- build: same seed on every rank, so the networks start identical (DDP also broadcasts)
    data = load(cfg.dataset, seed=t.seed)
    torch.manual_seed(t.seed)
    num_classes = data.num_classes if cfg.model.conditional else 0
    cfg = replace(cfg, dataset=replace(cfg.dataset, num_classes=data.num_classes))  # recorded in checkpoints
    G, D = build_models(cfg.model, data.shape, num_classes)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if t.ema_kimg > 0 else None
    opt_g, opt_d = build_optimizers(G, D, t)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    # conditional grids show one class per row
    fixed_y, sample_nrow = class_rows(num_classes, t.num_sample_images) if num_classes else (None, None)
    fixed_z = torch.randn(t.num_sample_images if fixed_y is None else len(fixed_y), cfg.model.latent_dim,
                          generator=counter_generator(t.seed, 3, 0)).to(device)
    fixed_y = fixed_y.to(device) if fixed_y is not None else None

    # ---- resume
    step = 0
    state, source = _find_resume_state(cfg, device)
    if state is not None:
        checkpoint.check_architecture(G, state["G"], "generator", source)
        checkpoint.check_architecture(D, state["D"], "discriminator", source)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_g.load_state_dict(state["opt_G"])
        opt_d.load_state_dict(state["opt_D"])
        scaler.load_state_dict(state["scaler"])
        if G_ema is not None and state.get("G_ema") is not None:
            G_ema.load_state_dict(state["G_ema"])
        torch.set_rng_state(state["rng_cpu"])
        step = int(state["step"])
        if rank == 0:
            log.info("resumed from %s at step %d", source, step)

    schedulers = build_schedulers(opt_g, opt_d, t, first_step=step)
    loss = build_loss(cfg.loss)
    channels_last = accelerate(G, D, cfg, device, penalty=loss.needs_gradient_penalty or t.r1_gamma > 0)
    G_ddp, D_ddp = dist.wrap(G, device), dist.wrap(D, device)
    gan = GANStep(G_ddp, D_ddp, opt_g, opt_d, loss, t, scaler, device, cfg.model.latent_dim, num_classes,
                  channels_last)
    # NaN/Inf is caught at the update, before it reaches the weights (distgan/nonfinite.py); under fp16
    # GradScaler already skips overflowing updates, so only the log-tick loss check below applies.
    gan.guard = NonFiniteGuard(t.skip_nonfinite, enabled=t.precision != "fp16", where=lambda: (
        f"step {step + 1}; last good checkpoint: {_last_checkpoint(run_dir)}"))
    gan.guard.skipped = int(state.get("skipped_steps", 0)) if state is not None else 0
    sampler = ShardedSampler(len(data), t.batch_size, rank, world, t.seed)
    writer = None
    if rank == 0:
        from distgan.tb import TBWriter

        writer = TBWriter(run_dir, world, purge_step=step + 1 if step else None)

    evaluator = Evaluator(cfg, device, seed=t.seed, best=checkpoint.best_scores(run_dir / "checkpoints")
                          ) if t.eval_every else None

    def real_batch(counter: int):
        idx = sampler.indices(counter)
        return data.batch(idx, device), data.batch_labels(idx, device)

    def save_checkpoint(best: dict | None = None) -> Path:
        state = {
            "G": G.state_dict(), "D": D.state_dict(),
            "G_ema": G_ema.state_dict() if G_ema is not None else None,
            "opt_G": opt_g.state_dict(), "opt_D": opt_d.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "images_seen": step * t.batch_size, "rng_cpu": torch.get_rng_state(),
            "config": to_dict(cfg), "data_shape": list(data.shape), "fixed_z": fixed_z.cpu(),
            "num_classes": num_classes, "fixed_y": fixed_y.cpu() if fixed_y is not None else None,
            "skipped_steps": gan.guard.skipped,
        }
        if best is not None:  # checkpoints/best, with its scores; retention never deletes it
            return checkpoint.save_best(run_dir / "checkpoints", step, state, best)
        return checkpoint.save(run_dir / "checkpoints", step, state, keep=t.keep_checkpoints)

    def write_samples() -> Path:
        net = G_ema if G_ema is not None else G
        was_training = net.training
        net.eval()
        with torch.no_grad(), autocast(t.precision, device):
            picture = render(call(net, fixed_z, fixed_y), cfg.dataset.name, nrow=sample_nrow)
        net.train(was_training)
        writer.image(step, picture)
        path = run_dir / "samples" / f"step_{step:07d}.png"
        save_png(picture, path)
        if t.keep_samples > 0:  # bounded folder on long runs; TensorBoard keeps every grid
            for old in sorted(path.parent.glob("step_*.png"))[:-t.keep_samples]:
                old.unlink(missing_ok=True)
        return path

    # ---- the loop
    acc = torch.zeros(len(STAT_NAMES), device=device)
    acc_steps, nonfinite = 0, torch.zeros((), device=device)
    tick_time, tick_step = time.perf_counter(), step
    metrics: dict[str, Any] = {}
    while step < t.steps:
        skipped_before = gan.guard.skipped
        d, loss_g = gan.train_step(step, real_batch)  # n_critic D steps (+ lazy R1), one G step
        step += 1
        for sched in schedulers:
            sched.step()
        if G_ema is not None:
            ema_update(G_ema, G, ema_beta(cfg, t.batch_size, step * t.batch_size))
        stats = torch.stack([d.loss_d, loss_g, d.d_real, d.d_fake])
        if gan.guard.skipped == skipped_before:  # a skipped update's NaN losses stay out of the means
            nonfinite += (~torch.isfinite(stats)).any()
            acc += stats
            acc_steps += 1

        last = step == t.steps
        evaluate = t.eval_every > 0 and (step % t.eval_every == 0 or last)
        tick, ckpt = step % t.log_every == 0 or last or evaluate, step % t.checkpoint_every == 0 or last
        if not (tick or ckpt):
            continue
        # ---- log tick: reduce once, on every rank (collectives), write on rank 0
        # A stop request (e.g. the SLURM time limit is near) is honoured at a tick, by all ranks together.
        stop = dist.any_rank(rank == 0 and (run_dir / STOP_FILE).exists(), device)
        ckpt = ckpt or stop
        bad = dist.all_gather_rows(nonfinite.reshape(1).float()).flatten()
        if bad.any():
            bad_rank = int(bad.nonzero()[0])
            raise NonFiniteError(
                f"non-finite loss at or before step {step} on rank {bad_rank}; last good checkpoint: "
                f"{_last_checkpoint(run_dir)}. Lower train.lr_d/lr_g or use train.precision=fp32")
        per_rank = dist.all_gather_rows(acc / max(acc_steps, 1)).cpu()
        now = time.perf_counter()
        img_per_sec = (step - tick_step) * t.batch_size * t.n_critic / max(now - tick_time, 1e-9)
        metrics = {"step": step, "img_per_sec": img_per_sec, "rank": rank, "skipped_steps": gan.guard.skipped,
                   "checkpointed": bool(ckpt),
                   **{n: float(v) for n, v in zip(STAT_NAMES, per_rank[rank])},
                   **{f"mean/{n}": float(v) for n, v in zip(STAT_NAMES, per_rank.mean(0))}}
        # sample-quality metrics: every rank generates its share (collectives), rank 0 scores
        scores = evaluator(G_ema if G_ema is not None else G) if evaluate else {}
        metrics.update({f"metrics/{k}": v for k, v in scores.items()})
        if ckpt and world > 1:  # DESIGN.md §4.7: never save weights the ranks disagree on
            diff = max(dist.max_param_difference(G), dist.max_param_difference(D))
            if diff > 1e-6:
                raise RuntimeError(f"ranks diverged: weights differ by up to {diff:g} at step {step}")
        saved = None
        if rank == 0:
            writer.scalars(step, STAT_NAMES, per_rank, {"perf/img_per_sec": img_per_sec,
                                                        "train/skipped_steps": gan.guard.skipped})
            if scores:
                writer.metrics(step, scores)
                if evaluator.improved(scores):
                    metrics["best"] = str(save_checkpoint(best=scores))
            if step % t.sample_every == 0 or last:
                metrics["sample"] = str(write_samples())
            if ckpt:
                saved = save_checkpoint()
                metrics["checkpoint"] = str(saved)
            writer.flush()
            with open(run_dir / "metrics.jsonl", "a") as f:  # the launcher's progress bar follows this
                f.write(json.dumps({k: v for k, v in metrics.items() if k != "rank"}) + "\n")
            log.info("step %d/%d  loss/D %.4f  loss/G %.4f  %.0f img/s", step, t.steps,
                     metrics["mean/loss/D"], metrics["mean/loss/G"], img_per_sec)
        hooks.report(metrics, saved)
        acc.zero_()
        acc_steps = 0
        tick_time, tick_step = time.perf_counter(), step
        if stop:
            if rank == 0:
                log.info("stop requested: checkpointed at step %d, leaving the loop", step)
            metrics["stopped"] = True
            break

    if writer is not None:
        writer.close()
    hooks.end(G, D)
    return metrics
