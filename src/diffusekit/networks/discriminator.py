"""The patch discriminator of an autoencoder's GAN loss (pix2pix, Isola et al. 2017; VQGAN, Esser et al. 2021).

``PatchDiscriminator(x) -> logits [B, 1, h, w]``: one real-vs-fake logit per overlapping image patch. The layout
is pix2pix's / taming-transformers' ``NLayerDiscriminator``: 4x4 convolutions with padding 1, the first
``layers`` of stride 2 and two of stride 1, LeakyReLU(0.2) after every convolution but the last, the width
doubling at every convolution after the first and capped at 8x ``channels`` (64-128-256-512 by default), a
one-channel logit map at the end.

Receptive field: going back from one logit to the image, each convolution maps a field of ``r`` to
``(r - 1) * stride + 4``; the two stride-1 ones give 7 and each stride-2 one ``r -> 2 r + 2``, so
``r = 9 * 2^layers - 2``: 16 (layers=1), 34 (2), **70 (3, the default: pix2pix's "70x70 PatchGAN")**, 142 (4).
:func:`receptive_field` computes it layer by layer and the tests measure it from the gradient of one logit. An
``H x W`` image gives an ``(H / 2^layers - 2) x (W / 2^layers - 2)`` logit map (6 x 6 at 64 x 64).

Normalisation is GroupNorm (or none), not pix2pix's BatchNorm: BatchNorm keeps running statistics, which
differ between processes of a multi-process run (unless synchronised) and are state outside the parameters that a
resume must restore bit for bit; its train-mode output also depends on the rest of the batch. GroupNorm has
neither: the discriminator's output is a function of its parameters and of one image. GroupNorm normalises
over the whole feature map of each image, so with ``norm="group"`` a logit depends a little on pixels outside
its receptive field (through the group statistics); with ``norm="none"`` it depends on nothing else.

Initialisation is DCGAN's (Radford et al. 2016), as pix2pix and taming use it: convolution weights
``N(0, 0.02)``, GroupNorm scales ``N(1, 0.02)``, all biases zero (taming leaves convolution biases at PyTorch's
default; zeros make the initialisation a function of the generator alone). Convolutions followed by a
GroupNorm have no bias (the norm's shift replaces it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffusekit.errors import UsageError

__all__ = ["PatchDiscriminator", "NORMS", "receptive_field"]

NORMS = ("group", "none")
_KERNEL = 4
_MAX_WIDTH_MULTIPLIER = 8
_GROUPS = 32  # GroupNorm's default group count (Wu & He 2018); fewer where the width is not a multiple of 32


def receptive_field(layers: int) -> int:
    """Pixels (per side) one output logit of a ``layers``-layer discriminator sees: 70 for ``layers=3``."""
    strides = [2] * layers + [1, 1]
    size = 1
    for stride in reversed(strides):
        size = (size - 1) * stride + _KERNEL
    return size


class PatchDiscriminator(nn.Module):
    """Images in [-1, 1], NCHW -> real-vs-fake logits [B, 1, h, w], one per ``receptive_field(layers)`` patch."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3, norm: str = "group",
                 generator: torch.Generator | None = None):
        super().__init__()
        if norm not in NORMS:
            raise UsageError(f"unknown discriminator norm {norm!r}; choose one of {', '.join(NORMS)}")
        for name, value in (("in_channels", in_channels), ("channels", channels), ("layers", layers)):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"discriminator {name} must be a positive integer, got {value!r}")
        self.layers, self.norm = layers, norm
        self.receptive_field = receptive_field(layers)
        widths = [channels * min(2 ** n, _MAX_WIDTH_MULTIPLIER) for n in range(layers + 1)]
        # The first convolution has no norm (pix2pix: "C64" has no BatchNorm), the last one outputs logits.
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], _KERNEL, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        for n in range(1, layers + 1):
            stride = 2 if n < layers else 1
            blocks += [nn.Conv2d(widths[n - 1], widths[n], _KERNEL, stride=stride, padding=1, bias=norm == "none")]
            if norm == "group":
                blocks.append(nn.GroupNorm(math.gcd(_GROUPS, widths[n]), widths[n]))
            blocks.append(nn.LeakyReLU(0.2))
        blocks.append(nn.Conv2d(widths[-1], 1, _KERNEL, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """DCGAN initialisation, drawn from ``generator`` (or the global RNG), in module order."""
        for module in self.net:
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, 0.02, generator=generator)
            elif isinstance(module, nn.GroupNorm):
                module.weight.normal_(1.0, 0.02, generator=generator)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
