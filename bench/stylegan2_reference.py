"""distgan's StyleGAN2 training step side by side with NVIDIA's own code (stylegan2-ada-pytorch), on the CPU.

    git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/sg2ada      # NVIDIA's code: never in this repo
    python bench/stylegan2_reference.py --nvidia /tmp/sg2ada                   # the full run
    python bench/stylegan2_reference.py --nvidia /tmp/sg2ada --quick           # a few steps, in this process:
                                                                               # plumbing only
    python bench/stylegan2_reference.py --nvidia /tmp/sg2ada --json out.json   # also write the results

Without ``--nvidia`` it prints one line and exits 0 (skipped). NVIDIA's ``training.networks`` and
``training.loss`` are imported from that checkout (``sys.path``); its custom ops fall back to their reference
PyTorch implementations on the CPU (num_fp16_res=0, conv_clamp None). The network is bench/throughput.py's
stylegan2 case (bench/plain_loops.py SG2: Fashion-MNIST at 32 px, channel_base 512 / max 32, mapping 2,
z = w = 32, lazy R1 gamma 0.1 every 16, path length 2 every 4 on half the batch, style mixing 0.9, Adam 0.0025
(0, 0.99) with the lazy-regularisation correction, no G_ema), global batch 64, one process, 1 thread:
  (a) nvidia   NVIDIA's StyleGAN2Loss.accumulate_gradients, phases Gmain, Greg (every 4), Dmain, Dreg (every
               16) in training_loop.py's order, their Adam (lr, betas ** c, c = k / (k + 1)) and their
               nan_to_num of the gradients, driven by a minimal loop mirroring training_loop.py (no DataLoader:
               uint8 batches in memory, as the others; no G_ema, no stats collection, no snapshots)
  (b) distgan  distgan.train.train_worker, bench/throughput.py's stylegan2 config (model.fused_modconv=auto)
  (c) plain    bench/plain_loops.py's hand-written loop of distgan's G and D (same phases)
  micro        G forward+backward (fused_modconv false and true), D forward+backward, and the two double
               backwards (G path length, D R1), NVIDIA's modules vs distgan's, the same arithmetic around them
Every case runs in a fresh process (forkserver, bench/throughput.py's ``in_processes``), alternating a b c ...
then ... c b a over the rounds; img/s is the median over rounds, ratios are case / NVIDIA (> 1: faster).
Before timing, the networks are checked to be the same: parameter counts, and distgan's weights exported
with distgan.pretrained.nvidia.to_nvidia load strictly into NVIDIA's modules and give the same images and
logits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from plain_loops import SG2, fmnist32, param_counts, peak_rss_mb, plain_stylegan2, plain_worker, real_batches
from throughput import distgan_config, distgan_worker, in_processes, steady_rate

CASES = ("nvidia", "distgan", "plain")
LABELS = {"nvidia": "(a) NVIDIA stylegan2-ada", "distgan": "(b) distgan train_worker",
          "plain": "(c) plain loop, distgan nets"}
# micro: (network, what, fused_modconv); fused None = the implementation's training default (non-fused)
MICRO = (("G", "fwd+bwd", False), ("G", "fwd+bwd", True), ("D", "fwd+bwd", None),
         ("G", "path length", False), ("D", "R1", None))
URL = "https://github.com/NVlabs/stylegan2-ada-pytorch"


# ------------------------------------------------------------------------------------------ NVIDIA's code
def nvidia_path_problem(path: str) -> str | None:
    p = Path(path)
    if not (p / "training" / "networks.py").is_file() or not (p / "training" / "loss.py").is_file():
        return f"--nvidia {path}: not a checkout of NVlabs/stylegan2-ada-pytorch (no training/networks.py, loss.py)"
    return None


def import_nvidia(path: str):
    """NVIDIA's ``training.networks`` and ``training.loss`` from the checkout at ``path`` (never copied here)."""
    path = str(Path(path).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.utils.cpp_extension: "No CUDA runtime is found" on a CPU box
        from training import loss, networks  # noqa: PLC0415 - NVIDIA's package, found through sys.path

    return networks, loss


def nvidia_kwargs(cfg) -> tuple[dict, dict]:
    """NVIDIA's Generator and Discriminator constructor arguments for distgan's model config, by
    distgan.pretrained.nvidia's mapping (fp32 everywhere: num_fp16_res=0)."""
    from distgan.pretrained.nvidia import nvidia_generator_kwargs

    m = cfg.model
    shape = (1, 32, 32)
    g = nvidia_generator_kwargs(m, shape, 0)
    syn = g["synthesis_kwargs"]
    d = dict(c_dim=0, img_resolution=shape[1], img_channels=shape[0], architecture="resnet",
             channel_base=syn["channel_base"], channel_max=m.channel_max, num_fp16_res=0, conv_clamp=m.conv_clamp,
             epilogue_kwargs=dict(mbstd_group_size=m.mbstd_group))
    return g, d


def nvidia_nets(path: str, g_kwargs: dict, d_kwargs: dict):
    networks, _ = import_nvidia(path)
    G = networks.Generator(**g_kwargs).train().requires_grad_(False)  # as training_loop.py
    D = networks.Discriminator(**d_kwargs).train().requires_grad_(False)
    return G, D


def check_networks(path: str, cfg, g_kwargs: dict, d_kwargs: dict) -> dict:
    """Parameter counts of both, and distgan's weights in NVIDIA's modules: max |difference| of G's images
    (constant noise, no mixing) and D's logits (batch = one minibatch-std group, so grouping cannot differ)."""
    from distgan.models import build_models
    from distgan.pretrained.nvidia import to_nvidia

    torch.manual_seed(0)
    nG, nD = nvidia_nets(path, g_kwargs, d_kwargs)
    G, D = build_models(cfg.model, (1, 32, 32))
    G.eval()
    nG.eval()
    nG.load_state_dict(to_nvidia(G.state_dict(), "G", 32), strict=True)
    nD.load_state_dict(to_nvidia(D.state_dict(), "D", 32), strict=True)
    n = cfg.model.mbstd_group
    z, c = torch.randn(n, G.z_dim), torch.zeros(n, 0)
    with torch.no_grad():
        img = G(z)
        img_nv = nG(z, c, noise_mode="const")
        logits, logits_nv = D(img), nD(img, c).squeeze(1)
    return {"nvidia": param_counts(nG, nD), "distgan": param_counts(G, D),
            "g_diff": (img - img_nv).abs().max().item(), "g_range": img.abs().max().item(),
            "d_diff": (logits - logits_nv).abs().max().item()}


# ------------------------------------------------------------------------------------ (a) NVIDIA's loop
def nvidia_worker(path: str, g_kwargs: dict, d_kwargs: dict, loss_kwargs: dict, opt: dict, root: str,
                  batch: int, threads: int, tick: int, ticks: int) -> dict:
    """training_loop.py's inner loop on one CPU process: phases Gmain, Greg, Dmain, Dreg (reg every
    ``interval`` batches, loss gain = interval), each: zero_grad, requires_grad_(True), accumulate_gradients
    (one round: batch_gpu = batch), requires_grad_(False), nan_to_num of the gradients, Adam step."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    _, loss_mod = import_nvidia(path)
    from torch_utils import misc  # NVIDIA's, importable once import_nvidia put the checkout on sys.path

    G, D = nvidia_nets(path, g_kwargs, d_kwargs)
    loss = loss_mod.StyleGAN2Loss(device=torch.device("cpu"), G_mapping=G.mapping, G_synthesis=G.synthesis, D=D,
                                  augment_pipe=None, **loss_kwargs)
    phases = []
    for name, module, interval in (("G", G, opt["G_reg_interval"]), ("D", D, opt["D_reg_interval"])):
        ratio = interval / (interval + 1)
        adam = torch.optim.Adam(module.parameters(), lr=opt["lr"] * ratio, betas=[b**ratio for b in opt["betas"]],
                                eps=1e-8)
        phases += [(name + "main", module, adam, 1), (name + "reg", module, adam, interval)]
    x = fmnist32(root)
    reals, times, cpu = real_batches(x, batch), [], []
    c = torch.zeros(batch, G.c_dim)
    for batch_idx in range(tick * ticks):
        real = next(reals)  # training_loop: uint8 -> float32 / 127.5 - 1
        all_gen_z = torch.randn([len(phases) * batch, G.z_dim]).split(batch)
        for (name, module, adam, interval), gen_z in zip(phases, all_gen_z):
            if batch_idx % interval != 0:
                continue
            adam.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            loss.accumulate_gradients(phase=name, real_img=real, real_c=c, gen_z=gen_z, gen_c=c, sync=True,
                                      gain=interval)
            module.requires_grad_(False)
            for param in module.parameters():
                if param.grad is not None:
                    misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            adam.step()
        if (batch_idx + 1) % tick == 0:
            times.append(time.perf_counter())
            cpu.append(time.process_time())
    return {"times": times, "cpu": cpu, "rss_mb": peak_rss_mb(), "params": param_counts(G, D)}


# ------------------------------------------------------------------------------------------------ micro
def micro_worker(impl: str, net: str, what: str, fused: bool | None, path: str | None, g_kwargs: dict,
                 d_kwargs: dict, batch: int, threads: int, warm: int, iters: int) -> dict:
    """Seconds per iteration of one network's forward + backward (or its double backward), ``iters`` timed
    after ``warm``. The same arithmetic for both implementations; per-pixel noise drawn batch-wise with
    torch.randn (NVIDIA's layers draw it inside, distgan's take it as an argument); no style mixing."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if impl == "nvidia":
        G, D = nvidia_nets(path, g_kwargs, d_kwargs)
        c = torch.zeros(batch, 0)
        mapping = lambda z: G.mapping(z, c[: z.shape[0]])  # noqa: E731
        synthesis = lambda ws: G.synthesis(ws, fused_modconv=fused)  # noqa: E731 - None: NVIDIA's own rule
        disc = lambda x: D(x, c[: x.shape[0]]).squeeze(1)  # noqa: E731
    else:
        G, D, _ = plain_stylegan2(fused_modconv=fused)
        mapping = G.map  # noqa: E731

        def synthesis(ws):
            return G.synthesis(ws, [torch.randn(ws.shape[0], 1, r, r) for r in G.noise_resolutions])

        disc = D
    module = G if net == "G" else D
    module.requires_grad_(True)
    n = batch // SG2["pl_shrink"] if what == "path length" else batch
    y = torch.randn(n, 1, 32, 32)

    def once():
        if net == "G":
            z = torch.randn(n, SG2["z_dim"])
            ws = mapping(z)
            img = synthesis(ws)
            if what == "path length":  # StyleGAN2Loss's Gpl, with a fixed pl_mean
                (grad,) = torch.autograd.grad((img * y / 32).sum(), ws, create_graph=True)
                lengths = grad.square().sum(2).mean(1).sqrt()
                loss = (lengths - 1.0).square().mean() + img[:, 0, 0, 0].mean() * 0
            else:
                loss = (img * y).mean()
        else:
            x = y.clone().requires_grad_(what == "R1")
            logits = disc(x)
            if what == "R1":
                (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
                loss = grad.square().sum([1, 2, 3]).mean() + logits.mean() * 0
            else:
                loss = logits.mean()
        loss.backward()
        for p in module.parameters():
            p.grad = None

    times = []
    for i in range(warm + iters):
        start = time.perf_counter()
        once()
        if i >= warm:
            times.append(time.perf_counter() - start)
    return {"s_per_iter": statistics.median(times), "images": n, "rss_mb": peak_rss_mb()}


def micro_key(net: str, what: str, fused: bool | None) -> str:
    return f"{net} {what}" + ("" if fused is None else f", fused_modconv={str(fused).lower()}")


# ------------------------------------------------------------------------------------------------- runs
def run_case(case: str, args, setup: dict) -> dict:
    tick, warm, measure = args.tick, args.warm, args.measure
    ticks = warm + measure
    if case == "nvidia":
        [out] = in_processes(nvidia_worker, (args.nvidia, setup["g"], setup["d"], setup["loss"], setup["opt"],
                                             setup["root"], args.batch, args.threads, tick, ticks),
                             1, args.timeout, args.quick)
    elif case == "plain":
        [out] = in_processes(plain_worker, ("stylegan2", setup["root"], args.batch, args.threads, tick, ticks), 1,
                             args.timeout, args.quick)
    else:
        with tempfile.TemporaryDirectory(prefix="distgan-bench-sg2ref-") as run_dir:
            # one tick more than timed: distgan's last one also writes samples and a checkpoint
            cfg = distgan_config("stylegan2", setup["root"], args.batch, 1, args.threads, tick * (ticks + 1), tick,
                                 run_dir, extra=("model.fused_modconv=auto",))
            [out] = in_processes(distgan_worker, (cfg,), 1, args.timeout, args.quick)
    cpu_s = out["cpu"][ticks - 1] - out["cpu"][warm - 1]
    return {"img_s": steady_rate(out["times"], warm, measure, tick * args.batch),
            "img_cpu_s": measure * tick * args.batch / cpu_s, "rss_mb": out["rss_mb"]}


def run_micro(impl: str, spec, args, setup: dict) -> dict:
    net, what, fused = spec
    [out] = in_processes(micro_worker, (impl, net, what, fused, args.nvidia, setup["g"], setup["d"], args.batch,
                                        args.threads, args.micro_warm, args.micro_iters), 1, args.timeout, args.quick)
    return {"img_s": out["images"] / out["s_per_iter"], "ms": 1000 * out["s_per_iter"]}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nvidia", help=f"a checkout of NVlabs/stylegan2-ada-pytorch (git clone {URL})")
    p.add_argument("--quick", action="store_true", help="a few steps per case: plumbing only, numbers meaningless")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads per case")
    p.add_argument("--tick", type=int, default=16, help="steps per timing tick (16: one lazy R1, four path lengths)")
    p.add_argument("--warm", type=int, default=2, help="warm-up ticks, not timed")
    p.add_argument("--measure", type=int, default=6, help="timed ticks")
    p.add_argument("--micro-warm", type=int, default=3)
    p.add_argument("--micro-iters", type=int, default=20)
    p.add_argument("--cases", default="nvidia,distgan,plain,micro", help="which of nvidia,distgan,plain,micro")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.tick, args.warm, args.measure, args.micro_warm, args.micro_iters = 1, 2, 1, 1, 1, 2
    args.cases = args.cases.split(",")
    unknown = set(args.cases) - {*CASES, "micro"}
    if unknown:
        p.error(f"--cases: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> dict | None:
    args = parse(argv)
    if not args.nvidia:
        print(f"stylegan2_reference: skipped: no --nvidia PATH (a checkout of {URL}; NVIDIA's code is not in "
              "this repository)")
        return None
    problem = nvidia_path_problem(args.nvidia)
    if problem:
        sys.exit(f"stylegan2_reference: {problem}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from distgan import data
    from distgan.config import DatasetConfig

    root = data.locate(DatasetConfig(name="fashion_mnist")).root
    with tempfile.TemporaryDirectory() as tmp:
        cfg = distgan_config("stylegan2", root, args.batch, 1, args.threads, 1, 1, tmp,
                             extra=("model.fused_modconv=auto",))
    t = cfg.train
    g_kwargs, d_kwargs = nvidia_kwargs(cfg)
    setup = {"root": root, "g": g_kwargs, "d": d_kwargs,
             "loss": dict(r1_gamma=t.r1_gamma, style_mixing_prob=t.style_mixing, pl_weight=t.pl_weight,
                          pl_batch_shrink=t.pl_batch_shrink, pl_decay=0.01),
             "opt": dict(lr=t.lr_g, betas=(t.beta1, t.beta2), G_reg_interval=t.pl_interval,
                         D_reg_interval=t.r1_interval)}
    if t.lr_g != t.lr_d:
        sys.exit("stylegan2_reference: NVIDIA's loop here takes one learning rate; the config has two")
    same = check_networks(args.nvidia, cfg, g_kwargs, d_kwargs)
    equal = same["nvidia"] == same["distgan"]
    print(f"parameters G/D: NVIDIA {same['nvidia'][0]:,}/{same['nvidia'][1]:,}, distgan "
          f"{same['distgan'][0]:,}/{same['distgan'][1]:,}"
          f"{'' if equal else '  (DIFFERENT networks: the ratios are not comparable)'}")
    ok = same["g_diff"] <= 1e-4 * max(1.0, same["g_range"]) and same["d_diff"] <= 1e-4
    print(f"same weights in both: max |image difference| {same['g_diff']:.1e} (of {same['g_range']:.1f}), "
          f"max |logit difference| {same['d_diff']:.1e}{'' if ok else '  (NOT the same networks)'}", flush=True)

    order = [("train", c) for c in CASES if c in args.cases]
    if "micro" in args.cases:
        order += [("micro", (impl, spec)) for spec in MICRO for impl in ("nvidia", "distgan")]
    runs: dict = {key: [] for key in order}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for kind, what in order if r % 2 == 0 else order[::-1]:  # a b c …, then … c b a
            if kind == "train":
                res = run_case(what, args, setup)
                label = LABELS[what]
            else:
                res = run_micro(*what, args, setup)
                label = f"micro {what[0]:7s} {micro_key(*what[1])}"
            runs[kind, what].append(res)
            print(f"round {r + 1}/{args.rounds}  {label:50s} {res['img_s']:8.1f} img/s", flush=True)
        load.append(os.getloadavg()[0])
    return report(args, order, runs, same, load)


def report(args, order, runs, same, load) -> dict:
    out = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "torch": torch.__version__,
           "cpus": os.cpu_count(), "threads": args.threads, "batch": args.batch, "rounds": args.rounds,
           "quick": args.quick, "load_1min": load, "networks": same, "train": [], "micro": []}
    print(f"\nStyleGAN2 (32 px Fashion-MNIST, SG2 of bench/plain_loops.py), batch {args.batch}, {args.threads} "
          f"thread(s), {args.rounds} alternating round(s), median; 1-min load {min(load):.2f}..{max(load):.2f}"
          f"{'  [--quick: plumbing only, numbers meaningless]' if args.quick else ''}")
    med = {k: statistics.median(x["img_s"] for x in v) for k, v in runs.items()}
    train = [w for k, w in order if k == "train"]
    if train:
        print(f"{'training step':32s} {'img/s':>8s} {'min..max':>17s} {'img/CPU-s':>10s} {'vs NVIDIA':>10s} "
              f"{'peak RSS':>9s}")
        base = med.get(("train", "nvidia"))
        for c in train:
            rates = [x["img_s"] for x in runs["train", c]]
            cpu = statistics.median(x["img_cpu_s"] for x in runs["train", c])
            rss = max(x["rss_mb"] for x in runs["train", c])
            ratio = med["train", c] / base if base else None
            print(f"{LABELS[c]:32s} {med['train', c]:8.1f} {min(rates):8.1f}..{max(rates):<8.1f} {cpu:10.1f} "
                  f"{'' if ratio is None else f'{ratio:.3f}':>10s} {rss:6.0f} MB")
            out["train"].append({"case": c, "img_s": med["train", c], "img_s_runs": rates, "img_cpu_s": cpu,
                                 "rss_mb": rss, "vs_nvidia": ratio})
    micro = [w for k, w in order if k == "micro"]
    if micro:
        print(f"\n{'micro (one network alone)':44s} {'NVIDIA ms':>10s} {'distgan ms':>10s} {'NV img/s':>9s} "
              f"{'dg img/s':>9s} {'distgan/NV':>10s}")
        for spec in MICRO:
            if ("nvidia", spec) not in micro:
                continue
            nv, dg = med["micro", ("nvidia", spec)], med["micro", ("distgan", spec)]
            ms = {i: statistics.median(x["ms"] for x in runs["micro", (i, spec)]) for i in ("nvidia", "distgan")}
            print(f"{micro_key(*spec):44s} {ms['nvidia']:10.1f} {ms['distgan']:10.1f} {nv:9.1f} {dg:9.1f} "
                  f"{dg / nv:10.3f}")
            out["micro"].append({"case": micro_key(*spec), "nvidia_img_s": nv, "distgan_img_s": dg,
                                 "nvidia_ms": ms["nvidia"], "distgan_ms": ms["distgan"], "distgan_vs_nvidia": dg / nv})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
