"""Train a GAN: ``python launch/run.py [cluster=local|slurm] [model=…] [dataset=…] [key=value …]``.

Hydra composes configs/config.yaml with the command-line overrides; see README.md for every key.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from distgan.launcher.main import register_schema, run  # noqa: E402
from distgan.launcher.precheck import check_command_line  # noqa: E402

register_schema()


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])  # Hydra's multi-line errors as one line, before any folder exists
    main()
