"""Score a checkpoint: ``distgan-evaluate checkpoint=PATH [num_samples=N] [--json]``.

2D mixtures: the PacGAN mode-collapse protocol (modes, high-quality share, reverse KL). Images: FD,
KID, precision/recall and class coverage in the feature space of a classifier trained on the real data
(trained once and cached; see docs/evaluation.md). Prints a table, or one JSON object with ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distgan import cli
from distgan.metrics.classifier import ClassifierSettings


@dataclass
class EvaluateArgs:
    checkpoint: str | None = cli.required()
    num_samples: int | None = None  # None: 2,500 for ring/grid (the protocol), 10,000 for images
    seed: int = 0
    ema: bool = True
    json: bool = False
    dataset_root: str | None = None  # where the real data is, if not where the run found it
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)  # the feature network


def main(argv: list[str]) -> None:
    import json
    from dataclasses import replace

    import torch

    from distgan import data
    from distgan.errors import UserError
    from distgan.metrics import Evaluator

    args = cli.parse(argv, EvaluateArgs, "evaluate", flags=("json",))
    if args.num_samples is not None and args.num_samples < 2:
        raise UserError(f"num_samples must be at least 2, got {args.num_samples}")
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    if args.dataset_root:
        cfg = replace(cfg, dataset=replace(cfg.dataset, root=args.dataset_root))
    cfg = replace(cfg, dataset=data.locate(cfg.dataset))
    evaluator = Evaluator(cfg, torch.device("cpu"), args.num_samples, args.seed, args.classifier)
    scores = evaluator(G)
    report = {"checkpoint": str(args.checkpoint), "step": state.step, "dataset": cfg.dataset.name,
              "generator": "G_ema" if state.used_ema else "G", "num_samples": evaluator.n, "metrics": scores}
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


def cli_main() -> None:
    """The ``distgan-evaluate`` console script."""
    cli.run_main(main)
