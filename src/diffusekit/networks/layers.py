"""Building blocks of the U-Net: initialisation, normalisation, FIR resampling, self-attention and the
residual block with an embedding input.

The block follows DDPM++ (Song et al. 2021, "Score-based generative modeling through stochastic differential
equations", Sec. H / BigGAN-style residual blocks) as restated in Karras et al. 2022 (EDM), Appendix F.2,
Table 7:

- GroupNorm with ``eps=1e-6`` and ``min(32, channels // 4)`` groups, SiLU, dropout before the last conv;
- xavier-uniform weights and zero biases everywhere, but the last conv of each residual branch and the
  attention output projection start near zero (weight scale ``1e-5``) so every block starts as the
  identity on its skip path, and the attention ``qkv`` projection is scaled by ``sqrt(0.2)``;
- residual sums are multiplied by ``1/sqrt(2)`` so that adding two unit-variance branches keeps unit
  variance;
- resampling uses the ``[1, 1]`` FIR filter with stride 2 (2x2 box down, nearest up), and when a block
  resamples, its skip path gets a 1x1 projection (EDM's ``resample_proj``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusekit.networks.positions import RelativeBias2d

__all__ = ["init_xavier_uniform", "group_norm", "Resample", "SelfAttention", "CrossAttention", "UNetBlock"]

# EDM Appendix F.2 / Table 7: scale of the weights that should start "almost zero".
NEAR_ZERO_INIT = 1e-5
# EDM Appendix F.2: initial weight scale of the attention qkv projection (from DDPM++'s NIN layers).
ATTENTION_INIT = math.sqrt(0.2)
# DDPM++: residual sums are scaled by 1/sqrt(2) (Song et al. 2021, `skip_rescale=True`).
SKIP_SCALE = math.sqrt(0.5)


def init_xavier_uniform(layer: nn.Conv2d | nn.Linear, scale: float = 1.0) -> None:
    """Xavier-uniform weight times ``scale`` and zero bias, the initialisation of every DDPM++ layer."""
    # torch's fans for a conv (channels x kernel area) are the ones DDPM++ / EDM use.
    nn.init.xavier_uniform_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def conv2d(in_channels: int, out_channels: int, kernel: int, scale: float = 1.0) -> nn.Conv2d:
    """A 'same'-padded conv with DDPM++ initialisation."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
    init_xavier_uniform(conv, scale)
    return conv


def linear(in_features: int, out_features: int, scale: float = 1.0) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    init_xavier_uniform(layer, scale)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at least 4 channels per group and at most 32 groups (EDM), eps 1e-6 (DDPM++). Where EDM's
    ``min(32, channels // 4)`` does not divide the width (e.g. 144), the largest group count below it that does."""
    if channels < 4:
        raise ValueError(f"group norm needs at least 4 channels (4 per group), got {channels}")
    groups = min(32, channels // 4)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class Resample(nn.Module):
    """Depthwise FIR up- or down-sampling by 2 with a separable filter (the 'resample filter' of EDM).

    With the default ``[1, 1]`` filter, down is a 2x2 average pool and up is nearest-neighbour
    repetition; ``[1, 3, 3, 1]`` gives NCSN++'s smoother resampling.
    """

    def __init__(self, mode: str, fir: tuple[int, ...] = (1, 1)):
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"resample mode must be 'up' or 'down', got {mode!r}")
        self.mode = mode
        f = torch.as_tensor(fir, dtype=torch.float32)
        kernel = torch.outer(f, f) / f.sum().square()
        # Upsampling spreads each pixel over 4 outputs, so the filter is scaled by 4 to keep the DC gain 1.
        kernel = kernel * 4 if mode == "up" else kernel
        self.register_buffer("kernel", kernel[None, None], persistent=False)
        self.padding = (len(fir) - 1) // 2
        # The [1, 1] filter is exactly a 2x2 box pool / nearest repeat; torch's kernels for those are ~10-15%
        # faster (U-Net forward+backward on CPU) than the grouped (transposed) convolution.
        self.box = len(fir) == 2 and fir[0] == fir[1]

    def forward(self, x: Tensor) -> Tensor:
        if self.box:
            return F.avg_pool2d(x, 2) if self.mode == "down" else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self._fir(x)

    def _fir(self, x: Tensor) -> Tensor:
        weight = self.kernel.to(x.dtype).expand(x.shape[1], 1, -1, -1)
        if self.mode == "down":
            return F.conv2d(x, weight, stride=2, padding=self.padding, groups=x.shape[1])
        return F.conv_transpose2d(x, weight, stride=2, padding=self.padding, groups=x.shape[1])


class ConvResample(nn.Module):
    """DDPM's resampling (Ho et al. 2020; diffusers' ``Downsample2D`` / ``Upsample2D``): a 3x3 convolution with
    stride 2 down, nearest-neighbour x2 then a 3x3 convolution up. Takes ``(x, emb)`` like a block and
    ignores the embedding, so it can stand in the U-Net where DDPM++ puts a residual resampling block."""

    def __init__(self, mode: str, channels: int):
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"resample mode must be 'up' or 'down', got {mode!r}")
        self.mode = mode
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if mode == "down" else 1, padding=1)
        init_xavier_uniform(self.conv)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        if self.mode == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels, as a residual branch (DDPM's attention block).

    ``relative_size``: the side of the (square) feature map, to add a learned 2-D relative position bias per
    head to the logits (:class:`~diffusekit.networks.positions.RelativeBias2d`, zero at initialisation);
    None: no position term (DDPM), and no such parameter.
    """

    def __init__(self, channels: int, num_heads: int, relative_size: int | None = None):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = conv2d(channels, 3 * channels, 1, scale=ATTENTION_INIT)
        self.proj = conv2d(channels, channels, 1, scale=NEAR_ZERO_INIT)
        # Registered only when asked for, so networks without it keep their state-dict keys.
        if relative_size is not None:
            self.relative_bias = RelativeBias2d(num_heads, relative_size, relative_size)
        else:
            self.relative_bias = None

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # [B, 3C, H, W] -> 3 x [B, heads, HW, C/heads]
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        bias = None if self.relative_bias is None else self.relative_bias(h, w).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(q k^T / sqrt(C/heads) + b) v
        return self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class CrossAttention(nn.Module):
    """Multi-head cross-attention from image features to text token states, as a residual branch.

    Queries come from the normalised features (``[B, C, H, W]`` with ``norm="group"``, GroupNorm, the U-Net;
    ``[B, T, C]`` with ``norm="layer"``, LayerNorm, the DiT), keys and values from the token states
    ``[B, L, text_dim]`` projected to ``channels``; ``mask`` ``[B, L]`` (True = real token) keeps padding out
    of every softmax. The output projection starts at exactly zero, so an untrained branch returns zero and
    the block it sits in ignores the text.
    """

    def __init__(self, channels: int, text_dim: int, num_heads: int, norm: str = "group"):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        if norm not in ("group", "layer"):
            raise ValueError(f"cross-attention norm must be 'group' or 'layer', got {norm!r}")
        self.num_heads = num_heads
        self.norm = group_norm(channels) if norm == "group" else nn.LayerNorm(channels, eps=1e-6)
        self.q = linear(channels, channels)
        self.kv = linear(text_dim, 2 * channels)
        self.proj = linear(channels, channels, scale=0.0)

    def forward(self, x: Tensor, states: Tensor, mask: Tensor) -> Tensor:
        spatial = x.ndim == 4
        h = self.norm(x)
        if spatial:
            b, c, height, width = x.shape
            h = h.flatten(2).transpose(1, 2)  # [B, HW, C]
        batch, tokens, channels = h.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        q = self.q(h).reshape(batch, tokens, heads, head_dim).transpose(1, 2)  # [B, heads, T, d]
        kv = self.kv(states.to(h.dtype)).reshape(batch, states.shape[1], 2, heads, head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        out = self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))
        return out.transpose(1, 2).reshape(b, c, height, width) if spatial else out


class UNetBlock(nn.Module):
    """Residual block conditioned on an embedding, optionally resampling and followed by self-attention.

    ``adaptive_scale=True``: ``silu(norm(h) * (1 + scale) + shift)`` with ``(scale, shift)`` predicted from
    the embedding (EDM's ``adaptive_scale``, the ADM/StyleGAN modulation); ``False``: the embedding is a
    per-channel bias added before the norm, as in DDPM / DDPM++. With ``text_dim > 0`` an attention block is
    also followed by :class:`CrossAttention` to the text (a plain residual add: zero at initialisation).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        resample: str | None = None,
        attention: bool = False,
        num_heads: int = 1,
        dropout: float = 0.0,
        adaptive_scale: bool = True,
        resample_proj: bool = True,
        resample_filter: tuple[int, ...] = (1, 1),
        text_dim: int = 0,
        relative_size: int | None = None,
    ):
        """``relative_size``: the side of the output map, to give the self-attention a learned 2-D relative
        position bias (:class:`SelfAttention`); None: none."""
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.adaptive_scale = adaptive_scale
        self.resample = Resample(resample, resample_filter) if resample is not None else nn.Identity()
        self.norm0 = group_norm(in_channels)
        self.conv0 = conv2d(in_channels, out_channels, 3)
        self.affine = linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_channels, out_channels, 3, scale=NEAR_ZERO_INIT)
        # The skip path resamples like the main path; it needs a 1x1 conv when the channel count changes, and
        # DDPM++ also gives one to every resampling block (EDM's resample_proj).
        project = in_channels != out_channels or (resample is not None and resample_proj)
        self.skip = conv2d(in_channels, out_channels, 1) if project else nn.Identity()
        self.attention = SelfAttention(out_channels, num_heads, relative_size) if attention else None
        # Registered only when present, so networks without text keep their state-dict keys.
        if attention and text_dim:
            self.cross_attention = CrossAttention(out_channels, text_dim, num_heads)
        else:
            self.cross_attention = None

    def forward(self, x: Tensor, emb: Tensor, text: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``text``: ``(states [B, L, text_dim], mask [B, L])``, required when the block cross-attends."""
        skip = self.skip(self.resample(x))
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm1(h), scale + 1)
        else:
            h = self.norm1(h + params)
        h = self.conv1(self.dropout(F.silu(h)))
        x = (h + skip) * SKIP_SCALE
        if self.attention is not None:
            x = (self.attention(x) + x) * SKIP_SCALE
        if self.cross_attention is not None:
            if text is None:
                raise ValueError("this block cross-attends to text: it needs (states, mask)")
            x = x + self.cross_attention(x, *text)
        return x
