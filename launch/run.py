"""Train a GAN: ``python launch/run.py [cluster=local|slurm] [model=…] [dataset=…] [key=value …]``
(the same as ``distgan-train``). Hydra composes configs/config.yaml with the command-line overrides; see
README.md for every key."""

from distgan.launcher.main import cli

if __name__ == "__main__":
    cli()
