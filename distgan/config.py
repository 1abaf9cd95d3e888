"""Typed configuration: the schema Hydra's YAML is merged into, and its validation.

Workers receive a plain :class:`Config` dataclass, never a ``DictConfig``. Every check that can fail
on bad user input lives in :func:`validate`, which the launcher calls before any worker or job starts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from distgan.errors import UserError

MODEL_NAMES = ("mlp", "dcgan", "resnet")
DATASET_NAMES = ("fashion_mnist", "mnist", "cifar10", "image_folder", "ring", "grid")
LOSS_NAMES = ("bce", "hinge", "wgan_gp", "lsgan")
CLUSTER_NAMES = ("local", "slurm")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_DECAYS = ("none", "linear", "cosine")
G_ACTIVATIONS = ("leaky_relu", "relu")


@dataclass
class ClusterConfig:
    name: str = "local"  # local | slurm
    # --- local (and the worker count on slurm CPU nodes) ---
    num_workers: int | None = None  # DDP workers; null = all GPUs if any, else 2
    use_gpu: bool | None = None  # null = auto-detect (torch.cuda.is_available())
    cpus_per_worker: int = 1  # CPU threads per worker (torch.set_num_threads)
    max_failures: int = 0  # worker-group restarts from the last checkpoint (Ray FailureConfig)
    # --- slurm ---
    nodes: int = 1  # SLURM nodes, one task (Ray node) per node
    gpus_per_node: int = 0  # GPUs per node; 0 = CPU nodes
    cpus_per_task: int = 2  # CPUs per node task (the Ray node's CPUs)
    workers_per_node: int | None = None  # CPU nodes: DDP workers per node; null = cpus_per_task
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
    name: str = "dcgan"  # mlp | dcgan | resnet
    latent_dim: int = 64  # size of z
    width: int = 64  # base channel count (conv) / unit multiplier (mlp)
    dropout: float = 0.0  # D dropout (mlp only)
    activation_g: str = "leaky_relu"  # mlp G's hidden activation: leaky_relu (the blog post's) | relu
    norm_g: str = "batch"  # G normalisation: batch | none
    norm_d: str = "none"  # D normalisation: batch | none
    spectral_norm: bool = False  # spectral normalisation on every D layer
    conditional: bool = False  # class-conditional G (class embedding + z) and projection D; labelled data only


@dataclass
class DatasetConfig:
    name: str = "fashion_mnist"
    root: str | None = None  # folder holding the data; null = ~/.cache/distgan/data
    download: bool = False  # let torchvision download when the files are missing
    image_size: int | None = None  # resize to this many pixels; null = native size
    num_samples: int = 60000  # 2D mixtures: points in the (generated) training set
    num_classes: int = 0  # filled in from the data (labelled image sets); 0 = unlabelled


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
    r1_interval: int = 16  # lazy R1: every this many D steps
    log_every: int = 50  # steps between log ticks (TensorBoard scalars, progress)
    sample_every: int = 500  # steps between sample grids
    checkpoint_every: int = 500  # steps between checkpoints
    eval_every: int = 0  # steps between metric evaluations; 0 = off
    keep_checkpoints: int = 3  # newest checkpoints kept (older ones deleted)
    num_sample_images: int = 64  # images in the sample grid
    skip_nonfinite: bool = False  # skip (and count) an update with a non-finite gradient instead of stopping
    keep_samples: int = 100  # newest sample PNGs kept in samples/ (TensorBoard keeps all); 0 = keep all


@dataclass
class Config:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resume: str = "auto"  # auto | never | PATH to a checkpoint
    run_dir: str = ""  # absolute; filled in by the launcher from hydra.run.dir
    experiment: str | None = None  # name of the experiment recipe, if any


_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def _positive(name: str, value: float) -> None:
    if value is None or value <= 0:
        raise UserError(f"{name} must be positive, got {value!r}")


def validate(cfg: Config, *, cuda_devices: int = 0) -> Config:
    """Raise :class:`UserError` with a one-line fix for the first invalid setting."""
    c, t = cfg.cluster, cfg.train
    for name, value, allowed in (
        ("cluster", c.name, CLUSTER_NAMES),
        ("model", cfg.model.name, MODEL_NAMES),
        ("dataset", cfg.dataset.name, DATASET_NAMES),
        ("loss", cfg.loss.name, LOSS_NAMES),
        ("train.precision", t.precision, PRECISIONS),
        ("train.lr_decay", t.lr_decay, LR_DECAYS),
    ):
        if value not in allowed:
            raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
    for name in ("steps", "batch_size", "n_critic", "log_every", "sample_every",
                 "checkpoint_every", "num_sample_images", "r1_interval", "keep_checkpoints"):
        _positive(f"train.{name}", getattr(t, name))
    for name in ("lr_g", "lr_d"):
        _positive(f"train.{name}", getattr(t, name))
    for name in ("ema_kimg", "r1_gamma", "eval_every", "keep_samples"):
        if getattr(t, name) < 0:
            raise UserError(f"train.{name} must be >= 0, got {getattr(t, name)!r}")
    if not 0.0 <= t.lr_decay_start < 1.0:
        raise UserError(f"train.lr_decay_start must be in [0, 1) (a fraction of train.steps), got {t.lr_decay_start!r}")
    _positive("model.latent_dim", cfg.model.latent_dim)
    _positive("model.width", cfg.model.width)
    for name in ("norm_g", "norm_d"):
        if getattr(cfg.model, name) not in ("batch", "none"):
            raise UserError(f"model.{name} must be 'batch' or 'none', got {getattr(cfg.model, name)!r}")
    if cfg.model.activation_g not in G_ACTIVATIONS:
        raise UserError(f"unknown model.activation_g {cfg.model.activation_g!r}; choose one of: "
                        f"{', '.join(G_ACTIVATIONS)}")
    if cfg.model.activation_g != "leaky_relu" and cfg.model.name != "mlp":
        raise UserError(f"model.activation_g applies to model=mlp; the {cfg.model.name} generator always uses ReLU")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise UserError(f"model.dropout must be in [0, 1), got {cfg.model.dropout!r}")
    if cfg.dataset.image_size is not None and cfg.dataset.image_size not in (28, 32, 64):
        raise UserError(f"dataset.image_size must be 28, 32 or 64, got {cfg.dataset.image_size!r}")
    if cfg.dataset.name == "image_folder" and not cfg.dataset.root:
        raise UserError("dataset=image_folder needs dataset.root=/path/to/images (one subfolder per class)")
    if cfg.dataset.name in ("ring", "grid") and cfg.model.name != "mlp":
        raise UserError(f"dataset={cfg.dataset.name} is 2D points: use model=mlp")
    if cfg.dataset.name in ("ring", "grid") and cfg.model.conditional:
        raise UserError(f"model.conditional=true needs a labelled dataset; dataset={cfg.dataset.name} has no "
                        "labels (use fashion_mnist, mnist, cifar10 or image_folder, or model.conditional=false)")
    if cfg.resume not in ("auto", "never") and not cfg.resume:
        raise UserError("resume must be auto, never or a checkpoint path")

    workers = world_size(cfg, cuda_devices=cuda_devices)
    if c.name == "local":
        if c.num_workers is not None:
            _positive("cluster.num_workers", c.num_workers)
        if use_gpu(cfg, cuda_devices) and workers > cuda_devices:
            raise UserError(
                f"cluster.num_workers={workers} asks for more GPUs than the {cuda_devices} present; "
                f"set cluster.num_workers<={cuda_devices} or cluster.use_gpu=false")
    else:
        _positive("cluster.nodes", c.nodes)
        _positive("cluster.cpus_per_task", c.cpus_per_task)
        _positive("cluster.timeout_min", c.timeout_min)
        if c.gpus_per_node < 0:
            raise UserError(f"cluster.gpus_per_node must be >= 0, got {c.gpus_per_node}")
        if c.max_requeues < 0:
            raise UserError(f"cluster.max_requeues must be >= 0, got {c.max_requeues}")
        if c.node_failure_timeout_s < 10:
            raise UserError(f"cluster.node_failure_timeout_s must be >= 10, got {c.node_failure_timeout_s}")
        _check_port_range(c.port_range, c.nodes)
        time = c.additional_parameters.get("time")
        if time is not None and not _SLURM_TIME.match(str(time)):
            raise UserError(f"malformed SLURM time {time!r}; use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS")
    _positive("cluster.cpus_per_worker", c.cpus_per_worker)
    if t.batch_size % workers:
        raise UserError(
            f"train.batch_size={t.batch_size} does not divide over {workers} workers; "
            f"use a multiple of {workers}")
    return cfg


_PORT_RANGE = re.compile(r"^(\d+)-(\d+)$")
PORTS_PER_NODE = 32  # Ray's eight services and its worker processes (distgan/launcher/network.py)


def _check_port_range(port_range: str | None, nodes: int) -> None:
    if port_range is None:
        return
    m = _PORT_RANGE.match(str(port_range))
    lo, hi = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
    if not m or not 1024 <= lo <= hi <= 65535:
        raise UserError(f"cluster.port_range must be LO-HI with 1024 <= LO <= HI <= 65535, got {port_range!r}")
    if (hi - lo + 1) // nodes < PORTS_PER_NODE:
        raise UserError(f"cluster.port_range={port_range} holds {hi - lo + 1} ports; {nodes} node(s) need at "
                        f"least {PORTS_PER_NODE} each: use a range of {PORTS_PER_NODE * nodes} or more")


def use_gpu(cfg: Config, cuda_devices: int) -> bool:
    c = cfg.cluster
    if c.name == "slurm":
        return c.gpus_per_node > 0
    return bool(cuda_devices) if c.use_gpu is None else bool(c.use_gpu)


def workers_per_node(c: ClusterConfig) -> int:
    """DDP workers on each SLURM node: one per GPU, else ``workers_per_node``, else one per task CPU."""
    return c.gpus_per_node or c.workers_per_node or c.cpus_per_task


def world_size(cfg: Config, *, cuda_devices: int = 0) -> int:
    """Number of DDP workers this config asks for."""
    c = cfg.cluster
    if c.name == "slurm":
        return c.nodes * workers_per_node(c)
    if c.num_workers is not None:
        return c.num_workers
    return cuda_devices if use_gpu(cfg, cuda_devices) and cuda_devices else 2


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
        resume=d.get("resume", "auto"),
        run_dir=d.get("run_dir", ""),
        experiment=d.get("experiment"),
    )
