"""Factorised space-time U-Net for video (Ho et al. 2022, "Video Diffusion Models", Sec. 3).

``VideoUNet(x, noise_cond, cond=None) -> F`` maps a batch of clips ``[B, C_in, F, H, W]``, a float noise
condition ``[B]`` and the named conditions (:mod:`diffusekit.networks.conditioning`) to ``[B, C_out, F, H, W]``.

It is a DDPM++ :class:`~diffusekit.networks.unet.UNet` (held as ``self.unet``, built from the same layout
arguments) run on every frame: convolutions, GroupNorm and spatial self-attention see ``[B*F, C, H, W]``, the
embedding (noise level, class, text, ...) is computed once per clip and repeated per frame. After every block
whose output lies at one of ``temporal_resolutions``, a :class:`~diffusekit.networks.temporal.TemporalAttention`
residual branch attends across the F frames at each spatial position. Those branches are the only place where
frames meet, and their output projections start at exactly zero, so an untrained VideoUNet is exactly its
U-Net applied to each frame (and ``self.unet`` can be loaded from an image U-Net's checkpoint).

Conditions beyond the U-Net's: ``cond["independent"]`` ``[B]`` marks clips that are F independent images (no
frame attends to another; joint video-image training, Ho et al. 2022, Sec. 3.2); with ``frame_conditioning``,
``cond["context"]`` ``[B, C_in, F, H, W]`` (the given frames) and ``cond["context_mask"]`` ``[B, F]`` (True
where given) are concatenated to the input as ``C_in + 1`` extra channels, for prediction or interpolation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from diffusekit.conditions import Conditions
from diffusekit.networks.conditioning import network_conditions
from diffusekit.networks.temporal import TEMPORAL_POSITIONS, TemporalAttention
from diffusekit.networks.unet import UNet

__all__ = ["VideoUNet", "PRESETS"]

# Keyword arguments of VideoUNet for reference layouts.
PRESETS: dict[str, dict[str, Any]] = {
    # For fast tests: the image U-Net's "tiny" layout with two heads, over 4 frames.
    "tiny": dict(
        img_resolution=16, in_channels=3, out_channels=3, frames=4, model_channels=8, channel_mult=(1, 2),
        num_blocks=1, attn_resolutions=(8,), dropout=0.0, num_heads=2,
    ),
    # Moving MNIST (Srivastava et al. 2015) on a CPU: 8 grey 32x32 frames, 16/32/64 channels at 32/16/8 (the MNIST
    # demo's widths), spatial attention at 8x8, temporal attention at 16x16 and 8x8: 0.90M parameters. Temporal
    # attention at 32x32 too costs 5x the training time on 2 CPU cores (1,024 positions per frame).
    "moving-mnist-small": dict(
        img_resolution=32, in_channels=1, out_channels=1, frames=8, model_channels=16, channel_mult=(1, 2, 4),
        num_blocks=1, attn_resolutions=(8,), temporal_resolutions=(16, 8), dropout=0.0, num_heads=2,
    ),
}


class VideoUNet(nn.Module):
    is_video = True

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        frames: int,
        *,
        temporal_resolutions: tuple[int, ...] | None = None,
        temporal_position: str = "relative",
        max_distance: int | None = None,
        frame_conditioning: bool = False,
        **layout: Any,
    ):
        """
        Args:
            img_resolution, in_channels, out_channels: of each frame, as for :class:`UNet`.
            frames: the clip length the network is built for; calls may use other lengths, except that
                ``"absolute"`` positions allow at most ``frames``.
            temporal_resolutions: feature-map sides after whose blocks temporal attention runs (None: all).
            temporal_position: ``"relative"``, ``"rotary"``, ``"absolute"`` or ``"none"``
                (:mod:`diffusekit.networks.temporal`).
            max_distance: ``"relative"``: frame distances beyond it share one bias (None: ``frames - 1``).
            frame_conditioning: take ``cond["context"]`` and ``cond["context_mask"]`` (absent: no frame given).
            layout: the other keyword arguments of :class:`UNet` (``model_channels``, ``channel_mult``,
                ``num_blocks``, ``attn_resolutions``, ``dropout``, ``num_classes``, ``embedding``,
                ``adaptive_scale``, ``num_heads``, ``channels_per_head``, ``text_dim``, ``attention_position``,
                ...); ``cond_channels`` is not one: condition on frames with ``frame_conditioning``.
        """
        super().__init__()
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if temporal_position not in TEMPORAL_POSITIONS:
            raise ValueError(f"unknown temporal_position {temporal_position!r}; choose one of "
                             f"{', '.join(TEMPORAL_POSITIONS)}")
        if layout.get("cond_channels"):
            raise ValueError("VideoUNet takes no cond_channels: condition on given frames with frame_conditioning")
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.frames, self.frame_conditioning = frames, frame_conditioning
        # The given frames and their mask enter as C_in + 1 extra input channels.
        extra = in_channels + 1 if frame_conditioning else 0
        self.unet = UNet(img_resolution, in_channels + extra, out_channels, **layout)
        self.num_classes, self.text_dim = self.unet.num_classes, self.unet.text_dim

        resolutions = sorted({block.resolution for block in self.unet.block_layout}, reverse=True)
        chosen = resolutions if temporal_resolutions is None else list(temporal_resolutions)
        unknown = sorted(set(chosen) - set(resolutions))
        if unknown:
            raise ValueError(f"temporal_resolutions {unknown} are not among the U-Net resolutions {resolutions}")
        self.temporal_position = temporal_position
        max_distance = max(frames - 1, 1) if max_distance is None else max_distance
        # Keyed by the index of the block it follows (UNet.block_layout); blocks elsewhere have none.
        self.temporal = nn.ModuleDict({
            str(index): TemporalAttention(block.channels, block.heads, temporal_position,
                                          max_distance=max_distance, max_frames=frames)
            for index, block in enumerate(self.unet.block_layout) if block.resolution in chosen
        })

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> VideoUNet:
        """``VideoUNet(**PRESETS[name], **overrides)``; e.g. ``VideoUNet.from_preset("tiny", frames=8)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown video U-Net preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward(self, x: Tensor, noise_cond: Tensor, cond: Conditions | None = None) -> Tensor:
        """``x`` ``[B, C_in, F, H, W]``, ``noise_cond`` ``[B]``, ``cond`` the named conditions (None: none)
        -> ``[B, C_out, F, H, W]``."""
        side = self.img_resolution
        if x.ndim != 5 or x.shape[1] != self.in_channels or tuple(x.shape[3:]) != (side, side):
            raise ValueError(f"expected a batch of clips of shape [B, {self.in_channels}, F, {side}, {side}], got "
                             f"{tuple(x.shape)}")
        batch, _, frames = x.shape[:3]
        if self.temporal_position == "absolute" and frames > self.frames:
            raise ValueError(f"{frames} frames, but this network's absolute temporal positions embed at most "
                             f"{self.frames}: give at most {self.frames} frames or build it with "
                             "temporal_position='relative' or 'rotary'")
        parts = network_conditions(cond)
        if parts.get("image") is not None:
            raise ValueError("a conditioning image (cond['image']) was given to VideoUNet: condition on frames "
                             "with frame_conditioning and cond['context']")
        independent = self._independent(parts, batch)
        x = self._with_context(x, parts)
        emb, text = self.unet._embed(noise_cond, parts, batch)
        # One embedding (and text) per clip, repeated for each of its frames.
        emb = emb.repeat_interleave(frames, dim=0)
        text = None if text is None else tuple(part.repeat_interleave(frames, dim=0) for part in text)

        def temporal(index: int, h: Tensor) -> Tensor:
            layer = self.temporal[str(index)] if str(index) in self.temporal else None
            return h if layer is None else layer(h, frames, independent)

        per_frame = x.transpose(1, 2).reshape(batch * frames, x.shape[1], side, side)  # [B*F, C, H, W]
        out = self.unet.trunk(per_frame, emb, text, after_block=temporal)
        return out.reshape(batch, frames, self.out_channels, side, side).transpose(1, 2)

    def _independent(self, parts: dict, batch: int) -> Tensor | None:
        flag = parts.get("independent")
        if flag is None:
            return None
        if tuple(flag.shape) != (batch,):
            raise ValueError(f"cond['independent'] must have shape [{batch}] (one flag per clip), got "
                             f"{tuple(flag.shape)}")
        if flag.dtype != torch.bool:
            raise ValueError(f"cond['independent'] must be a bool tensor, got {flag.dtype}")
        return flag

    def _with_context(self, x: Tensor, parts: dict) -> Tensor:
        """``x`` with the given frames (zeroed where not given) and the mask broadcast over H, W appended to
        its channels: ``[B, 2 C_in + 1, F, H, W]``; ``x`` unchanged without frame conditioning."""
        context, mask = parts.get("context"), parts.get("context_mask")
        if not self.frame_conditioning:
            given = [f"cond[{key!r}]" for key, value in (("context", context), ("context_mask", mask))
                     if value is not None]
            if given:
                raise ValueError(f"context frames ({', '.join(given)}) were given to a VideoUNet built without "
                                 "frame_conditioning")
            return x
        if (context is None) != (mask is None):
            raise ValueError(f"cond['context'] [B, {self.in_channels}, F, H, W] (the given frames) and "
                             "cond['context_mask'] [B, F] (True where given) go together")
        if context is None:  # nothing given: the model generates whole clips
            context = torch.zeros_like(x)
            mask = torch.zeros(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
        if context.shape != x.shape:
            raise ValueError(f"cond['context'] must have the shape of x, {list(x.shape)}, got {list(context.shape)}")
        if tuple(mask.shape) != tuple(x.shape[:1] + x.shape[2:3]):
            raise ValueError(f"cond['context_mask'] must have shape [{x.shape[0]}, {x.shape[2]}], got "
                             f"{list(mask.shape)}")
        mask = mask.to(device=x.device, dtype=x.dtype)[:, None, :, None, None]  # [B, 1, F, 1, 1]
        channels = [x, context.to(x.dtype) * mask, mask.expand(-1, 1, -1, *x.shape[3:])]
        return torch.cat(channels, dim=1)
