"""Draw samples from a checkpoint: ``python launch/sample.py checkpoint=PATH num_samples=N out=FILE``
(the same as ``distgan-sample``; see distgan/commands/sample.py)."""

from distgan.cli import run_main
from distgan.commands.sample import main

if __name__ == "__main__":
    run_main(main)
