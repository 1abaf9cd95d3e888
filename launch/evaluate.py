"""Score a checkpoint: ``python launch/evaluate.py checkpoint=PATH [num_samples=N] [--json]``.

2D mixtures: the PacGAN mode-collapse protocol (modes, high-quality share, reverse KL). Images: FD,
KID, precision/recall and class coverage in the feature space of a classifier trained on the real data
(trained once and cached; see docs/evaluation.md). Prints a table, or one JSON object with ``--json``.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from distgan.metrics import cli  # noqa: E402


@dataclass
class ClassifierArgs:
    epochs: int = 2
    width: int = 16
    train_samples: int | None = None  # None: the whole training set
    real_samples: int = 10000  # real images in the reference set


@dataclass
class EvaluateArgs:
    checkpoint: str | None = cli.required()
    num_samples: int | None = None  # None: 2,500 for ring/grid (the protocol), 10,000 for images
    seed: int = 0
    ema: bool = True
    json: bool = False
    dataset_root: str | None = None  # where the real data is, if not where the run found it
    classifier: ClassifierArgs = field(default_factory=ClassifierArgs)


def main(argv: list[str]) -> None:
    import json
    from dataclasses import asdict, replace

    import torch

    from distgan import data
    from distgan.errors import UserError
    from distgan.metrics import Evaluator
    from distgan.metrics.classifier import ClassifierSettings

    args = cli.parse(argv, EvaluateArgs, "evaluate", flags=("json",))
    if args.num_samples is not None and args.num_samples < 2:
        raise UserError(f"num_samples must be at least 2, got {args.num_samples}")
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    if args.dataset_root:
        cfg = replace(cfg, dataset=replace(cfg.dataset, root=args.dataset_root))
    cfg = replace(cfg, dataset=data.locate(cfg.dataset))
    settings = ClassifierSettings(**asdict(args.classifier))
    evaluator = Evaluator(cfg, torch.device("cpu"), args.num_samples, args.seed, settings)
    scores = evaluator(G)
    report = {"checkpoint": str(args.checkpoint), "step": state.get("step"), "dataset": cfg.dataset.name,
              "generator": "G_ema" if state["used_ema"] else "G", "num_samples": evaluator.n, "metrics": scores}
    if evaluator.info:
        report["classifier_test_accuracy"] = evaluator.info["test_accuracy"]
    if args.json:
        print(json.dumps(report))
        return
    print(f"checkpoint {report['checkpoint']}  step {report['step']}  {report['generator']}  "
          f"{cfg.dataset.name}  {evaluator.n} samples")
    if evaluator.info:
        print(f"features: classifier with test accuracy {evaluator.info['test_accuracy']:.4f} "
              f"({evaluator.info['path']})")
    print(f"{'metric':<16}{'value':>12}")
    for name, value in scores.items():
        print(f"{name:<16}{value:>12.4f}" if isinstance(value, float) else f"{name:<16}{value:>12}")


if __name__ == "__main__":
    cli.run_main(main)
