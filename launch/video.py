"""Videos of a generator: ``python launch/video.py checkpoint=PATH seeds=0-7 out=walk.mp4`` (a latent walk)
or ``python launch/video.py run=RUN_DIR out=progress.mp4`` (a training timelapse); the same as
``distgan-video`` (see distgan/commands/video.py)."""

from distgan.cli import run_main
from distgan.commands.video import main

if __name__ == "__main__":
    run_main(main)
