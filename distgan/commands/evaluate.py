"""Score generators and images: ``distgan-evaluate`` / ``python launch/evaluate.py``.

::

    checkpoint=PATH [metrics.features=inception] [--json]   a checkpoint's generator
    samples=FILE.npy|DIR dataset=NAME                        images you bring, against a dataset (Inception)
    reference_only=true dataset=NAME (or checkpoint=PATH)    compute and cache the reference statistics now
    watch=RUN_DIR                                            score each new checkpoint of a run as it appears

``metrics.*`` are the training config's keys (:class:`distgan.config.MetricsConfig`). 2D mixtures: the PacGAN
mode-collapse protocol. Images: ``metrics.features=inception`` gives the standard fid50k_full, kid50k_full,
precision and recall (names follow ``metrics.num_samples``), printed with N, the reference size, the resize
and the extractor's hash; ``classifier`` (the default) FD/KID/precision/recall/class coverage in a classifier
distgan trains (docs/evaluation.md says which numbers compare with papers). ``metrics.inception_score=true``
adds the Inception Score (``is50k``, ``is50k_std``) with either features: it needs NVIDIA's
inception-2015-12-05.pt (``metrics.inception_path=PATH``), checked before any sample is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from distgan import cli
from distgan.config import MetricsConfig
from distgan.errors import UserError
from distgan.metrics.classifier import ClassifierSettings


@dataclass
class EvaluateArgs:
    checkpoint: str | None = None  # a run directory, its checkpoints/latest or /best, or a checkpoints/step_* folder
    samples: str | None = None  # FILE.npy (N x C x H x W in [-1, 1], as launch/sample.py writes) or a folder of images
    reference_only: bool = False  # compute (and cache) the dataset's Inception reference statistics, then stop
    watch: str | None = None  # RUN_DIR: score each new checkpoint as it appears (train.eval_mode=async), resumable
    dataset: str | None = None  # the reference dataset for samples= and reference_only (checkpoints know theirs)
    dataset_root: str | None = None  # where the real data is, if not where the run found it
    resolution: int | None = None  # dataset.resolution of dataset= (the reference's image size)
    seed: int = 0  # latents of sample i depend on (seed, i) only (watch= uses the run's train.seed)
    ema: bool = True
    device: str = "auto"  # auto: cuda if available, else cpu
    poll_s: float = 30.0  # watch=: seconds between looks for new checkpoints
    json: bool = False
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # the training config's metrics.* keys
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)  # metrics.features=classifier


def main(argv: list[str]) -> None:
    from distgan.config import check_metrics

    args = cli.parse(argv, EvaluateArgs, "evaluate", flags=("json",))
    check_metrics(args.metrics)
    device = _device(args.device)
    given = [f"{k}=" for k in ("checkpoint", "samples", "watch") if getattr(args, k)]
    if args.watch:
        if len(given) > 1 or args.reference_only:
            raise UserError("watch=RUN_DIR scores a run's checkpoints: drop checkpoint=, samples= and reference_only")
        return _watch(args, argv, device)
    if len(given) > 1:
        raise UserError("give one of checkpoint= and samples=")
    if args.reference_only:
        return _reference(args, device)
    if args.samples:
        return _samples(args, device)
    if args.checkpoint:
        return _checkpoint(args, device)
    raise UserError("missing checkpoint=PATH (or samples=FILE.npy|DIR dataset=NAME, reference_only=true "
                    "dataset=NAME, or watch=RUN_DIR)")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name}, but CUDA is not available here; use device=cpu")
    return name


def _inception_only(args: EvaluateArgs, what: str) -> None:
    if args.metrics.features != "inception":
        raise UserError(f"{what} is scored in Inception features: add metrics.features=inception "
                        "(the classifier's reference is made when it is first used)")


def _dataset(args: EvaluateArgs):
    """The reference dataset of samples= / reference_only: dataset=NAME (root, resolution) or a checkpoint's."""
    from distgan import data
    from distgan.config import DatasetConfig

    if args.checkpoint:
        _, cfg, _ = cli.load_generator(args.checkpoint)
        ds = replace(cfg.dataset, root=args.dataset_root) if args.dataset_root else cfg.dataset
    elif args.dataset:
        ds = DatasetConfig(name=args.dataset, root=args.dataset_root, resolution=args.resolution)
    else:
        raise UserError("name the reference: dataset=NAME (with dataset_root= if needed) or checkpoint=PATH")
    if data.spec(ds.name).kind != "image":
        raise UserError(f"dataset={ds.name} holds points, not images: Inception metrics need an image dataset")
    return data.locate(ds)


def _checkpoint(args: EvaluateArgs, device: str) -> None:
    import torch

    from distgan import data
    from distgan.metrics import Evaluator

    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema, device=device)
    if args.dataset_root:
        cfg = replace(cfg, dataset=replace(cfg.dataset, root=args.dataset_root))
    cfg = replace(cfg, dataset=data.locate(cfg.dataset), metrics=args.metrics)
    evaluator = Evaluator(cfg, torch.device(device), None, args.seed, args.classifier)
    scores = evaluator(G)
    report = {"checkpoint": str(args.checkpoint), "step": state.step, "dataset": cfg.dataset.name,
              "generator": "G_ema" if state.used_ema else "G", "num_samples": evaluator.n}
    if evaluator.streamed:
        report.update(_provenance(evaluator.meta, evaluator.info))
    elif evaluator.info:
        report["classifier_test_accuracy"] = evaluator.info["test_accuracy"]
    report.update({k: v for k, v in evaluator.meta.items() if k.startswith("is_")})
    _print({**report, "metrics": scores}, args.json, evaluator.info)


def _samples(args: EvaluateArgs, device: str) -> None:
    from distgan.metrics import inception_score as IS
    from distgan.metrics import sources
    from distgan.metrics.inception_metrics import InceptionMetrics

    _inception_only(args, "samples=")
    m = args.metrics
    is_net = IS.load_shared_probs(m.inception_path, m.download, device, m.batch_size) if m.inception_score else None
    ds = _dataset(args)

    def read():
        n, batches = sources.sample_batches(args.samples, m.batch_size)
        if m.num_samples:
            if m.num_samples > n:
                raise UserError(f"metrics.num_samples={m.num_samples}, but samples={args.samples} holds {n}")
            n, batches = m.num_samples, _first(batches, m.num_samples)
        return n, batches

    n, batches = read()
    scorer = InceptionMetrics(ds, m)
    scorer.prepare(device)
    scores, meta = scorer.score_images(n, batches, device=device)
    report = {"samples": str(args.samples), "dataset": ds.name, "num_samples": n, **_provenance(meta, scorer.info)}
    if is_net is not None:  # a second pass over the same images (the logits come from another network file)
        scores.update(IS.score_streamed(read()[1], is_net, n, device=device))
        report.update({"is_num_samples": n, "is_splits": IS.SPLITS,
                       "is_extractor_sha256": is_net.info["extractor_sha256"], "is_weights": is_net.info["weights"]})
    _print({**report, "metrics": scores}, args.json, scorer.info)


def _first(batches, n: int):
    """The samples with global index < n (one process: the indices come in order)."""
    for idx, images in batches:
        keep = idx < n
        if keep.any():
            yield idx[keep], images[keep]
        if not keep.all():
            return


def _reference(args: EvaluateArgs, device: str) -> None:
    import json

    from distgan.metrics import stats
    from distgan.metrics.inception_metrics import InceptionMetrics, dataset_key

    _inception_only(args, "reference_only=true")
    ds = _dataset(args)
    scorer = InceptionMetrics(ds, args.metrics)
    scorer.prepare(device)
    ref = scorer.reference(device=device)
    path = stats.reference_dir() / f"{stats.reference_key(dataset_key(ds), ref.meta)}.pt"
    report = {"dataset": ds.name, "num_real": ref.count, "training_set": ref.meta.get("training_set"),
              "resolution": ref.meta["resolution"], "resize": ref.meta["resize"],
              "extractor_sha256": ref.meta["extractor_sha256"], "subset": ref.meta["subset"], "cache": str(path)}
    if args.json:
        print(json.dumps(report))
        return
    print(f"reference of {ds.name}: {ref.count} of {report['training_set']} training images at "
          f"{report['resolution']} px, extractor sha256 {report['extractor_sha256']}, resize {report['resize']}")
    print(f"cached in {path}")


def _watch(args: EvaluateArgs, argv: list[str], device: str) -> None:
    import sys

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from distgan.config import check_metrics
    from distgan.metrics.watcher import SCORES, run_config, score_run

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    run_dir = Path(args.watch).expanduser().resolve()
    cfg = run_config(run_dir, poll_s=min(args.poll_s, 5.0), log=log)
    # the run's own metrics settings, with the metrics.* keys given on this command line on top
    given = [a.split(".", 1)[1] for a in argv if a.startswith("metrics.")]
    try:
        metrics = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cfg.metrics), OmegaConf.from_dotlist(given)))
    except OmegaConfBaseException as e:
        raise UserError(str(e).splitlines()[0]) from None
    check_metrics(metrics)
    log(f"watching {run_dir}: scores go to {run_dir / SCORES}; stop with Ctrl-C (a restart resumes)")
    n = score_run(run_dir, cfg, metrics, device, poll_s=args.poll_s, log=log, dataset_root=args.dataset_root,
                  ema=args.ema, load_generator=cli.load_generator)
    print(f"{n} checkpoint(s) scored; the run is done ({run_dir / SCORES})")


def _provenance(meta: dict, info: dict) -> dict:
    """What makes an Inception score comparable: N, the reference, the subsets, the resize, the network."""
    keys = ("num_samples", "num_real", "training_set", "kid_pr_samples", "resize", "extractor_sha256")
    return {**{k: meta.get(k) for k in keys}, "weights": info.get("weights")}


def _print(report: dict, as_json: bool, info: dict) -> None:
    import json

    if as_json:
        print(json.dumps(report))
        return
    source = f"checkpoint {report['checkpoint']}  step {report['step']}  {report['generator']}" \
        if "checkpoint" in report else f"samples {report['samples']}"
    print(f"{source}  {report['dataset']}  {report['num_samples']} samples")
    if "extractor_sha256" in report:
        real = report["num_real"]
        whole = "the whole training set" if real == report["training_set"] else f"of {report['training_set']}"
        print(f"features: inception-2015-12-05, sha256 {report['extractor_sha256']} ({report['weights']})")
        print(f"resize:   {report['resize']}")
        print(f"N = {report['num_samples']} generated, {real} real ({whole}); KID and precision/recall on "
              f"{' x '.join(map(str, report['kid_pr_samples']))}")
    elif info:
        print(f"features: classifier with test accuracy {info['test_accuracy']:.4f} ({info['path']})")
    if "is_weights" in report:
        print(f"IS:       {report['is_num_samples']} samples in {report['is_splits']} splits, inception-2015-12-05 "
              f"logits, sha256 {report['is_extractor_sha256']} ({report['is_weights']})")
    print(f"{'metric':<16}{'value':>12}")
    for name, value in report["metrics"].items():
        print(f"{name:<16}{value:>12.4f}" if isinstance(value, float) else f"{name:<16}{value:>12}")


def cli_main() -> None:
    """The ``distgan-evaluate`` console script."""
    cli.run_main(main)
