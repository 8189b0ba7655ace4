"""Perceptual distances between two image batches, differentiable, from weights that are installed offline.

Both take images in [-1, 1] (NCHW, 1 or 3 channels) and return one distance per image, ``[B]``.

:class:`InceptionDistance` is LPIPS's construction (Zhang et al. 2018, Eq. 1) on the FID Inception-v3
(:mod:`diffusekit.metrics.inception`, the TorchScript file its layers are read from) instead of VGG/AlexNet,
whose weights would have to be downloaded: at each chosen layer the features are unit-normalised along the
channels, the squared difference is summed over the channels and averaged over the positions, and the layers'
values are added,

    d(x, y) = sum_l  mean_{h,w}  || f_l(x)_{hw} / ||f_l(x)_{hw}||  -  f_l(y)_{hw} / ||f_l(y)_{hw}|| ||^2.

There are no learned linear heads (LPIPS's ``w_l``, fitted to human judgements of VGG features): every channel
weighs the same, which is LPIPS's "baseline" variant (``lpips=False``). The default layers are the last one
at each resolution before a downsampling: ``conv_2`` (64 channels, 1/2), ``conv_4`` (192, 1/4), ``mixed_2``
(288, 1/8) and ``mixed_7`` (768, 1/16), the Inception counterparts of LPIPS's ``relu1_2 ... relu5_3``. The
network runs at the image's own size (no resize to 299): its valid convolutions need at least
``MIN_SIZE[layer]`` pixels per side for the deepest chosen layer (43 for ``mixed_7``). The input scaling is
pytorch-fid's, which maps [0, 1] to [-1, 1]: images in [-1, 1] go in unchanged.

:func:`ssim_distance` is ``1 - SSIM`` (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, K = (0.01, 0.03), on
images mapped to [0, 1]) and :func:`ms_ssim_distance` ``1 - MS-SSIM`` (Wang et al. 2003, the five published
scale weights), both from ``pytorch-msssim``. Its MS-SSIM downsamples four times and asserts a smaller side above
``(11 - 1) * 2^4 = 160`` pixels whatever the number of scales, so 64 x 64 images take single-scale SSIM; fewer
scales would need a window of 3 pixels, no longer the published index.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from pytorch_msssim import ms_ssim, ssim
from torch import Tensor, nn

from ..errors import UsageError
from .inception import inception_weights_path

__all__ = ["InceptionDistance", "INCEPTION_LAYERS", "DEFAULT_INCEPTION_LAYERS", "MIN_SIZE", "ssim_distance",
           "ms_ssim_distance", "SSIM_MIN_SIZE", "MS_SSIM_MIN_SIZE"]

# The FID Inception-v3's top-level blocks, in order (net.net.layers of the TorchScript file).
INCEPTION_LAYERS = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1",
                    "mixed_2", "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_8", "mixed_9",
                    "mixed_10")
DEFAULT_INCEPTION_LAYERS = ("conv_2", "conv_4", "mixed_2", "mixed_7")
# The smallest input side for which a layer's output is non-empty, from Inception-v3's valid (unpadded)
# convolutions and poolings: 3x3 stride 2 (conv, pool0, pool1, mixed_3, mixed_8) and 3x3 stride 1 (conv_1, conv_4).
MIN_SIZE = {"conv": 3, "conv_1": 7, "conv_2": 7, "pool0": 11, "conv_3": 11, "conv_4": 19, "pool1": 27,
            "mixed": 27, "mixed_1": 27, "mixed_2": 27, "mixed_3": 43, "mixed_4": 43, "mixed_5": 43,
            "mixed_6": 43, "mixed_7": 43, "mixed_8": 75, "mixed_9": 75, "mixed_10": 75}
SSIM_MIN_SIZE = 11  # the Gaussian window (pytorch-msssim skips the smoothing silently below it)
MS_SSIM_MIN_SIZE = 161  # pytorch-msssim: smaller side > (win_size - 1) * 2^4
_EPS = 1e-10  # LPIPS's normalize_tensor


def _unit_channels(features: Tensor) -> Tensor:
    return features / (features.pow(2).sum(1, keepdim=True).sqrt() + _EPS)


def _check_images(x: Tensor, y: Tensor, min_size: int, what: str) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{what}: the two image batches differ in shape, {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{what}: images must be NCHW with 1 or 3 channels, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"{what} needs images of at least {min_size} x {min_size} pixels, got "
                         f"{x.shape[-2]} x {x.shape[-1]}")


class InceptionDistance(nn.Module):
    """LPIPS-style feature distance on the FID Inception-v3, without learned heads: ``(x, y) -> [B]``.

    The network is frozen (its parameters need no gradient and it has no train mode: its batch norms use their
    stored statistics); gradients flow to the images. It holds the 87 MB of Inception weights as a submodule, so
    a module holding this one should not be saved with them (they are no trained state).
    """

    def __init__(self, layers: tuple[str, ...] = DEFAULT_INCEPTION_LAYERS, path: str | Path | None = None):
        super().__init__()
        unknown = [name for name in layers if name not in INCEPTION_LAYERS]
        if unknown or not layers:
            raise UsageError(f"unknown Inception layer(s) {unknown or list(layers)}; choose from "
                             f"{', '.join(INCEPTION_LAYERS)}")
        path = Path(path) if path is not None else inception_weights_path()
        with warnings.catch_warnings():  # torch >= 2.9 flags jit.load as deprecated; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location="cpu").eval()
        blocks = dict(net.net.layers.named_children())
        self.taps = tuple(sorted(set(layers), key=INCEPTION_LAYERS.index))
        deepest = INCEPTION_LAYERS.index(self.taps[-1])
        self.blocks = nn.ModuleList(blocks[name] for name in INCEPTION_LAYERS[:deepest + 1])  # stop at the last tap
        self.block_names = INCEPTION_LAYERS[:deepest + 1]
        self.min_size = MIN_SIZE[self.taps[-1]]
        self.requires_grad_(False)

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised features at each tap, for images in [-1, 1]."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        out = []
        for name, block in zip(self.block_names, self.blocks, strict=True):
            x = block(x)
            if name in self.taps:
                out.append(_unit_channels(x))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _check_images(x, y, self.min_size, f"the Inception distance up to {self.taps[-1]}")
        # An input that needs no gradient (the real image) runs without building a graph: half the backward.
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            fx = self.features(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and y.requires_grad):
            fy = self.features(y)
        return sum((a - b).pow(2).sum(1).mean((1, 2)) for a, b in zip(fx, fy, strict=True))


def ssim_distance(x: Tensor, y: Tensor) -> Tensor:
    """``1 - SSIM`` per image, ``[B]``, for images in [-1, 1] (mean over channels; at least 11 x 11)."""
    _check_images(x, y, SSIM_MIN_SIZE, "SSIM")
    return 1 - ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0, size_average=False)


def ms_ssim_distance(x: Tensor, y: Tensor) -> Tensor:
    """``1 - MS-SSIM`` per image, ``[B]``, five scales, for images in [-1, 1] of at least 161 x 161."""
    _check_images(x, y, MS_SSIM_MIN_SIZE, "MS-SSIM (five scales)")
    return 1 - ms_ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0, size_average=False)
