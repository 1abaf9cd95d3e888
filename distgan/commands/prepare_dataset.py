"""Pack images into a training zip: ``distgan-prepare-dataset source=DIR_OR_ZIP dest=OUT.zip resolution=256``.

distgan's version of StyleGAN2-ADA's dataset_tool (distgan/data/prepare.py): every image centre-cropped
and resized (Lanczos) to ``resolution``, stored as PNG in StyleGAN's layout with labels from the class
subfolders in ``dataset.json``, decoded in parallel with a progress bar and its ETA, written atomically.
Unreadable and tiny files are skipped; the summary and the list of skipped files are printed at the end.
Then train on it: ``launch/run.py dataset=zip dataset.root=OUT.zip``.
"""

from __future__ import annotations

from dataclasses import dataclass

from distgan import cli


@dataclass
class PrepareArgs:
    source: str | None = cli.required()  # a folder of images (flat, or one subfolder per class) or a zip
    dest: str | None = cli.required()  # the zip to write (.zip)
    resolution: int | None = cli.required()  # a power of two from 16 to 1024
    channels: int | None = None  # 1 or 3; null: 1 when every image is grayscale, else 3
    workers: int | None = None  # decoding processes; null: every CPU
    min_size: int | None = None  # skip images whose shorter side is below this; null: resolution // 4
    overwrite: bool = False  # replace an existing dest
    labels: bool = True  # false: write {"labels": null} (subfolders are no classes)
    compress_level: int = 0  # PNG zlib level, 0-9 (0: the largest files, the fastest to decode)
    progress: bool = True  # the progress bar (on stderr)
    resize_filter: str = "lanczos"  # lanczos | box (NVIDIA's FFHQ-256 FIDs are of box-filtered images)


def report(summary) -> str:
    """The summary line, then one line per skipped file."""
    lines = [str(summary)]
    lines += [f"skipped (unreadable): {name}: {reason}" for name, reason in summary.unreadable]
    lines += [f"skipped (tiny, {w}x{h} px): {name}" for name, w, h in summary.tiny]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from distgan.data.prepare import prepare
    from distgan.errors import UserError

    args = cli.parse(argv, PrepareArgs, "prepare_dataset")
    if args.channels not in (None, 1, 3):
        raise UserError(f"channels={args.channels}: use 1 (grayscale), 3 (RGB) or leave it out")
    if not 0 <= args.compress_level <= 9:
        raise UserError(f"compress_level={args.compress_level} must be from 0 to 9")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"workers={args.workers} must be at least 1")
    summary = prepare(args.source, args.dest, args.resolution, channels=args.channels, workers=args.workers,
                      min_size=args.min_size, overwrite=args.overwrite, compress_level=args.compress_level,
                      labels=args.labels, progress=args.progress, resize_filter=args.resize_filter)
    print(report(summary))
    print(f"train on it: python launch/run.py dataset=zip dataset.root={summary.dest}")


def cli_main() -> None:
    """The ``distgan-prepare-dataset`` console script."""
    cli.run_main(main)
