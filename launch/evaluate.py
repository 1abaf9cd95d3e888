"""Score a checkpoint: ``python launch/evaluate.py checkpoint=PATH [num_samples=N] [--json]`` (the same as
``distgan-evaluate``; see distgan/commands/evaluate.py)."""

from distgan.cli import run_main
from distgan.commands.evaluate import main

if __name__ == "__main__":
    run_main(main)
