"""Pack a folder (or zip) of images into a training zip:
``python launch/prepare_dataset.py source=DIR_OR_ZIP dest=OUT.zip resolution=256`` (the same as
``distgan-prepare-dataset``; see distgan/commands/prepare_dataset.py)."""

from distgan.cli import run_main
from distgan.commands.prepare_dataset import main

if __name__ == "__main__":
    run_main(main)
