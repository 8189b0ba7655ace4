"""Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

``DiT(x, noise_cond, cond) -> F``: the image is cut into ``p x p`` patches (a convolution with kernel =
stride = p), each patch becomes a token with a fixed 2-D sin-cos position, a stack of Transformer blocks
conditioned by adaLN-Zero (Sec. 3.2) processes the tokens, and a final adaLN + linear layer maps every
token back to a ``p x p`` patch of output channels.

The conditioning vector is ``c = MLP(embed(noise_cond)) + class_embedding(cond["labels"])``. Each block regresses
shift, scale and gate from ``c`` with a zero-initialised linear layer, so at initialisation every block is
the identity and, with the zero-initialised final layer, the network outputs exactly zero.

Differences from the reference implementation, on purpose:
- the noise level is any real ``noise_cond`` chosen by the caller (the denoiser's ``c_noise``), not a
  discrete timestep, and its embedding comes from :func:`~diffusekit.networks.embeddings.get_noise_embedding`;
- no label dropout inside the network: condition dropout for classifier-free guidance is a training-time
  transform of the labels (``diffusekit.guidance``); the network only knows the null class;
- text conditioning (``text_dim > 0``) follows PixArt-alpha (Chen et al. 2023): the pooled text is added to
  ``c`` and every block cross-attends to the text tokens between self-attention and the MLP (pre-LayerNorm,
  no adaLN modulation, zero-initialised output projection, so an untrained text branch is the identity);
- ``learn_sigma`` is not a network concept: ask for ``out_channels = 2 * in_channels`` if a variance is
  learned; the 2-D positional table is a non-persistent buffer, so it is neither a parameter nor saved.
"""

from __future__ import annotations

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
from diffusekit.networks.layers import CrossAttention
from diffusekit.networks.positions import RelativeBias2d

__all__ = ["DiT", "DiTBlock", "PRESETS", "sincos_pos_embed_2d"]

# DiT Table 1: (depth, hidden size, heads) per model size; the suffix /p is the patch size.
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PRESETS: dict[str, dict[str, int]] = {
    f"DiT-{size}/{patch}": dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch)
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}
PRESETS["tiny"] = dict(depth=2, hidden_size=64, num_heads=2, patch_size=2)  # for tests and smoke runs


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, max_period: float = 10_000.0) -> Tensor:
    """Fixed 2-D sin-cos position table [grid_h * grid_w, dim], tokens in row-major order.

    The MAE construction used by DiT: half of the channels encode the column index, half the row index,
    each as ``[sin(pos w_k), cos(pos w_k)]`` with ``w_k = max_period^(-k / (dim/4))``.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a hidden size divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = max_period ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )

    def embed_1d(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed_1d(cols), embed_1d(rows)], dim=1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    # ``1 + scale`` so that a zero regression leaves the normalised tokens unchanged.
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
    """Multi-head self-attention over ``[B, T, hidden]`` tokens; ``grid`` ``(h, w)``: the tokens are an
    ``h x w`` grid in row-major order and the logits get a learned 2-D relative position bias per head."""

    def __init__(self, hidden_size: int, num_heads: int, grid: tuple[int, int] | None = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.grid = grid
        # Registered only when asked for, so the default network keeps its state-dict keys.
        self.relative_bias = RelativeBias2d(num_heads, *grid) if grid is not None else None

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, hidden = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, hidden // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, head_dim]
        bias = None if self.relative_bias is None else self.relative_bias(*self.grid).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, hidden))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT Sec. 3.2, Fig. 3); with ``text_dim > 0`` a
    cross-attention sub-layer to the text sits between self-attention and the MLP (PixArt-alpha)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, text_dim: int = 0,
                 relative_grid: tuple[int, int] | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, relative_grid)
        # Registered only when present, so networks without text keep their state-dict keys.
        self.cross_attn = CrossAttention(hidden_size, text_dim, num_heads, norm="layer") if text_dim else None
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden_size)
        )
        # Shift, scale and gate for the attention and MLP branches; the LayerNorms carry no affine
        # parameters because these replace them.
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor, text: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``text``: ``(states [B, L, text_dim], mask [B, L])``, required when the block cross-attends."""
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.ada_ln(c).chunk(6, dim=1)
        x = x + gate_attn[:, None, :] * self.attn(_modulate(self.norm1(x), shift_attn, scale_attn))
        if self.cross_attn is not None:
            if text is None:
                raise ValueError("this block cross-attends to text: it needs (states, mask)")
            x = x + self.cross_attn(x, *text)
        return x + gate_mlp[:, None, :] * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN (shift and scale, no gate) then a linear map from each token to a patch of output channels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada_ln(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer: ``forward(x [B, C_in, H, W], noise_cond [B], cond) -> [B, C_out, H, W]``.

    ``cond`` maps condition names to tensors (:mod:`diffusekit.networks.conditioning`; None or empty: none).
    ``num_classes = 0`` builds an unconditional network; otherwise ``cond["labels"]`` holds labels in
    ``[0, num_classes]``, ``num_classes`` being the null class, and no labels mean null for all.
    ``img_resolution`` is an int or ``(H, W)``. Use :meth:`from_name` for the paper's configurations.
    """

    def __init__(
        self,
        img_resolution: int | tuple[int, int],
        in_channels: int,
        out_channels: int | None = None,
        num_classes: int = 0,
        patch_size: int = 2,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        embedding: str = "positional",
        noise_channels: int = 256,
        augment_dim: int = 0,
        noise_aug: bool = False,
        cond_channels: int = 0,
        text_dim: int = 0,
        position: str = "absolute",
    ):
        """``position``: ``"absolute"``: the fixed 2-D sin-cos table added to the tokens (DiT); ``"relative"``: no
        table, and every block's self-attention adds a learned 2-D relative bias per head to its logits
        (Swin-style, zero at initialisation; :class:`~diffusekit.networks.positions.RelativeBias2d`)."""
        super().__init__()
        height, width = (img_resolution, img_resolution) if isinstance(img_resolution, int) else img_resolution
        if height % patch_size or width % patch_size:
            raise ValueError(f"image size {height}x{width} is not divisible by the patch size {patch_size}: use a "
                             f"resolution that is a multiple of {patch_size}, or another patch_size")
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by the number of heads {num_heads}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        if text_dim < 0:
            raise ValueError(f"text_dim must be >= 0 (0 = no text conditioning), got {text_dim}")
        if position not in ("absolute", "relative"):
            raise ValueError(f"unknown DiT position {position!r}; choose 'absolute' or 'relative'")
        self.position = position
        self.img_size, self.patch_size = (height, width), patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.num_classes = num_classes
        self.grid = (height // patch_size, width // patch_size)

        self.cond_channels = cond_channels  # channels of cond["image"], concatenated to the input
        self.patch_embed = nn.Conv2d(in_channels + cond_channels, hidden_size, kernel_size=patch_size,
                                     stride=patch_size)
        if position == "absolute":
            pos = sincos_pos_embed_2d(hidden_size, *self.grid).to(torch.get_default_dtype())
            self.register_buffer("pos_embed", pos[None], persistent=False)
        else:
            self.pos_embed = None
        self.noise_embed = get_noise_embedding(embedding, noise_channels)
        self.noise_mlp = nn.Sequential(
            nn.Linear(noise_channels, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.class_embed = ClassEmbedding(num_classes, hidden_size) if num_classes > 0 else None
        extra = ExtraEmbedding(hidden_size, augment_dim, noise_aug)  # augmentation labels / level -> c
        self.extra_embed = extra if extra.active else None
        self.text_dim = text_dim  # width of cond["text"]; 0: no text, and exactly the network without it
        self.text_embed = TextConditioning(text_dim, hidden_size, owner="DiT") if text_dim else None
        relative_grid = self.grid if position == "relative" else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, text_dim, relative_grid)
                                    for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.reset_parameters()

    @classmethod
    def from_name(cls, name: str, **kwargs) -> DiT:
        """``DiT.from_name("DiT-XL/2", img_resolution=32, in_channels=4, num_classes=1000)``; ``kwargs`` override
        the preset's own values (e.g. ``patch_size=1`` on a small latent grid)."""
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **kwargs})

    def reset_parameters(self) -> None:
        """The initialisation of the DiT reference code (Sec. 3.2 for the zero parts)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # The patch embedding is a linear map on flattened patches: initialise it like one.
        weight = self.patch_embed.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.noise_mlp[0], self.noise_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.class_embed is not None:
            # Same scale as the noise embedding, so neither dominates c at the start.
            nn.init.normal_(self.class_embed.table.weight, std=0.02)
        if self.extra_embed is not None:
            for layer in self.extra_embed.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        if self.text_embed is not None:
            nn.init.normal_(self.text_embed.map_pooled.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output starts at zero; so does every
        # cross-attention branch (its output projection).
        zero = [block.ada_ln[1] for block in self.blocks] + [self.final.ada_ln[1], self.final.linear]
        zero += [block.cross_attn.proj for block in self.blocks if block.cross_attn is not None]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check_inputs(self, x: Tensor, noise_cond: Tensor, labels: Tensor | None) -> None:
        # Shapes only: they are known on the host, so checking them never waits for the device.
        expected = (self.in_channels, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected x of shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        if tuple(noise_cond.shape) != (x.shape[0],):
            raise ValueError(f"noise_cond must have shape [{x.shape[0]}], got {tuple(noise_cond.shape)}")
        if labels is not None and self.class_embed is None:
            raise ValueError("class labels were given to an unconditional DiT (num_classes=0)")

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """[B, T, p*p*C] -> [B, C, H, W]; each token's channels are ordered (row, column, channel)."""
        (grid_h, grid_w), p = self.grid, self.patch_size
        x = tokens.reshape(tokens.shape[0], grid_h, grid_w, p, p, self.out_channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], self.out_channels, grid_h * p, grid_w * p)

    def forward(self, x: Tensor, noise_cond: Tensor, cond: Conditions | None = None) -> Tensor:
        """``cond``: the named conditions (:mod:`diffusekit.networks.conditioning`); None: none."""
        parts = network_conditions(cond)
        self._check_inputs(x, noise_cond, parts.get("labels"))
        reject_video(parts, "DiT")
        x = concat_image(x, parts, self.cond_channels)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, T, hidden]
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        mlp_in = self.noise_mlp[0].weight
        c = self.noise_mlp(self.noise_embed(noise_cond).to(mlp_in.dtype))  # embeddings compute in float32
        if self.class_embed is not None:
            c = c + self.class_embed(parts.get("labels"), x.shape[0], x.device)
        if self.extra_embed is not None:
            extra = self.extra_embed(parts, x.shape[0], x.device, c.dtype)
            c = c if extra is None else c + extra
        elif parts.get("augment") is not None or parts.get("aug_level") is not None:
            raise ValueError("augmentation labels or levels were given to a DiT built without augment_dim / "
                             "noise_aug")
        text = None
        if self.text_embed is not None:
            states, mask, pooled = self.text_embed.resolve(parts, x.shape[0], x.device)
            c = c + pooled.to(c.dtype)
            text = (states, mask)
        else:
            reject_text(parts, "DiT")
        for block in self.blocks:
            tokens = block(tokens, c, text)
        return self.unpatchify(self.final(tokens, c))
