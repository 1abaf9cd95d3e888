"""Score a checkpoint: ``python launch/evaluate.py checkpoint=PATH [metrics.features=inception] [--json]``
(``metrics.inception_score=true metrics.inception_path=inception-2015-12-05.pt`` adds is50k);
also ``samples=FILE.npy|DIR dataset=NAME``, ``reference_only=true``, ``watch=RUN_DIR`` (the same as
``distgan-evaluate``; see distgan/commands/evaluate.py and docs/evaluation.md)."""

from distgan.cli import run_main
from distgan.commands.evaluate import main

if __name__ == "__main__":
    run_main(main)
