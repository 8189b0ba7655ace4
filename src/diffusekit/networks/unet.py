"""DDPM++ U-Net ("SongUNet"): Song et al. 2021, "Score-based generative modeling through stochastic
differential equations" (DDPM++), in the form Karras et al. 2022 (EDM, Appendix F.2) trained it.

``UNet(x, noise_cond, cond=None) -> F`` maps an image batch ``[B, C_in, H, W]``, a float noise condition
``[B]`` (whatever the denoiser feeds it, e.g. EDM's ``c_noise``) and a mapping of named conditions (class
``labels`` ``[B]`` and the others of :mod:`diffusekit.networks.conditioning`; None or empty: none) to
``[B, C_out, H, W]``. It knows nothing about diffusion.

Layout, for ``L = len(channel_mult)`` resolutions ``R, R/2, ..., R/2^(L-1)``:

- mapping: noise embedding (positional or Fourier) + class embedding -> two linear+SiLU layers
  -> ``model_channels * channel_mult_emb`` channels, fed to every block;
- encoder: a 3x3 stem conv, then per resolution a down-sampling block (except at the top) and
  ``num_blocks`` blocks; every output is kept as a skip;
- decoder: at the lowest resolution two blocks (the first with attention), elsewhere an up-sampling block,
  then ``num_blocks + 1`` blocks, each taking one skip by concatenation;
- head: GroupNorm, SiLU, near-zero 3x3 conv, so the initial output is ~0.

With ``ddpmpp_cifar10`` this has exactly the parameter count of EDM's CIFAR-10 DDPM++ network (55.73M).
Differences from EDM's code that leave the function class unchanged: the positional embedding is
``[cos, sin]`` rather than ``[sin, cos]`` and the attention ``qkv`` channels are ordered (q, k, v) x heads
(both fixed permutations of a learned layer's inputs or outputs); class labels index a table with a learned
null class (``diffusekit.networks.embeddings.ClassEmbedding``) instead of a linear map of one-hot vectors
(same parameter count: EDM's null class is the all-zero vector, which maps to the bias).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusekit.conditions import Conditions
from diffusekit.networks.conditioning import (
    ExtraEmbedding,
    TextConditioning,
    concat_image,
    network_conditions,
    reject_text,
    reject_video,
)
from diffusekit.networks.embeddings import ClassEmbedding, get_noise_embedding
from diffusekit.networks.layers import (
    NEAR_ZERO_INIT,
    ConvResample,
    UNetBlock,
    conv2d,
    group_norm,
    init_xavier_uniform,
    linear,
)

__all__ = ["UNet", "PRESETS", "BlockLayout"]

# Keyword arguments of UNet for reference layouts.
PRESETS: dict[str, dict[str, Any]] = {
    # EDM's CIFAR-10 DDPM++ (train.py --arch=ddpmpp; dropout 0.13 from EDM Table 7): EDM's SongUNet uses the
    # DDPM-style additive embedding, not adaptive scale/shift, and one attention head.
    "ddpmpp_cifar10": dict(
        img_resolution=32, in_channels=3, out_channels=3, model_channels=128, channel_mult=(2, 2, 2),
        num_blocks=4, attn_resolutions=(16,), dropout=0.13, embedding="positional", adaptive_scale=False,
    ),
    # The DDPM CIFAR-10 layout (Ho et al. 2020, Appendix B: 4 resolutions, 2 blocks each, attention at 16x16,
    # dropout 0.1) with DDPM++ blocks, as EDM's SongUNet builds it by default.
    "ddpm_cifar10": dict(
        img_resolution=32, in_channels=3, out_channels=3, model_channels=128, channel_mult=(1, 2, 2, 2),
        num_blocks=2, attn_resolutions=(16,), dropout=0.1, embedding="positional", adaptive_scale=False,
    ),
    # ~52k parameters, for fast tests; uses the defaults (adaptive scale/shift) the presets above turn off.
    "tiny": dict(
        img_resolution=16, in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2),
        num_blocks=1, attn_resolutions=(8,), dropout=0.0, embedding="positional",
    ),
}


class UNet(nn.Module):
    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        *,
        model_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        channel_mult_noise: int = 1,
        num_blocks: int = 4,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        num_classes: int = 0,
        embedding: str = "positional",
        adaptive_scale: bool = True,
        num_heads: int | None = 1,
        channels_per_head: int = 64,
        resample_filter: tuple[int, ...] = (1, 1),
        resample_proj: bool = True,
        resample_block: str = "residual",
        augment_dim: int = 0,
        noise_aug: bool = False,
        cond_channels: int = 0,
        text_dim: int = 0,
        attention_position: str = "none",
    ):
        """
        Args:
            img_resolution: height = width of inputs; divisible by ``2 ** (len(channel_mult) - 1)``.
            channel_mult: channels at each resolution, as multiples of ``model_channels``.
            channel_mult_emb / channel_mult_noise: embedding width / noise-embedding width, as multiples of
                ``model_channels`` (DDPM++ uses 4 / 1; NCSN++ uses noise 2 with the Fourier embedding).
            num_blocks: residual blocks per resolution in the encoder (the decoder has one more).
            attn_resolutions: resolutions whose blocks are followed by self-attention; the first block at
                the lowest resolution in the decoder always has attention, as in DDPM.
            num_classes: 0 for an unconditional net; else labels ``0..num_classes-1`` plus the null class
                ``num_classes`` (no ``cond["labels"]`` means null for the whole batch).
            embedding: ``"positional"`` (DDPM++) or ``"fourier"`` (NCSN++) noise embedding.
            adaptive_scale: ``True``: per-block scale and shift from the embedding; ``False``: additive bias.
            num_heads: attention heads; ``None`` means ``channels // channels_per_head``.
            resample_filter: separable FIR filter for resampling (``(1, 1)`` DDPM++, ``(1, 3, 3, 1)`` NCSN++).
            resample_proj: 1x1 conv on the skip path of every resampling block (EDM's resample_proj).
            resample_block: ``"residual"``: DDPM++ resamples inside a residual block (EDM's SongUNet);
                ``"conv"``: DDPM's single strided / nearest-upsampling 3x3 conv (Ho et al. 2020), the layout
                of diffusers' ``UNet2DModel`` (fewer FLOPs).
            augment_dim: width of the augmentation labels ``cond["augment"]`` (0: none; EDM's non-leaking
                augmentation, :mod:`diffusekit.data.augment`).
            noise_aug: condition on ``cond["aug_level"]``, a cascade's noise-augmentation level.
            cond_channels: channels of ``cond["image"]``, concatenated to the input (0: none).
            text_dim: width of the text token states ``cond["text"]`` (0: no text conditioning, and the
                network is exactly the one without it). The pooled text is added to the embedding; the
                blocks with self-attention (``attn_resolutions`` and the middle of the U) also cross-attend
                to the tokens; a learned null text stands in where ``cond["text_null"]`` is set or no text
                is given.
            attention_position: ``"none"``: self-attention without position terms (DDPM); ``"relative"``: each
                self-attention adds a learned 2-D relative position bias per head to its logits (Swin-style,
                zero at initialisation; :class:`~diffusekit.networks.positions.RelativeBias2d`).
        """
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or img_resolution % 2 ** (levels - 1):
            factor = 2 ** max(levels - 1, 0)
            raise ValueError(
                f"img_resolution {img_resolution} must be divisible by 2**(len(channel_mult) - 1) = {factor} for "
                f"channel_mult {tuple(channel_mult)}: use a resolution that is a multiple of {factor} (e.g. "
                f"{max(factor, img_resolution // factor * factor)} or {(img_resolution // factor + 1) * factor}), "
                "or fewer levels in channel_mult"
            )
        resolutions = [img_resolution >> level for level in range(levels)]
        unknown = sorted(set(attn_resolutions) - set(resolutions))
        if unknown:
            raise ValueError(f"attn_resolutions {unknown} are not among the U-Net resolutions {resolutions}: attention "
                             f"runs at feature-map sizes, choose from {resolutions} (or [] for none)")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        if text_dim < 0:
            raise ValueError(f"text_dim must be >= 0 (0 = no text conditioning), got {text_dim}")
        if resample_block not in ("residual", "conv"):
            raise ValueError(f"unknown resample_block {resample_block!r}; choose 'residual' or 'conv'")
        if attention_position not in ("none", "relative"):
            raise ValueError(f"unknown attention_position {attention_position!r}; choose 'none' or 'relative'")
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.num_classes = num_classes

        # Mapping network (DDPM++: embedding -> Linear -> SiLU -> Linear -> SiLU).
        noise_channels = model_channels * channel_mult_noise
        emb_channels = model_channels * channel_mult_emb
        self.map_noise = get_noise_embedding(embedding, noise_channels)
        self.map_class = ClassEmbedding(num_classes, noise_channels) if num_classes else None
        extra = ExtraEmbedding(noise_channels, augment_dim, noise_aug)
        self.map_extra = extra if extra.active else None  # absent: old checkpoints keep their keys
        self.cond_channels = cond_channels
        self.text_dim = text_dim
        if text_dim:  # absent when 0: the network and its state-dict keys are those without text
            self.map_text = TextConditioning(text_dim, noise_channels, owner="UNet")
            init_xavier_uniform(self.map_text.map_pooled)
        else:
            self.map_text = None
        self.map_layer0 = linear(noise_channels, emb_channels)
        self.map_layer1 = linear(emb_channels, emb_channels)

        # The output of every block, in the order `trunk` runs them (encoder, then decoder).
        self.block_layout: list[BlockLayout] = []

        def block(cin: int, cout: int, res: int, **kwargs: Any) -> UNetBlock | ConvResample:
            heads = num_heads if num_heads is not None else cout // channels_per_head
            self.block_layout.append(BlockLayout(cout, res, heads))
            if kwargs.get("resample") is not None and resample_block == "conv":
                return ConvResample(kwargs["resample"], cin)  # resampling keeps the width (cin == cout)
            kwargs.setdefault("attention", res in attn_resolutions)
            return UNetBlock(
                cin, cout, emb_channels, num_heads=heads, dropout=dropout, adaptive_scale=adaptive_scale,
                resample_proj=resample_proj, resample_filter=resample_filter, text_dim=text_dim,
                relative_size=res if attention_position == "relative" else None, **kwargs,
            )

        self.stem = conv2d(in_channels + cond_channels, model_channels, 3)
        widths = [model_channels * mult for mult in channel_mult]
        self.encoder, skips = _encoder(block, model_channels, widths, resolutions, num_blocks)
        # `takes_skip[i]`: decoder block i concatenates the latest unused skip to its input.
        self.decoder, self.takes_skip = _decoder(block, widths, resolutions, num_blocks, attn_resolutions, skips)
        self.out_norm = group_norm(widths[0])
        self.out_conv = conv2d(widths[0], out_channels, 3, scale=NEAR_ZERO_INIT)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UNet:
        """``UNet(**PRESETS[name], **overrides)``; e.g. ``UNet.from_preset("ddpmpp_cifar10", num_classes=10)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown U-Net preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def embed(self, noise_cond: Tensor, cond: Conditions | None, batch: int) -> Tensor:
        """The embedding vector fed to every block: ``[B, emb_channels]``."""
        return self._embed(noise_cond, network_conditions(cond), batch)[0]

    def _embed(self, noise_cond: Tensor, parts: dict[str, Tensor], batch: int
               ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The embedding vector and the text ``(states, mask)`` for cross-attention (None without text_dim)."""
        if noise_cond.shape != (batch,):
            raise ValueError(f"noise_cond must have shape [{batch}], got {tuple(noise_cond.shape)}")
        emb = self.map_noise(noise_cond)
        text = None
        if self.map_text is not None:
            states, mask, pooled = self.map_text.resolve(parts, batch, emb.device)
            emb = emb + pooled.to(emb.dtype)
            text = (states, mask)
        else:
            reject_text(parts, "UNet")
        if self.map_class is not None:
            emb = emb + self.map_class(parts.get("labels"), batch, emb.device)
        elif parts.get("labels") is not None:
            raise ValueError("class labels were given to an unconditional UNet (num_classes=0)")
        if self.map_extra is not None:
            extra = self.map_extra(parts, batch, emb.device, emb.dtype)
            emb = emb if extra is None else emb + extra
        elif parts.get("augment") is not None or parts.get("aug_level") is not None:
            raise ValueError("augmentation labels or levels were given to a UNet built without augment_dim / "
                             "noise_aug")
        emb = emb.to(self.map_layer0.weight.dtype)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb)), text

    def forward(self, x: Tensor, noise_cond: Tensor, cond: Conditions | None = None) -> Tensor:
        """``cond``: the named conditions (:mod:`diffusekit.networks.conditioning`); None: none."""
        expected = (self.in_channels, self.img_resolution, self.img_resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected input of shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        parts = network_conditions(cond)
        reject_video(parts, "UNet")
        emb, text = self._embed(noise_cond, parts, x.shape[0])
        return self.trunk(concat_image(x, parts, self.cond_channels), emb, text)

    def trunk(self, x: Tensor, emb: Tensor, text: tuple[Tensor, Tensor] | None,
              after_block: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """Stem, encoder, decoder and head on the (conditioned) input ``[N, C, H, W]``, with the embedding
        ``[N, emb_channels]`` and the text ``(states, mask)`` of :meth:`_embed`. ``after_block(i, h)``, if given,
        replaces the output ``h`` of block ``i`` (numbered as :attr:`block_layout`) before it goes on."""
        x = self.stem(x)
        skips = [x]
        for index, block in enumerate(self.encoder):
            x = _run(block, x, emb, text)
            x = x if after_block is None else after_block(index, x)
            skips.append(x)
        for index, (block, takes_skip) in enumerate(zip(self.decoder, self.takes_skip, strict=True),
                                                    start=len(self.encoder)):
            if takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = _run(block, x, emb, text)
            x = x if after_block is None else after_block(index, x)
        return self.out_conv(F.silu(self.out_norm(x)))


class BlockLayout(NamedTuple):
    """The output of a U-Net block: its channels, the side of its feature map and its attention heads."""

    channels: int
    resolution: int
    heads: int


def _run(block: nn.Module, x: Tensor, emb: Tensor, text: tuple[Tensor, Tensor] | None) -> Tensor:
    # Only blocks that cross-attend take the text (resampling convs take just (x, emb)).
    if getattr(block, "cross_attention", None) is not None:
        return block(x, emb, text)
    return block(x, emb)


BlockFactory = Callable[..., UNetBlock]  # (cin, cout, resolution, resample=None, attention=...) -> UNetBlock


def _encoder(
    block: BlockFactory, stem_channels: int, widths: list[int], resolutions: list[int], num_blocks: int
) -> tuple[nn.ModuleList, list[int]]:
    """Per resolution: a down-sampling block (none at the top), then ``num_blocks`` blocks.

    Returns the blocks and the channel count of every skip the decoder will consume (the stem's first).
    """
    blocks, skips, cout = nn.ModuleList(), [stem_channels], stem_channels
    for level, (width, res) in enumerate(zip(widths, resolutions, strict=True)):
        if level > 0:
            blocks.append(block(cout, cout, res, resample="down", attention=False))
            skips.append(cout)
        for _ in range(num_blocks):
            blocks.append(block(cout, width, res))
            cout = width
            skips.append(cout)
    return blocks, skips


def _decoder(
    block: BlockFactory,
    widths: list[int],
    resolutions: list[int],
    num_blocks: int,
    attn_resolutions: tuple[int, ...],
    skips: list[int],
) -> tuple[nn.ModuleList, list[bool]]:
    """Per resolution, bottom up: the middle of the U (block + attention, block; Ho et al. 2020, App. B) or an
    up-sampling block, then ``num_blocks + 1`` blocks that each concatenate one skip.

    Returns the blocks and, for each, whether it takes a skip.
    """
    blocks, takes_skip, skips, cout = nn.ModuleList(), [], list(skips), widths[-1]
    for level in reversed(range(len(widths))):
        width, res = widths[level], resolutions[level]
        if level == len(widths) - 1:
            middle = [block(cout, cout, res, attention=True), block(cout, cout, res, attention=False)]
        else:
            middle = [block(cout, cout, res, resample="up", attention=False)]
        blocks.extend(middle)
        takes_skip.extend([False] * len(middle))
        for idx in range(num_blocks + 1):
            # DDPM++ attends once per decoder resolution, after the last block.
            attend = idx == num_blocks and res in attn_resolutions
            blocks.append(block(cout + skips.pop(), width, res, attention=attend))
            takes_skip.append(True)
            cout = width
    return blocks, takes_skip


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":  # pragma: no cover - prints the size of each preset
    for preset in PRESETS:
        with torch.device("meta"):
            print(f"{preset:>16}: {count_parameters(UNet.from_preset(preset)):,} parameters")
