"""Videos of a generator: ``distgan-video checkpoint=PATH seeds=0-7 out=walk.mp4`` (a latent walk) and
``distgan-video run=RUN_DIR out=progress.mp4`` (a training timelapse).

A **latent walk** loops through the seeds' latents (seed s: NVIDIA's ``RandomState(s).randn(z_dim)``,
:mod:`distgan.latents`): ``frames`` frames from each seed to the next and from the last back to the
first, spherical in z (``space=z``, any model) or linear in w (``space=w``, models with a mapping
network: the walk NVIDIA's gen_video.py makes). ``grid=2x2`` puts walks side by side, the seeds dealt
out in order (cell c walks through seeds ``c*K .. c*K+K-1``, K = len(seeds) / cells). ``truncation=``
pulls w towards its mean. G's constant noise maps, like the training grids.

A **timelapse** is the run's sample grids (``samples/step_*.png``, the fixed latents of the whole run) in
step order, the step and kimg written under each (kimg = step x train.batch_size / 1000, the run's
``images_seen``, read from the run's config.yaml; the step alone when that file is missing).

``out`` ends in ``.mp4`` (H.264 through the ``imageio-ffmpeg`` wheel's own ffmpeg) or ``.gif``; the
file is written beside its target and moved into place with :func:`distgan.files.write_atomic`: a failed
or interrupted run leaves no half-written video.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distgan import cli
from distgan.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".gif")
_STEP_PNG = re.compile(r"^step_(\d+)\.png$")


@dataclass
class VideoArgs:
    out: str | None = cli.required()  # FILE.mp4 or FILE.gif
    checkpoint: str | None = None  # a latent walk of this checkpoint's generator
    run: str | None = None  # or: a timelapse of this run directory's sample grids
    seeds: str = "0-7"  # walk through these seeds' latents (0-7, or 1,5,9)
    frames: int = 60  # frames from one seed to the next
    grid: str = "1x1"  # COLSxROWS walks side by side; len(seeds) must divide by COLS*ROWS
    space: str = "z"  # z: slerp between z's (any model); w: lerp between w's (models with a mapping network)
    truncation: float = 1.0  # psi of the truncation trick (models with a mapping network)
    fps: int = 30
    ema: bool = True  # G_ema when the checkpoint has one
    label: int | None = None  # class-conditional checkpoints: the class of every frame (default 0)


# ------------------------------------------------------------------ shared by the looking-at commands
def check_out(out: str, suffixes: tuple[str, ...], what: str) -> Path:
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise UserError(f"out={out}: {what} is written as {' or '.join(suffixes)}; change the file name")
    return path


def require_style(cfg, setting: str) -> None:
    """A UserError unless the checkpoint's model has a mapping network (``setting`` is what needs one)."""
    from distgan.models import MODELS, spec

    if not spec(cfg.model.name).style:
        styled = [n for n, m in MODELS.items() if m.style]
        raise UserError(f"{setting}: model={cfg.model.name} has no mapping network (model={' or model='.join(styled)} "
                        f"has); this needs a checkpoint of such a model")


def class_labels(state, label: int | None, n: int):
    """Labels for ``n`` samples of a class-conditional checkpoint (class ``label``, default 0); None else."""
    import torch

    classes = int(state.num_classes or 0)
    if not classes:
        if label is not None:
            raise UserError("label=: the checkpoint is not class-conditional; drop label=")
        return None
    label = 0 if label is None else label
    if not 0 <= label < classes:
        raise UserError(f"label={label} is out of range: the checkpoint has classes 0..{classes - 1}")
    return torch.full((n,), label, dtype=torch.long)


def to_uint8(x) -> np.ndarray:
    """Images in [-1, 1] (N, C, H, W) -> uint8 (N, H, W, 3) (grayscale repeated)."""
    import torch

    x = x.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*H, cols*W, 3) picture, row-major, no padding (black fill)."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    out = np.zeros((rows * h, cols * w, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i]
    return out


def even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264's 4:2:0 needs them), black at the bottom/right."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))


def write_video(out: Path, frames: Iterable[np.ndarray], fps: int, total: int | None = None,
                desc: str = "frames") -> int:
    """Write uint8 (H, W, 3) ``frames`` as ``out`` (.mp4 or .gif) with a progress bar; atomic: ffmpeg
    writes a scratch file beside ``out``, which then goes into place through write_atomic. Returns the
    frame count."""
    import imageio.v2 as iio
    from tqdm import tqdm

    from distgan.files import temp_name, write_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = temp_name(out).with_suffix(out.suffix)
    mp4 = out.suffix.lower() == ".mp4"
    count = 0
    try:
        if mp4:
            writer = iio.get_writer(scratch, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    macro_block_size=1, ffmpeg_log_level="error", pixelformat="yuv420p")
        else:
            writer = iio.get_writer(scratch, format="GIF", mode="I", duration=1000 / fps, loop=0)
        try:
            for frame in tqdm(frames, total=total, desc=desc, unit="frame", leave=False, disable=None):
                writer.append_data(even(frame) if mp4 else frame)
                count += 1
        finally:
            writer.close()
        with open(scratch, "rb") as src:
            write_atomic(out, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    finally:
        scratch.unlink(missing_ok=True)
    return count


def parse_grid(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(f"grid={text}: give COLSxROWS, e.g. grid=2x2")
    return int(m.group(1)), int(m.group(2))


# ------------------------------------------------------------------------------------ the latent walk
def walk_latents(G, z_keys, space: str, frames: int, truncation: float, labels=None):
    """(cells, K, z_dim) key latents -> (cells, K * frames, …) walk latents: z (space=z) or w (space=w,
    (…, num_ws, w_dim) after truncation)."""
    import torch

    from distgan.latents import loop_walk

    cells, k = z_keys.shape[:2]
    if space == "w":
        flat = z_keys.reshape(cells * k, -1)
        y = None if labels is None else labels[:1].expand(len(flat))
        with torch.no_grad():
            w = G.mapping(flat, y, truncation_psi=truncation)[:, 0]  # (cells*K, w_dim): every layer's w is one
        keys = w.reshape(cells, k, -1)
        return torch.stack([loop_walk(keys[c], frames, spherical=False) for c in range(cells)])
    return torch.stack([loop_walk(z_keys[c], frames, spherical=True) for c in range(cells)])


def render_walk(G, walk, space: str, truncation: float, labels=None):
    """One frame's images from its (cells, …) latents."""
    import torch

    with torch.no_grad():
        if space == "w":
            ws = walk[:, None, :].expand(-1, G.num_ws, -1)
            return G.synthesis(ws)
        kw = {"truncation_psi": truncation} if truncation != 1.0 else {}
        return G(walk, labels, **kw) if labels is not None else G(walk, **kw)


def latent_walk(args: VideoArgs, out: Path) -> str:
    from distgan.latents import parse_seeds, seed_z

    seeds = parse_seeds(args.seeds)
    cols, rows = parse_grid(args.grid)
    cells = cols * rows
    if len(seeds) % cells:
        raise UserError(f"seeds={args.seeds} gives {len(seeds)} seeds; grid={args.grid} needs a multiple of {cells} "
                        f"({cells} walks of the same length)")
    if args.space not in ("z", "w"):
        raise UserError(f"space={args.space}: use space=z (slerp in z) or space=w (lerp in w)")
    if args.frames < 1 or args.fps < 1:
        raise UserError("frames= and fps= must be positive")
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    if len(state.data_shape or ()) != 3:
        raise UserError(f"checkpoint {args.checkpoint} draws 2D points, not images: there is nothing to film")
    if args.space == "w":
        require_style(cfg, "space=w")
    if args.truncation != 1.0:
        require_style(cfg, f"truncation={args.truncation}")
    labels = class_labels(state, args.label, cells)
    k = len(seeds) // cells
    z = seed_z(seeds, cfg.model.latent_dim).reshape(cells, k, -1)
    walk = walk_latents(G, z, args.space, args.frames, args.truncation, labels)  # (cells, T, …)
    total = walk.shape[1]
    frames = (tile(to_uint8(render_walk(G, walk[:, t], args.space, args.truncation, labels)), cols)
              for t in range(total))
    n = write_video(out, frames, args.fps, total, desc="latent walk")
    return (f"{n} frames ({len(seeds)} seeds, {args.frames} per seed, {args.space} space, grid {cols}x{rows}"
            f"{f', truncation {args.truncation:g}' if args.truncation != 1.0 else ''}) of step {state.step} "
            f"({'G_ema' if state.used_ema else 'G'}) -> {out}")


# ---------------------------------------------------------------------------------------- timelapse
def sample_grids(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's sample grids in step order."""
    folder = run / "samples"
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_PNG.match(p.name))] \
        if folder.is_dir() else []
    return sorted(found)


def batch_size_of(run: Path) -> int | None:
    """train.batch_size from the run's config.yaml (None when the file is missing or unreadable)."""
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        return None
    try:
        from omegaconf import OmegaConf

        return int(OmegaConf.select(OmegaConf.load(cfg_file), "train.batch_size"))
    except Exception:  # noqa: BLE001 - any unreadable config: the frames carry the step alone
        return None


def caption(picture: np.ndarray, text: str) -> np.ndarray:
    """``picture`` (H, W, 3) with a black band underneath carrying ``text`` in white."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = picture.shape[:2]
    band = 14
    img = Image.new("RGB", (w, h + band))
    img.paste(Image.fromarray(picture), (0, 0))
    ImageDraw.Draw(img).text((2, h + 1), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(img)


def timelapse(args: VideoArgs, out: Path) -> str:
    from PIL import Image

    run = Path(args.run)
    if not run.is_dir():
        raise UserError(f"run={args.run} is not a folder; give a run directory (it holds samples/step_*.png)")
    grids = sample_grids(run)
    if not grids:
        raise UserError(f"run={args.run} has no sample grids (samples/step_*.png); give a run directory of distgan")
    if args.fps < 1:
        raise UserError("fps= must be positive")
    batch = batch_size_of(run)
    size = Image.open(grids[0][1]).size

    def frames():
        for step, path in grids:
            img = Image.open(path).convert("RGB")
            if img.size != size:
                img = img.resize(size, Image.LANCZOS)
            text = f"step {step}" + (f"  {step * batch / 1000:.1f} kimg" if batch else "")
            yield caption(np.asarray(img), text)

    n = write_video(out, frames(), args.fps, len(grids), desc="timelapse")
    return f"{n} sample grids (steps {grids[0][0]}..{grids[-1][0]}) of {run} -> {out}"


def main(argv: list[str]) -> None:
    args = cli.parse(argv, VideoArgs, "video")
    out = check_out(args.out, VIDEO_SUFFIXES, "a video")
    if (args.checkpoint is None) == (args.run is None):
        raise UserError("give checkpoint=PATH (a latent walk) or run=RUN_DIR (a training timelapse), one of them")
    print(latent_walk(args, out) if args.checkpoint else timelapse(args, out))


def cli_main() -> None:
    """The ``distgan-video`` console script."""
    cli.run_main(main)
