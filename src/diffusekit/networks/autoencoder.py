"""The convolutional autoencoder of latent diffusion (Rombach et al. 2022, "High-resolution image synthesis with
latent diffusion models", Sec. 3.1 and Appendix G; the VQGAN architecture of Esser et al. 2021 without its
quantiser), with the parameter names of diffusers' ``AutoencoderKL``, so that a diffusers checkpoint loads with
``load_state_dict`` (:mod:`diffusekit.networks.autoencoder_diffusers`).

Encoder: a 3x3 input conv; one block per entry of ``block_out_channels`` with ``layers_per_block`` residual blocks,
every block but the last ending in a stride-2 3x3 conv (after padding one zero row and column at the bottom
right); a middle block (residual, single-head self-attention, residual); GroupNorm, SiLU and a 3x3 conv to
``2 * latent_channels`` moments (mean and log-variance), then the 1x1 ``quant_conv``. The decoder mirrors it with
``layers_per_block + 1`` residual blocks per level and nearest-neighbour x2 upsampling followed by a 3x3 conv.
Every GroupNorm has ``norm_num_groups`` groups and ``eps = 1e-6``; residual sums are plain sums.

With ``quantizer`` (the options of :class:`~diffusekit.networks.quantize.VectorQuantizer`) the model is LDM's
VQ-regularised autoencoder ("VQ-reg", Sec. 3.1): the encoder outputs ``latent_channels`` values, the posterior is
deterministic, and the decoder quantises its input with the codebook first; diffusion runs on the latents before
quantisation, as in LDM.

Forward cost per 64x64 RGB image, counted with ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add =
2 FLOP; attention under the math SDPA backend, whose fused CPU kernel the counter does not see): preset ``f4``
1.71 GFLOP (encode 0.45, decode 1.26; 0.95 M parameters), ``f8`` 1.60 GFLOP (encode 0.39, decode 1.22; 1.25 M).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantize import QuantizerOutput, VectorQuantizer

__all__ = ["DiagonalGaussian", "AutoencoderOutput", "Autoencoder", "PRESETS"]

# Rombach et al.'s KL autoencoders (and diffusers' DiagonalGaussianDistribution) clamp the log-variance here.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
NORM_EPS = 1e-6

# Sizes for CPU-scale 64x64 RGB work: a 16x16x4 (f4) or 8x8x4 (f8) latent.
PRESETS: dict[str, dict] = {
    "f4": dict(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16),
    "f8": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16),
}


class DiagonalGaussian:
    """The encoder's posterior ``N(mean, exp(logvar))``, independent per element of ``[B, C, H, W]``.

    ``logvar`` is clamped to ``[-30, 20]``. A ``deterministic`` posterior (a VQ-regularised encoder) has zero
    standard deviation: :meth:`sample` returns the mean and :meth:`kl` zeros; its ``logvar``, when not given, is
    the clamp's floor.
    """

    def __init__(self, mean: Tensor, logvar: Tensor | None = None, deterministic: bool = False):
        if logvar is None:
            if not deterministic:
                raise ValueError("a non-deterministic posterior needs its logvar")
            logvar = torch.full_like(mean, LOGVAR_MIN)
        if logvar.shape != mean.shape:
            raise ValueError(f"mean and logvar shapes differ: {tuple(mean.shape)} vs {tuple(logvar.shape)}")
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.deterministic = deterministic

    @classmethod
    def from_moments(cls, moments: Tensor) -> DiagonalGaussian:
        """From ``[B, 2C, H, W]``: the first ``C`` channels are the mean, the rest the log-variance."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> Tensor:
        return torch.zeros_like(self.mean) if self.deterministic else torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.zeros_like(self.mean) if self.deterministic else torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """``mean + std * noise``, the noise drawn with ``generator`` (on the generator's device)."""
        if self.deterministic:
            return self.mean
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """``[B]``: ``KL(N(mean, var) || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar)`` over C, H, W."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        return 0.5 * terms.flatten(1).sum(1)


@dataclass
class AutoencoderOutput:
    """``reconstruction``: the decoded image; ``posterior``: the encoder's distribution; ``quantization``: the
    quantiser's output for a VQ-regularised model, else ``None``."""

    reconstruction: Tensor
    posterior: DiagonalGaussian
    quantization: QuantizerOutput | None


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class ResnetBlock(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``; a 1x1 ``conv_shortcut`` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nn.Module):
    """Single-head self-attention over pixels as a residual branch, with linear projections (LDM's AttnBlock,
    whose 1x1 convs are these linear maps); softmax scale ``1/sqrt(channels)``."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = (proj(tokens)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # [B, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c))[:, 0]
        out = self.to_out[0](out)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row and column at the bottom and right (LDM's asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderBlock(nn.Module):
    """``num_resnets`` residual blocks, then an optional :class:`Downsample` (diffusers' DownEncoderBlock2D)."""

    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_resnets))
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if downsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x)
        return x


class DecoderBlock(nn.Module):
    """``num_resnets`` residual blocks, then an optional :class:`Upsample` (diffusers' UpDecoderBlock2D)."""

    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_resnets))
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for layer in (*self.resnets, *self.upsamplers):
            x = layer(x)
        return x


class MidBlock(nn.Module):
    """Residual block, self-attention (optional), residual block (diffusers' UNetMidBlock2D)."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([Attention(channels, groups)] if attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, groups: int, mid_attention: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        widths = (block_out_channels[0], *block_out_channels)
        last = len(block_out_channels) - 1
        self.down_blocks = nn.ModuleList(
            EncoderBlock(widths[i], widths[i + 1], layers_per_block, groups, downsample=i < last)
            for i in range(len(block_out_channels)))
        self.mid_block = MidBlock(block_out_channels[-1], groups, mid_attention)
        self.conv_norm_out = _group_norm(block_out_channels[-1], groups)
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, groups: int, mid_attention: bool):
        super().__init__()
        widths = tuple(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups, mid_attention)
        inputs = (widths[0], *widths)
        last = len(widths) - 1
        self.up_blocks = nn.ModuleList(
            DecoderBlock(inputs[i], widths[i], layers_per_block + 1, groups, upsample=i < last)
            for i in range(len(widths)))
        self.conv_norm_out = _group_norm(widths[-1], groups)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


_QUANTIZER_OPTIONS = tuple(inspect.signature(VectorQuantizer).parameters)


class Autoencoder(nn.Module):
    """LDM's KL- (or VQ-) regularised autoencoder; see the module docstring for the architecture.

    Images are NCHW in [-1, 1]. ``latent_shift`` and ``latent_scale`` (buffers ``[latent_channels]``, saved in the
    state dict; diffusers' ``shift_factor`` / ``latents_mean`` and ``scaling_factor``) map a raw latent to what the
    diffusion model sees, ``(z - latent_shift) * latent_scale`` (:meth:`normalize_latent`); :meth:`decode` takes
    raw latents. ``config`` holds the constructor's arguments, so ``Autoencoder(**model.config)`` rebuilds it.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
                 latent_channels: int = 4, norm_num_groups: int = 32, mid_block_add_attention: bool = True,
                 use_quant_conv: bool = True, use_post_quant_conv: bool = True, quantizer: dict | None = None):
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        _check_sizes(in_channels, out_channels, block_out_channels, layers_per_block, latent_channels,
                     norm_num_groups)
        if quantizer is not None:
            quantizer = _check_quantizer(quantizer, latent_channels)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, block_out_channels=block_out_channels,
                           layers_per_block=layers_per_block, latent_channels=latent_channels,
                           norm_num_groups=norm_num_groups, mid_block_add_attention=mid_block_add_attention,
                           use_quant_conv=use_quant_conv, use_post_quant_conv=use_post_quant_conv,
                           quantizer=quantizer)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.latent_channels = latent_channels
        self.downsample_factor = 2 ** (len(block_out_channels) - 1)
        moments = latent_channels if quantizer is not None else 2 * latent_channels
        self.encoder = Encoder(in_channels, moments, block_out_channels, layers_per_block, norm_num_groups,
                               mid_block_add_attention)
        self.decoder = Decoder(latent_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                               mid_block_add_attention)
        self.quant_conv = nn.Conv2d(moments, moments, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.quantizer = VectorQuantizer(dim=latent_channels, **quantizer) if quantizer is not None else None
        self.register_buffer("latent_shift", torch.zeros(latent_channels))
        self.register_buffer("latent_scale", torch.ones(latent_channels))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> Autoencoder:
        """A preset of :data:`PRESETS` (``f4``, ``f8``), any constructor argument overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown autoencoder preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        known = set(inspect.signature(cls).parameters)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown autoencoder option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def is_quantized(self) -> bool:
        return self.quantizer is not None

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of the latent of a ``(channels, height, width)`` image."""
        channels, height, width = image_shape
        self._check_image(channels, height, width)
        return (self.latent_channels, height // self.downsample_factor, width // self.downsample_factor)

    def _check_image(self, channels: int, height: int, width: int) -> None:
        if channels != self.in_channels:
            raise ValueError(f"the autoencoder takes {self.in_channels}-channel images, got {channels} channels")
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image sides must be divisible by the downsample factor {f}, got {height}x{width}")

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """The posterior of images ``x [B, C, H, W]`` in [-1, 1] (after ``quant_conv``)."""
        if x.ndim != 4:
            raise ValueError(f"the autoencoder takes NCHW images, got shape {tuple(x.shape)}")
        self._check_image(*x.shape[1:])
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        if self.quantizer is not None:
            return DiagonalGaussian(h, deterministic=True)
        return DiagonalGaussian.from_moments(h)

    def decode(self, z: Tensor) -> Tensor:
        """Images from raw (unnormalised) latents; a VQ model snaps ``z`` to its codebook first, changing no
        state."""
        z = self._check_latent(z)
        if self.quantizer is not None:
            z = self.quantizer.lookup(z)
        return self._decode(z)

    def _check_latent(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"the decoder takes [B, {self.latent_channels}, h, w] latents, got {tuple(z.shape)}")
        return z

    def _decode(self, z: Tensor) -> Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None,
                sample_posterior: bool = True) -> AutoencoderOutput:
        """Encode, take a posterior sample (``generator``) or its mean, quantise (VQ; the codebook learns in
        training mode) and decode."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        quantization = None
        if self.quantizer is not None:
            quantization = self.quantizer(z, generator)
            z = quantization.quantized
        return AutoencoderOutput(self._decode(z), posterior, quantization)

    def last_layer(self) -> nn.Parameter:
        """The decoder's output conv weight (VQGAN's adaptive GAN weight takes gradient norms here)."""
        return self.decoder.conv_out.weight

    def normalize_latent(self, z: Tensor) -> Tensor:
        """Raw latent -> what the diffusion model sees: ``(z - latent_shift) * latent_scale``, per channel."""
        return (z - self.latent_shift[:, None, None]) * self.latent_scale[:, None, None]

    def denormalize_latent(self, z: Tensor) -> Tensor:
        """The inverse of :meth:`normalize_latent`."""
        return z / self.latent_scale[:, None, None] + self.latent_shift[:, None, None]


def _check_sizes(in_channels: int, out_channels: int, block_out_channels: tuple[int, ...], layers_per_block: int,
                 latent_channels: int, norm_num_groups: int) -> None:
    if not block_out_channels or any(int(c) != c or c < 1 for c in block_out_channels):
        raise ValueError(f"block_out_channels must be positive integers, got {block_out_channels}")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("layers_per_block", layers_per_block), ("latent_channels", latent_channels),
                        ("norm_num_groups", norm_num_groups)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    bad = [c for c in block_out_channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"block_out_channels {block_out_channels}: {bad[0]} channels do not split into "
                         f"norm_num_groups={norm_num_groups} groups")


def _check_quantizer(options: dict, latent_channels: int) -> dict:
    options = dict(options)
    unknown = sorted(set(options) - set(_QUANTIZER_OPTIONS))
    if unknown:
        raise ValueError(f"unknown quantizer option(s) {', '.join(unknown)}; known: {', '.join(_QUANTIZER_OPTIONS)}")
    dim = options.pop("dim", latent_channels)
    if dim != latent_channels:
        raise ValueError(f"quantizer dim {dim} must equal latent_channels {latent_channels} (or be left out)")
    if "num_codes" not in options:
        raise ValueError("the quantizer needs num_codes (the codebook size)")
    return options
