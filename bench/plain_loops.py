"""The hand-written reference of bench/throughput.py, case (a): plain PyTorch loops of the same
networks and phases as distgan's (no Ray, no DDP, no distgan in the loop; stylegan2 drives distgan's G and
D modules, the networks being the point, with the phases written by hand and batch-wise torch.randn draws).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM). Not ``ru_maxrss``: Linux carries that over from the parent
    across fork + exec, so a spawned worker would report at least its parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB (Linux) elsewhere


def param_counts(*modules: nn.Module) -> list[int]:
    return [sum(p.numel() for p in m.parameters()) for m in modules]


def plain_models(model: str) -> tuple[nn.Module, nn.Module, int]:
    """The blog post's MLP GAN, fixed (flat z, tanh output, logits), and DCGAN at 28 px: by hand."""
    if model == "stylegan2":
        return plain_stylegan2()
    if model == "mlp":
        nz = 100
        G = nn.Sequential(nn.Linear(nz, 256), nn.LeakyReLU(0.2), nn.Linear(256, 512), nn.LeakyReLU(0.2),
                          nn.Linear(512, 1024), nn.LeakyReLU(0.2), nn.Linear(1024, 784), nn.Tanh(),
                          nn.Unflatten(1, (1, 28, 28)))
        D = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.LeakyReLU(0.2), nn.Linear(1024, 512),
                          nn.LeakyReLU(0.2), nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1),
                          nn.Flatten(0))
        return G, D, nz
    nz = 64
    G = nn.Sequential(nn.Linear(nz, 128 * 7 * 7), nn.Unflatten(1, (128, 7, 7)), nn.BatchNorm2d(128), nn.ReLU(True),
                      nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
                      nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())
    D = nn.Sequential(nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(64, 128, 4, 2, 1),
                      nn.LeakyReLU(0.2, True), nn.Flatten(), nn.Linear(128 * 7 * 7, 1), nn.Flatten(0))
    return G, D, nz


# stylegan2: the network of configs/experiment/stylegan2_fmnist32.yaml and the phases of the StyleGAN2 recipes
# (lazy R1 every 16 D steps, path length every 4 G steps with batch shrink 2, style mixing 0.9), no ADA
SG2 = dict(channel_base=512, channel_max=32, mapping_layers=2, z_dim=32, w_dim=32, r1_gamma=0.1, r1_every=16,
           pl_weight=2.0, pl_every=4, pl_shrink=2, mixing=0.9, lr=0.0025, betas=(0.0, 0.99))
SG2_OVERRIDES = ("dataset.resolution=32", f"model.channel_base={SG2['channel_base']}",
                 f"model.channel_max={SG2['channel_max']}", f"model.mapping_layers={SG2['mapping_layers']}",
                 f"model.latent_dim={SG2['z_dim']}", f"model.w_dim={SG2['w_dim']}", f"train.r1_gamma={SG2['r1_gamma']}",
                 f"train.r1_interval={SG2['r1_every']}", f"train.pl_weight={SG2['pl_weight']}",
                 f"train.pl_interval={SG2['pl_every']}", f"train.pl_batch_shrink={SG2['pl_shrink']}",
                 f"train.style_mixing={SG2['mixing']}", f"train.lr_g={SG2['lr']}", f"train.lr_d={SG2['lr']}",
                 "train.beta1=0.0", "train.beta2=0.99")


def plain_stylegan2(fused_modconv: bool | None = None):
    """distgan's G and D of SG2; ``fused_modconv``: G's constructor argument (None = auto: not while training)."""
    from distgan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

    c = SG2
    G = StyleGAN2Generator(32, 1, c["channel_base"], c["channel_max"], c["mapping_layers"], c["z_dim"], c["w_dim"],
                           fused_modconv=fused_modconv)
    D = StyleGAN2Discriminator(32, 1, c["channel_base"], c["channel_max"], mapping_layers=c["mapping_layers"])
    return G, D, c["z_dim"]


def fmnist32(root: str) -> torch.Tensor:
    """Fashion-MNIST's training images resized to 32 px, uint8 (N, 1, 32, 32), as distgan's
    dataset.resolution=32 (bench/stylegan2_reference.py feeds NVIDIA's loop with it)."""
    import torchvision
    import torchvision.transforms.functional as TF

    x = torch.as_tensor(torchvision.datasets.FashionMNIST(root, train=True).data).unsqueeze(1)
    return TF.resize(x, [32, 32], antialias=True)


def real_batches(x: torch.Tensor, batch: int):
    """The plain loops' data: shuffled uint8 batches scaled to [-1, 1], reshuffled every epoch."""
    while True:
        perm = torch.randperm(len(x))
        for pos in range(0, len(x) - batch + 1, batch):
            yield x[perm[pos:pos + batch]].float().div_(127.5).sub_(1.0)


def plain_stylegan2_worker(root: str, batch: int, threads: int, tick: int, ticks: int) -> dict:
    """StyleGAN2's four phases by hand, the same arithmetic as distgan's step: D main (fakes from a no-grad
    G that moves w_avg), lazy R1 (x interval, Adam corrected by k/(k+1)), G main (D frozen), lazy path
    length on half the batch (x interval, corrected); per-pixel noise and style mixing drawn batch-wise
    from torch's global generator (distgan draws them per sample from (seed, stream, index))."""
    import math

    import torchvision
    import torchvision.transforms.functional as TF

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.as_tensor(torchvision.datasets.FashionMNIST(root, train=True).data).unsqueeze(1)
    x = TF.resize(x, [32, 32], antialias=True)  # uint8, as distgan's dataset.resolution=32
    G, D, nz = plain_stylegan2()
    c = SG2
    cd, cg = c["r1_every"] / (c["r1_every"] + 1), c["pl_every"] / (c["pl_every"] + 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=c["lr"] * cg, betas=tuple(b**cg for b in c["betas"]), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=c["lr"] * cd, betas=tuple(b**cd for b in c["betas"]), fused=True)
    pl_mean = torch.zeros([])

    def draws(n):
        noise = [torch.randn(n, 1, r, r) for r in G.noise_resolutions]
        mixed = torch.rand(n) < c["mixing"]
        cutoff = torch.where(mixed, torch.randint(1, G.num_ws, (n,)), torch.full((n,), G.num_ws))
        return dict(noise=noise, mixing=(torch.randn(n, nz), cutoff))

    reals, times, cpu, losses = real_batches(x, batch), [], [], []
    for step in range(1, tick * ticks + 1):
        real = next(reals)
        with torch.no_grad():
            fake = G(torch.randn(batch, nz), update_w_avg=True, **draws(batch))
        G.flush_w_avg()
        loss_d = F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean()
        loss_d.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        if (step - 1) % c["r1_every"] == 0:
            xr = real.detach().requires_grad_(True)
            logits = D(xr)
            (grad,) = torch.autograd.grad(logits.sum(), xr, create_graph=True)
            r1 = grad.square().sum([1, 2, 3]).mean() * (c["r1_gamma"] / 2)
            (r1 * c["r1_every"] + logits.mean() * 0).backward()
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        loss_g = F.softplus(-D(G(torch.randn(batch, nz), **draws(batch)))).mean()
        loss_g.backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        if (step - 1) % c["pl_every"] == 0:
            n = batch // c["pl_shrink"]
            img, ws = G(torch.randn(n, nz), return_ws=True, **draws(n))
            y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            penalty = (lengths - pl_mean).square().mean() * c["pl_weight"]
            pl_mean = pl_mean.lerp(lengths.detach().mean(), 0.01)
            (penalty * c["pl_every"] + img.sum() * 0).backward()
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
        D.requires_grad_(True)
        if step % tick == 0:
            losses.append((loss_d.item(), loss_g.item()))
            times.append(time.perf_counter())
            cpu.append(time.process_time())
    return {"times": times, "cpu": cpu, "rss_mb": peak_rss_mb(), "params": param_counts(G, D), "last_loss": losses[-1]}


def plain_worker(model: str, root: str, batch: int, threads: int, tick: int, ticks: int) -> dict:
    """The reference loop. Same arithmetic as distgan: a no-grad G forward for the D step, D frozen
    in the G step, fresh z per phase, BCE on logits, Adam(2e-4, (0.5, 0.999)), losses read per tick."""
    import torchvision

    if model == "stylegan2":
        return plain_stylegan2_worker(root, batch, threads, tick, ticks)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.as_tensor(torchvision.datasets.FashionMNIST(root, train=True).data).unsqueeze(1)  # uint8
    G, D, nz = plain_models(model)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    reals, times, cpu, losses = real_batches(x, batch), [], [], []
    for step in range(1, tick * ticks + 1):
        real = next(reals)
        with torch.no_grad():
            fake = G(torch.randn(batch, nz))
        loss_d = (F.binary_cross_entropy_with_logits(D(real), ones)
                  + F.binary_cross_entropy_with_logits(D(fake), zeros))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        D.requires_grad_(False)
        loss_g = F.binary_cross_entropy_with_logits(D(G(torch.randn(batch, nz))), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        if step % tick == 0:
            losses.append((loss_d.item(), loss_g.item()))  # a log tick: the only host sync
            times.append(time.perf_counter())
            cpu.append(time.process_time())
    return {"times": times, "cpu": cpu, "rss_mb": peak_rss_mb(), "params": param_counts(G, D), "last_loss": losses[-1]}
