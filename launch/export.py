"""Write a StyleGAN2 generator for NVIDIA's code: ``python launch/export.py checkpoint=RUN out=G.pt``
(the same as ``distgan-export``; see distgan/commands/export.py)."""

from distgan.cli import run_main
from distgan.commands.export import main

if __name__ == "__main__":
    run_main(main)
