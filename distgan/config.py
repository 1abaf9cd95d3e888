"""Typed configuration: the schema Hydra's YAML is merged into, and the rules every run shares.

Workers receive a plain :class:`Config` dataclass, never a ``DictConfig``. This module stands on the
ground: it imports nothing of distgan but :mod:`distgan.errors`. :func:`validate` checks what needs only
the config; the rules that need a registry live with their owners — the cluster backend
(distgan/launcher/backends.py), the datasets (distgan/data), the models (distgan/models), the losses
(distgan/losses.py), the augmentations (distgan/augment), the feature networks (distgan/metrics) — and the
launcher's pre-flight runs them all, once, before any worker or job starts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from distgan.errors import UserError

log = logging.getLogger("distgan")

PRECISIONS = ("fp32", "bf16", "fp16")
LR_DECAYS = ("none", "linear", "cosine")
G_ACTIVATIONS = ("leaky_relu", "relu")
NORMS = ("batch", "none")
EVAL_MODES = ("inline", "async")


@dataclass
class ClusterConfig:
    name: str = "local"  # local | slurm
    # --- local (and the worker count on slurm CPU nodes) ---
    num_workers: int | None = None  # DDP workers; null = all GPUs if any, else 2
    use_gpu: bool | None = None  # null = auto-detect (torch.cuda.is_available())
    cpus_per_worker: int = 1  # CPU threads per worker (torch.set_num_threads)
    max_failures: int = 0  # worker-group restarts from the last checkpoint (Ray FailureConfig)
    term_grace_s: int = 60  # after SIGTERM: seconds for the checkpoint at the next log tick, then stop at once
    # --- slurm ---
    nodes: int = 1  # SLURM nodes, one task (Ray node) per node
    gpus_per_node: int = 0  # GPUs per node; 0 = CPU nodes
    cpus_per_task: int = 2  # CPUs per node task (the Ray node's CPUs)
    workers_per_node: int = 1  # CPU nodes: DDP workers per node (GPU nodes: one per GPU)
    mem_gb: int | None = None  # memory per node in GB; null = site default
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 60  # job time limit, minutes
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load …)
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # extra sbatch options
    max_requeues: int = 3  # requeues on time limit / preemption
    signal_delay_s: int = 90  # SIGUSR2 this many seconds before the time limit
    wait: bool = False  # follow the job until it ends instead of returning after submission
    folder: str | None = None  # submitit log folder; null = <run_dir>/slurm
    network_interface: str | None = None  # Ray/gloo/NCCL interface, e.g. ib0; null = the one routing to the head
    node_failure_timeout_s: int = 120  # a lost node ends the attempt (requeue) within this many seconds
    port_range: str | None = None  # "LO-HI": every port Ray listens on comes from here (firewalls); null = any


@dataclass
class ModelConfig:
    name: str = "dcgan"  # mlp | dcgan | resnet | stylegan2
    latent_dim: int = 64  # size of z
    width: int = 64  # base channel count (conv) / unit multiplier (mlp)
    dropout: float = 0.0  # D dropout (mlp only)
    activation_g: str = "leaky_relu"  # mlp G's hidden activation: leaky_relu (the blog post's) | relu
    norm_g: str = "batch"  # G normalisation: batch | none
    norm_d: str = "none"  # D normalisation: batch | none
    spectral_norm: bool = False  # spectral normalisation on every D layer
    conditional: bool = False  # class-conditional G (class embedding + z) and projection D; labelled data only
    # --- stylegan2 ---
    resolution: int | None = None  # image side; null = the data's (dataset.resolution); must match it
    channel_base: int | None = None  # feature maps = min(channel_base / res, channel_max); null = 16384 (<512 px)
    channel_max: int = 512  # or 32768 (StyleGAN2-ADA's paper256/auto plans; config F at 512+ px)
    mapping_layers: int = 8  # FC layers of the mapping network (and of D's label mapping)
    w_dim: int = 512  # size of w (z is model.latent_dim)
    # modulated conv as one grouped conv (true) or scale, shared conv, scale (false); auto = false while
    # training, true for sampling and evaluation (NVIDIA's choice; docs/benchmarks.md measures both)
    fused_modconv: bool | str = "auto"
    mbstd_group: int = 4  # D's minibatch-std group; must divide every micro-batch
    mbstd_span: int | None = None  # NVIDIA's strided groups within runs of this many samples; null = contiguous
    conv_clamp: float | None = None  # clamp conv outputs to +-this (NVIDIA's pickles: 256); null = no clamp
    # --- r3gan (G's stages from 4x4 up; D uses them reversed) ---
    widths: list[int] | None = None  # channels per stage; stages = log2(resolution) - 1
    cardinalities: list[int] | None = None  # groups of each stage's 3x3 conv (divide width x expansion)
    blocks: list[int] | None = None  # residual blocks per stage
    expansion: int = 2  # inverted-bottleneck expansion of the residual blocks
    bf16_stages: int = 0  # the n highest-resolution stages of G and D compute in bfloat16 (R3GAN's FP16Stages)


@dataclass
class DatasetConfig:
    name: str = "fashion_mnist"
    root: str | None = None  # folder holding the data; null = ~/.cache/distgan/data
    download: bool = False  # let torchvision download when the files are missing
    resolution: int | None = None  # image side in pixels; null = native (folder/zip: a power of two 16..1024)
    image_size: int | None = None  # deprecated: the old name of resolution (still read, with a warning)
    num_samples: int = 60000  # 2D mixtures: points in the (generated) training set
    num_classes: int = 0  # filled in from the data (labelled image sets); 0 = unlabelled
    # --- image_folder / zip (streamed; docs/data.md) ---
    channels: int | None = None  # 1 or 3; null = 1 when every image is grayscale, else 3
    xflip: bool = False  # add left-right mirrored copies (the dataset doubles; StyleGAN2-ADA's --mirror)
    loader_workers: int | None = None  # DataLoader workers per DDP worker; null = cluster.cpus_per_worker - 1 (<= 8)
    stage_dir: str | None = None  # zip only: copy it once per node to this node-local folder before training
    skip_bad: bool = False  # replace (and count) images that fail to decode instead of stopping

    def __post_init__(self) -> None:
        """The deprecated ``image_size`` is folded into ``resolution`` here, once, whenever a config is made
        (composed from YAML, read back from a checkpoint or built in code): nothing else reads it."""
        if self.image_size is None:
            return
        if self.resolution is not None and self.resolution != self.image_size:
            raise UserError(f"dataset.image_size={self.image_size} and dataset.resolution={self.resolution} "
                            "disagree; dataset.image_size is the old name of dataset.resolution: set only that")
        log.warning("dataset.image_size is deprecated: use dataset.resolution=%s", self.image_size)
        self.resolution, self.image_size = self.image_size, None


@dataclass
class LossConfig:
    name: str = "bce"
    gp_weight: float = 10.0  # wgan_gp: gradient-penalty weight


@dataclass
class TrainConfig:
    steps: int = 2000  # generator steps
    batch_size: int = 64  # GLOBAL batch, split evenly over workers
    seed: int = 0
    n_critic: int = 1  # D steps per G step
    lr_g: float = 2e-4  # G and D learning rates: different values give two-time-scale updates (TTUR)
    lr_d: float = 2e-4
    beta1: float = 0.5  # Adam betas
    beta2: float = 0.999
    lr_decay: str = "none"  # none | linear | cosine: both learning rates fall to 0 at train.steps
    lr_decay_start: float = 0.0  # fraction of train.steps run at the full rate before the decay begins
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    compile: bool = False  # torch.compile G (and D unless a gradient penalty needs double backward); CUDA only
    ema_kimg: float = 0.0  # G_ema half-life in thousands of images; 0 = no EMA
    r1_gamma: float = 0.0  # R1 penalty weight on real data; 0 = off
    r1_interval: int = 16  # lazy D reg (R1, R2): every this many D steps
    r2_gamma: float = 0.0  # R2 penalty weight on fakes (loss=rpgan, R3GAN); 0 = off
    pl_weight: float = 0.0  # path-length regularisation weight (stylegan2; StyleGAN2: 2); 0 = off
    pl_interval: int = 4  # lazy G reg: every this many G steps
    pl_batch_shrink: int = 2  # the path-length batch is train.batch_size / this
    pl_decay: float = 0.01  # running-mean decay of the path lengths
    style_mixing: float = 0.0  # stylegan2: probability that a fake mixes two latents (StyleGAN2: 0.9)
    augment: str = "none"  # none | ada | diffaugment: applied to every image D sees, real and fake
    augment_p: float | None = None  # null: ada starts at 0, diffaugment applies each op with p = 1
    ada_target: float = 0.6  # ADA: target of r_t = E[sign(D(real))]
    ada_interval: int = 4  # ADA: D steps between updates of p (the statistic all-reduced over the ranks)
    ada_kimg: float = 500  # ADA: thousands of images for p to move by 1
    batch_per_gpu: int | None = None  # micro-batch per worker (gradient accumulation); null = the worker's share
    log_every: int = 50  # steps between log ticks (TensorBoard scalars, progress)
    sample_every: int = 500  # steps between sample grids
    checkpoint_every: int = 500  # steps between checkpoints
    eval_every: int = 0  # steps between metric evaluations; 0 = off
    eval_mode: str = "inline"  # inline: the loop evaluates | async: it only checkpoints, a separate evaluator scores
    keep_checkpoints: int = 3  # newest checkpoints kept (older ones deleted)
    num_sample_images: int = 64  # images in the sample grid
    skip_nonfinite: bool = False  # skip (and count) an update with a non-finite gradient instead of stopping
    max_skipped_fraction: float = 0.2  # skip_nonfinite: stop when more of a log tick's updates than this were skipped
    keep_samples: int = 100  # newest sample PNGs kept in samples/ (TensorBoard keeps all); 0 = keep all
    freeze_d: int = 0  # stylegan2: freeze D's first N layers from the highest resolution (StyleGAN2-ADA --freezed)
    # --- R3GAN's cosine schedules (distgan/schedules.py), over images: base value -> *_final ---
    schedule_kimg: float | None = None  # length of the decays in thousands of images; null = no schedule
    schedule_warmup_kimg: float = 0.0  # linear warm-up of the learning rates from 0 before the decay
    schedule_hold_kimg: float = 0.0  # the base values held this long (after the warm-up) before the decay
    lr_final: float | None = None  # G's final rate (D's: lr_final x lr_d / lr_g); null = constant
    beta2_final: float | None = None  # Adam's final beta2 (R3GAN: 0.9 -> 0.99); null = constant
    gamma_final: float | None = None  # final R1 weight (R2 keeps its ratio to R1); null = constant
    ema_final_kimg: float | None = None  # final G_ema half-life (R3GAN: from ema_kimg=0, no ramp-up); null = as usual
    augment_p_final: float | None = None  # final augmentation p (fixed-p augments: r3gan, diffaugment); null = constant


@dataclass
class MetricsConfig:
    """What ``train.eval_every`` and ``launch/evaluate.py`` measure (docs/evaluation.md). Image datasets only:
    the 2D mixtures always use the mode-collapse protocol."""

    features: str = "classifier"  # inception (TF-Inception: paper-comparable FID/KID) | classifier (distgan's own)
    num_samples: int | None = None  # generated samples; null = 50,000 (inception), 10,000 (classifier), 2,500 (2D)
    num_real: int | None = None  # inception: reference images, evenly spread over the training set; null = all (_full)
    inception_path: str | None = None  # a TF-Inception weights file (checked by sha256); null = found (see docs)
    download: bool = False  # fetch NVIDIA's inception-2015-12-05.pt when no weights are found
    batch_size: int = 64  # images per Inception forward (memory is bounded by this, not by num_samples)
    kid_pr_samples: int = 10000  # inception: features kept per side for KID and precision/recall
    inception_score: bool = False  # also is<N>: needs NVIDIA's inception-2015-12-05.pt (inception_path=FILE)


TUNE_SEARCHES = ("none", "asha", "pbt", "grid", "random")
TUNE_SPACES = ("choice", "uniform", "loguniform", "grid")
# what tune.params may not name (the run's place and the sweep itself), and what PBT may not change mid-run
# (the networks' shapes, the data, the length and batch of the run): a continued checkpoint must still fit
TUNE_FORBIDDEN = ("cluster", "tune", "run_dir", "resume", "init", "experiment")
TUNE_FIXED_MID_RUN = ("model.", "dataset.", "loss.name", "train.batch_size", "train.batch_per_gpu", "train.steps")
_TUNE_SPACE = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.S)


@dataclass
class TuneConfig:
    """``tune=asha|pbt|grid|random``: a hyper-parameter search of many trials in one Ray cluster
    (distgan/launcher/tune.py, docs/tune.md). ``tune=none`` (the default) trains one run."""

    name: str = "none"  # none | asha | pbt | grid | random
    # dotted config key -> search space: choice(a,b,..) | uniform(lo,hi) | loguniform(lo,hi) | grid(a,b,..)
    params: Any = None  # a mapping (typed Any: Hydra cannot merge a new dict into a typed dict field)
    num_trials: int = 8  # trials sampled (grid: repeats of the whole grid)
    metric: str = "auto"  # auto (fd / fid / reverse_kl by the data and metrics.features) | fid | fd | a logged scalar
    mode: str | None = None  # min | max; null: max for modes, high_quality and D/real, else min
    max_concurrent: int | None = None  # trials running at once; null: as many as the cluster's resources hold
    grace_kimg: float | None = None  # asha: the first rung, thousands of images; null: the first evaluation
    reduction_factor: float = 3  # asha: a rung keeps the best 1/reduction_factor of its trials
    perturbation_kimg: float | None = None  # pbt: thousands of images between exploits; null: every evaluation
    perturb: list[str] | None = None  # pbt: the keys it may perturb; null: every key of tune.params
    trial_gpus: int = 0  # GPUs per trial (one DDP worker each); 0: CPU trials
    trial_workers: int | None = None  # DDP workers per trial; null: trial_gpus, or 1 on CPUs


def tune_literal(text: str) -> Any:
    """One value of a search space as YAML would read it: int, float, true/false, null, else a string."""
    text = text.strip().strip("'\"")
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_space(key: str, text: Any) -> tuple[str, list[Any]]:
    """``tune.params`` entry -> (kind, values): choice/grid list their values, uniform/loguniform (lo, hi)."""
    m = _TUNE_SPACE.match(str(text))
    hint = "choice(a,b,..), uniform(lo,hi), loguniform(lo,hi) or grid(a,b,..)"
    if not m or m.group(1) not in TUNE_SPACES:
        raise UserError(f"tune.params: {key}: {text!r} is not a search space; write {hint}")
    kind, values = m.group(1), [tune_literal(a) for a in m.group(2).split(",") if a.strip()]
    if kind in ("choice", "grid"):
        if not values:
            raise UserError(f"tune.params: {key}: {kind}() needs at least one value, e.g. {kind}(1e-4,2e-4)")
        return kind, values
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"tune.params: {key}: {kind}() takes two numbers (lo,hi), got {text!r}")
    lo, hi = float(values[0]), float(values[1])
    if not lo < hi or not all(map(math.isfinite, (lo, hi))):
        raise UserError(f"tune.params: {key}: {kind}({values[0]},{values[1]}) needs lo < hi")
    if kind == "loguniform" and lo <= 0:
        raise UserError(f"tune.params: {key}: loguniform({values[0]},{values[1]}) needs lo > 0")
    return kind, [lo, hi]


def config_key_known(key: str) -> bool:
    """Whether ``key`` (``train.r1_gamma``) names a setting of :class:`Config`."""
    schema: Any = Config
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
        if part not in fields:
            return False
        f = fields[part]
        schema = type(f.default_factory()) if callable(f.default_factory) else None
    return not dataclasses.is_dataclass(schema)


def _check_tune(t: TuneConfig) -> None:
    """The search's own rules (the metric against what the trials log: distgan/launcher/tune_plan.py)."""
    _one_of("tune", t.name, TUNE_SEARCHES)
    if t.name == "none":
        return
    if not t.params:
        raise UserError(f"tune={t.name} needs tune.params, e.g. 'tune.params={{train.lr_d: "
                        "loguniform(1e-4,1e-3)}'")
    if not isinstance(t.params, dict):
        raise UserError(f"tune.params must map config keys to search spaces, e.g. 'tune.params={{train.lr_d: "
                        f"loguniform(1e-4,1e-3)}}', got {t.params!r}")
    for key, text in t.params.items():
        if key.split(".")[0] in TUNE_FORBIDDEN:
            raise UserError(f"tune.params: {key} cannot be searched (the run's place and the search itself); "
                            "tune model.*, dataset.*, loss.*, train.* or metrics.* keys")
        if not config_key_known(key):
            raise UserError(f"tune.params: unknown key {key!r}; use a dotted config key such as train.lr_d "
                            "(README.md, Configuration)")
        kind, _ = parse_space(key, text)
        if (kind == "grid") != (t.name == "grid"):
            raise UserError(f"tune.params: {key}: {kind}() " + ("belongs to tune=grid (every value is run); use "
                            "choice() to sample" if kind == "grid" else "samples; tune=grid runs every value of "
                            "grid(a,b,..)"))
    _positive("tune.num_trials", t.num_trials)
    if t.mode is not None:
        _one_of("tune.mode", t.mode, ("min", "max"))
    if t.max_concurrent is not None:
        _positive("tune.max_concurrent", t.max_concurrent)
    for name in ("grace_kimg", "perturbation_kimg"):
        if getattr(t, name) is not None:
            _positive(f"tune.{name}", getattr(t, name))
    if not t.reduction_factor > 1:
        raise UserError(f"tune.reduction_factor must be > 1, got {t.reduction_factor!r}")
    if t.trial_gpus < 0:
        raise UserError(f"tune.trial_gpus must be >= 0, got {t.trial_gpus!r}")
    if t.trial_workers is not None:
        _positive("tune.trial_workers", t.trial_workers)
        if t.trial_gpus and t.trial_workers != t.trial_gpus:
            raise UserError(f"tune.trial_workers={t.trial_workers} and tune.trial_gpus={t.trial_gpus}: a GPU trial "
                            "runs one DDP worker per GPU; set only tune.trial_gpus")
    if t.name == "pbt":
        for key in t.perturb if t.perturb is not None else list(t.params):
            if key not in t.params:
                raise UserError(f"tune.perturb: {key} is not in tune.params; PBT perturbs searched keys only")
            if any(key == fixed or key.startswith(fixed) for fixed in TUNE_FIXED_MID_RUN):
                raise UserError(f"tune=pbt cannot perturb {key}: a running trial cannot change it (the networks, "
                                "the data, the batch and the length are fixed mid-run); search it with tune=asha "
                                "or leave it out of tune.perturb")
    elif t.perturb is not None:
        raise UserError(f"tune.perturb is for tune=pbt (this is tune={t.name})")


@dataclass
class Config:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    resume: str = "auto"  # auto | never | PATH to a checkpoint
    init: str | None = None  # a network pickle or distgan checkpoint to start a new run from (fine-tuning)
    run_dir: str = ""  # absolute; filled in by the launcher from hydra.run.dir
    experiment: str | None = None  # name of the experiment recipe, if any
    tune: TuneConfig = field(default_factory=TuneConfig)  # tune=asha|pbt|grid|random: a search


def _positive(name: str, value: float) -> None:
    if value is None or value <= 0:
        raise UserError(f"{name} must be positive, got {value!r}")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _check_train(t: TrainConfig) -> None:
    _one_of("train.precision", t.precision, PRECISIONS)
    _one_of("train.lr_decay", t.lr_decay, LR_DECAYS)
    for name in ("steps", "batch_size", "n_critic", "log_every", "sample_every", "checkpoint_every",
                 "num_sample_images", "r1_interval", "keep_checkpoints", "lr_g", "lr_d"):
        _positive(f"train.{name}", getattr(t, name))
    for name in ("ema_kimg", "r1_gamma", "eval_every", "keep_samples", "r2_gamma", "pl_weight"):
        if getattr(t, name) < 0:
            raise UserError(f"train.{name} must be >= 0, got {getattr(t, name)!r}")
    _one_of("train.eval_mode", t.eval_mode, EVAL_MODES)
    _check_train_extras(t)
    _check_schedule(t)
    if not 0.0 <= t.lr_decay_start < 1.0:
        raise UserError(f"train.lr_decay_start must be in [0, 1) (a fraction of train.steps), got {t.lr_decay_start!r}")


def check_metrics(m: MetricsConfig) -> None:
    """The metrics settings (also ``launch/evaluate.py metrics.*``); the feature names are checked in
    :func:`validate` against the FEATURES registry, which imports torch."""
    for name in ("num_samples", "num_real"):
        value = getattr(m, name)
        if value is not None and value < 4:
            raise UserError(f"metrics.{name} must be at least 4 (precision/recall use the 3rd nearest neighbour), "
                            f"got {value!r}")
    _positive("metrics.batch_size", m.batch_size)
    if m.kid_pr_samples < 4:
        raise UserError(f"metrics.kid_pr_samples must be at least 4, got {m.kid_pr_samples!r}")


def _check_train_extras(t: TrainConfig) -> None:
    """Augmentation, path length, style mixing, accumulation: the settings that need no other group
    (the augmentation's name is checked by its registry, distgan.augment.check)."""
    for name in ("pl_interval", "pl_batch_shrink", "ada_interval", "ada_kimg", "pl_decay"):
        _positive(f"train.{name}", getattr(t, name))
    if t.batch_per_gpu is not None:
        _positive("train.batch_per_gpu", t.batch_per_gpu)
    fractions = ("style_mixing", "ada_target", "pl_decay", "max_skipped_fraction")
    for name in fractions + (("augment_p",) if t.augment_p is not None else ()):
        if not 0.0 <= getattr(t, name) <= 1.0:
            raise UserError(f"train.{name} must be in [0, 1], got {getattr(t, name)!r}")


def _check_schedule(t: TrainConfig) -> None:
    """R3GAN's cosine schedules (distgan/schedules.py)."""
    finals = ("lr_final", "beta2_final", "gamma_final", "ema_final_kimg", "augment_p_final")
    if t.schedule_kimg is None:
        for name in finals + ("schedule_warmup_kimg", "schedule_hold_kimg"):
            if getattr(t, name):
                raise UserError(f"train.{name} needs a schedule length: set train.schedule_kimg (thousands of "
                                "images, e.g. 20000 as R3GAN)")
        return
    if not t.schedule_kimg > 0:
        raise UserError(f"train.schedule_kimg must be positive (thousands of images) or null, got {t.schedule_kimg!r}")
    for name in ("schedule_warmup_kimg", "schedule_hold_kimg"):
        if getattr(t, name) < 0:
            raise UserError(f"train.{name} must be >= 0, got {getattr(t, name)!r}")
    if t.schedule_warmup_kimg + t.schedule_hold_kimg >= t.schedule_kimg:
        raise UserError("train.schedule_warmup_kimg + train.schedule_hold_kimg must be shorter than "
                        f"train.schedule_kimg={t.schedule_kimg}")
    if t.lr_decay != "none":
        raise UserError("train.lr_decay and train.schedule_kimg both schedule the learning rate: set "
                        "train.lr_decay=none (and train.lr_final) or train.schedule_kimg=null")
    if t.lr_final is not None and not t.lr_final > 0:
        raise UserError(f"train.lr_final must be positive, got {t.lr_final!r}")
    if t.beta2_final is not None and not 0.0 <= t.beta2_final < 1.0:
        raise UserError(f"train.beta2_final must be in [0, 1), got {t.beta2_final!r}")
    if t.gamma_final is not None:
        if t.gamma_final < 0:
            raise UserError(f"train.gamma_final must be >= 0, got {t.gamma_final!r}")
        if t.r1_gamma <= 0 and t.r2_gamma <= 0:
            raise UserError("train.gamma_final schedules R1/R2: set train.r1_gamma (and train.r2_gamma) to the "
                            "base value, or train.gamma_final=null")
    if t.ema_final_kimg is not None and t.ema_final_kimg < 0:
        raise UserError(f"train.ema_final_kimg must be >= 0, got {t.ema_final_kimg!r}")
    if t.augment_p_final is not None:
        if not 0.0 <= t.augment_p_final <= 1.0:
            raise UserError(f"train.augment_p_final must be in [0, 1], got {t.augment_p_final!r}")
        if t.augment in ("none", "ada"):
            raise UserError(f"train.augment_p_final schedules a fixed p; train.augment={t.augment} has none: use "
                            "train.augment=r3gan (or diffaugment), or train.augment_p_final=null")


def micro_batch(t: TrainConfig, workers: int) -> tuple[int, int]:
    """(micro-batch size, micro-batches per phase) of each worker: ``train.batch_per_gpu`` (null: the
    worker's whole share of ``train.batch_size``)."""
    local = t.batch_size // workers
    micro = t.batch_per_gpu or local
    return micro, local // micro


def _check_batches(cfg: Config, workers: int) -> None:
    """The per-worker batch splits into equal micro-batches, and the path-length batch too."""
    t, local = cfg.train, cfg.train.batch_size // workers
    if t.batch_per_gpu is not None and (t.batch_per_gpu > local or local % t.batch_per_gpu):
        raise UserError(f"train.batch_per_gpu={t.batch_per_gpu} does not divide the per-worker batch {local} "
                        f"(train.batch_size={t.batch_size} over {workers} workers); use a divisor of {local}")
    micro, _ = micro_batch(t, workers)
    if t.pl_weight > 0 and micro % t.pl_batch_shrink:
        raise UserError(f"train.pl_batch_shrink={t.pl_batch_shrink} must divide the micro-batch {micro} "
                        "(train.batch_per_gpu, or the per-worker batch)")


def _check_model_settings(m: ModelConfig) -> None:
    _positive("model.latent_dim", m.latent_dim)
    _positive("model.width", m.width)
    for name in ("norm_g", "norm_d"):
        if getattr(m, name) not in NORMS:
            raise UserError(f"model.{name} must be 'batch' or 'none', got {getattr(m, name)!r}")
    _one_of("model.activation_g", m.activation_g, G_ACTIVATIONS)
    for name in ("channel_max", "mapping_layers", "w_dim", "mbstd_group", "channel_base"):
        if name != "channel_base" or m.channel_base is not None:  # null: the resolution's default plan
            _positive(f"model.{name}", getattr(m, name))
    if m.fused_modconv not in (True, False, "auto"):
        raise UserError(f"model.fused_modconv must be auto, true or false, got {m.fused_modconv!r}")
    if not 0.0 <= m.dropout < 1.0:
        raise UserError(f"model.dropout must be in [0, 1), got {m.dropout!r}")
    if m.mbstd_span is not None and (m.mbstd_span <= 0 or m.mbstd_span % m.mbstd_group):
        raise UserError(f"model.mbstd_span={m.mbstd_span} must be a positive multiple of "
                        f"model.mbstd_group={m.mbstd_group}, or null (contiguous groups)")


def validate(cfg: Config, workers: int) -> Config:
    """Raise :class:`UserError` with a one-line fix for the first invalid setting that needs nothing but the
    config and the run's number of DDP workers. The rules of each registry (cluster backend, dataset, model,
    loss, augmentation, feature network) are their owners'; the launcher's pre-flight runs them all
    (distgan/launcher/preflight.py:check_config)."""
    _check_train(cfg.train)
    _check_model_settings(cfg.model)
    check_metrics(cfg.metrics)
    if cfg.resume not in ("auto", "never") and not cfg.resume:
        raise UserError("resume must be auto, never or a checkpoint path")
    if cfg.train.freeze_d < 0:
        raise UserError(f"train.freeze_d must be >= 0 (D layers frozen), got {cfg.train.freeze_d!r}")
    if cfg.init is not None and cfg.resume not in ("auto", "never"):
        raise UserError(f"init={cfg.init} and resume={cfg.resume} both name a start: init= begins a new run from a "
                        "network, resume=PATH continues a run with its optimizers; give one")
    _positive("cluster.cpus_per_worker", cfg.cluster.cpus_per_worker)
    _positive("cluster.term_grace_s", cfg.cluster.term_grace_s)
    if cfg.train.batch_size % workers:
        raise UserError(f"train.batch_size={cfg.train.batch_size} does not divide over {workers} workers; "
                        f"use a multiple of {workers}")
    _check_batches(cfg, workers)
    _check_tune(cfg.tune)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Inverse of :func:`to_dict` (used for configs saved in checkpoints)."""
    return Config(
        cluster=ClusterConfig(**d.get("cluster", {})),
        model=ModelConfig(**d.get("model", {})),
        dataset=DatasetConfig(**d.get("dataset", {})),
        loss=LossConfig(**d.get("loss", {})),
        train=TrainConfig(**d.get("train", {})),
        metrics=MetricsConfig(**d.get("metrics", {})),  # older checkpoints have none: the defaults
        resume=d.get("resume", "auto"),
        run_dir=d.get("run_dir", ""),
        experiment=d.get("experiment"),
        init=d.get("init"),
        tune=TuneConfig(**d.get("tune", {})),
    )
