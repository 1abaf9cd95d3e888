"""Project a real image into a generator's W: ``python launch/project.py checkpoint=PATH target=face.png
out=DIR/`` (the same as ``distgan-project``; see distgan/commands/project.py)."""

from distgan.cli import run_main
from distgan.commands.project import main

if __name__ == "__main__":
    run_main(main)
