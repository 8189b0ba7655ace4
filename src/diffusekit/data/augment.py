"""Non-leaking geometric augmentation: xflip, quarter turns, integer translation and isotropic scaling.

The geometric part of the augmentation pipe of EDM (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", appendix), which follows the pipeline of StyleGAN2-ADA (Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data").

"Non-leaking": each enabled augmentation is applied to each image independently with probability ``p``, and its
parameters are handed to the network as conditioning labels (:data:`AUGMENT_DIM` numbers per image). The model
learns the augmented distribution *given* the labels, so the augmentations do not leak into what it generates:
sampling with all-zero labels (the label of an image that got no augmentation) gives un-augmented images.

Label layout, ``labels[:, i]``::

    0  xflip         1 if mirrored left-right, else 0
    1  sin(rot)      rot = k * pi / 2, k in {0, 1, 2, 3} quarter turns (exact: 0, 1, 0, -1)
    2  cos(rot) - 1  (exact: 0, -1, -2, -1), so that no rotation gives 0
    3  tx / W        integer horizontal shift in pixels over the width; positive moves the content right
    4  ty / H        integer vertical shift in pixels over the height; positive moves the content down
    5  log2(s)       isotropic scale factor s about the image center; s > 1 enlarges the content

Conventions. A quarter turn by ``k`` equals ``torch.rot90(images, k, dims=(2, 3))``: counterclockwise as the
image is displayed (row 0 at the top). A translation by ``(tx, ty)`` gives
``out[..., i, j] = images[..., i - ty, j - tx]``, pixels outside read from the mirror image across the border
with the edge pixel repeated (numpy's "symmetric" padding; what ``grid_sample``'s "reflection" does with
``align_corners=False``).

All applied augmentations of an image form ONE affine map, resampled once with ``F.grid_sample`` (bilinear,
reflection padding, ``align_corners=False``). In the order applied to the content: xflip, then the quarter turn,
then the translation, then the scaling about the image center (so the scaling also scales the shift; the order
of StyleGAN2-ADA). The grid is built in pixel coordinates centered on the image, where every pixel center lies on
the same lattice; flips, quarter turns (square images) and integer shifts map that lattice onto itself, so without
scaling the grid lands exactly on pixel centers and the result equals ``torch.flip`` / ``torch.rot90`` / the
shift up to rounding. Resampling runs in float64 (cast back to the images' dtype) to keep that rounding far below
1e-5 at any side. An image whose labels are all zero is copied through bit for bit, never resampled.

Random numbers: all come from ``generator`` (drawn on the CPU, then moved to the images' device), and each image
always takes the same count: 7 uniforms (4 Bernoulli decisions, in the order of :data:`KINDS`, then k, tx, ty)
and 1 normal (the scale), whatever ``p`` or the enabled kinds. Turning a kind off, or changing ``p``, therefore
leaves the draws of the other kinds and of later calls unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMENT_DIM", "KINDS", "AugmentSettings", "augment"]

AUGMENT_DIM = 6  # [xflip, sin(rot), cos(rot) - 1, tx / W, ty / H, log2(scale)]
KINDS = ("xflip", "rot90", "translate", "scale")

_UNIFORMS = 7  # per image: apply xflip, apply rot90, apply translate, apply scale, k, tx, ty
_SIN = (0.0, 1.0, 0.0, -1.0)  # exact sin(k * pi / 2) and cos(k * pi / 2): no 1e-16 residues in the labels
_COS = (1.0, 0.0, -1.0, 0.0)


@dataclass
class AugmentSettings:
    """What :func:`augment` does; ``p = 0`` (the default) turns augmentation off.

    ``p``: the probability of each enabled augmentation, drawn per image and per kind. ``kinds``: the enabled
    augmentations, a subset of :data:`KINDS`. ``translate``: the largest shift as a fraction of the side,
    ``round(translate * W)`` pixels. ``scale_std``: ``log2(s) ~ N(0, scale_std**2)``.
    """

    p: float = 0.0
    kinds: tuple[str, ...] = KINDS
    translate: float = 0.125
    scale_std: float = 0.2

    def __post_init__(self):
        if isinstance(self.kinds, str):
            raise ValueError(f"kinds must be a sequence of names from {KINDS}, got the string {self.kinds!r}")
        self.kinds = tuple(self.kinds)
        for kind in self.kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown augmentation kind {kind!r}: expected some of {', '.join(KINDS)}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"the augmentation probability p must be in [0, 1], got {self.p!r}")
        if not 0.0 <= self.translate <= 0.5:
            raise ValueError(f"translate must be in [0, 0.5] (a fraction of the side), got {self.translate!r}")
        if not 0.0 <= self.scale_std < float("inf"):
            raise ValueError(f"scale_std must be finite and >= 0, got {self.scale_std!r}")


def _draw(batch: int, height: int, width: int, settings: AugmentSettings,
          generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``(labels [B, AUGMENT_DIM], inverse maps [B, 3, 3])`` in float64 on the CPU, from a fixed count of draws.

    The inverse map takes an output pixel position to the input position it reads, in pixel coordinates
    ``(x right, y down)`` centered on the image.
    """
    u = torch.rand(batch, _UNIFORMS, generator=generator, dtype=torch.float64, device="cpu")
    z = torch.randn(batch, generator=generator, dtype=torch.float64, device="cpu")
    on = {kind: (u[:, i] < settings.p) & (kind in settings.kinds) for i, kind in enumerate(KINDS)}

    flip = on["xflip"].double()
    k = torch.where(on["rot90"], 1 + (u[:, 4] * 3).long().clamp(max=2), 0)
    sin, cos = torch.tensor(_SIN, dtype=torch.float64)[k], torch.tensor(_COS, dtype=torch.float64)[k]
    nx, ny = round(settings.translate * width), round(settings.translate * height)
    tx = torch.where(on["translate"], (u[:, 5] * (2 * nx + 1)).floor().clamp(max=2 * nx) - nx, 0.0)
    ty = torch.where(on["translate"], (u[:, 6] * (2 * ny + 1)).floor().clamp(max=2 * ny) - ny, 0.0)
    log2s = torch.where(on["scale"], settings.scale_std * z + 0.0, 0.0)  # where and + 0.0: no -0.0 labels
    labels = torch.stack([flip, sin, cos - 1, tx / width, ty / height, log2s], dim=1)

    def matrices(rows):
        return torch.stack([torch.stack(list(row), dim=-1) for row in rows], dim=-2)

    zero, one = torch.zeros(batch, dtype=torch.float64), torch.ones(batch, dtype=torch.float64)
    # Forward map G = S T R X (xflip X first, scaling S last); its inverse X R^T T(-t) S(1/s) is what we sample.
    inv_flip = matrices([(1 - 2 * flip, zero, zero), (zero, one, zero), (zero, zero, one)])
    # R (counterclockwise on screen, y down): (x, y) -> (x cos + y sin, -x sin + y cos); its inverse is R^T.
    inv_rot = matrices([(cos, -sin, zero), (sin, cos, zero), (zero, zero, one)])
    inv_shift = matrices([(one, zero, -tx), (zero, one, -ty), (zero, zero, one)])
    inv_s = torch.exp2(-log2s)
    inv_scale = matrices([(inv_s, zero, zero), (zero, inv_s, zero), (zero, zero, one)])
    return labels, inv_flip @ inv_rot @ inv_shift @ inv_scale


def _grid(theta: Tensor, height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``F.affine_grid(theta, size, align_corners=False)``, the pixel centers ``(2 j + 1) / W - 1`` made exact."""
    x = (2 * torch.arange(width, device=device, dtype=dtype) + 1 - width) / width
    y = (2 * torch.arange(height, device=device, dtype=dtype) + 1 - height) / height
    base = torch.stack([x.expand(height, width), y[:, None].expand(height, width),
                        torch.ones(height, width, device=device, dtype=dtype)], dim=-1)
    return torch.einsum("hwk,bnk->bhwn", base, theta.to(device=device, dtype=dtype))


def augment(images: Tensor, settings: AugmentSettings, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``images [B, C, H, W]`` (float, in [-1, 1]) -> ``(augmented images, labels [B, AUGMENT_DIM])``.

    Each kind in ``settings.kinds`` is applied to each image with probability ``settings.p``; the labels (layout
    in the module docstring) are all zero for an image that got no augmentation, and that image comes back
    bit-identical. The output is a new tensor of the images' dtype and device; the labels share both. Quarter
    turns need square images. ``generator`` is a CPU generator (None: torch's default one).
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"expected float images [B, C, H, W], got {images.dtype} of shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if "rot90" in settings.kinds and settings.p > 0 and height != width:
        raise ValueError(f"quarter turns (kind 'rot90') need square images, got {height}x{width}")
    labels, inverse = _draw(batch, height, width, settings, generator)
    out = images.clone()
    changed = labels.ne(0).any(dim=1).nonzero().squeeze(1)
    if len(changed):
        # pixel -> normalized coordinates (align_corners=False): x_norm = 2 x / W, y_norm = 2 y / H (centered)
        to_norm = torch.diag(torch.tensor([2 / width, 2 / height, 1.0], dtype=torch.float64))
        theta = (to_norm @ inverse[changed] @ torch.linalg.inv(to_norm))[:, :2]
        # Resample in float64 (MPS lacks it: float32) and cast back. In float32, grid_sample's own unnormalizing
        # and reflecting of the coordinates puts exact maps off by up to ~1e-4 at sides that are not powers of two.
        work = torch.float32 if images.device.type == "mps" else torch.float64
        index = changed.to(images.device)
        source = images[index].to(work)
        grid = _grid(theta, height, width, work, images.device)
        resampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        out[index] = resampled.to(images.dtype)
    return out, labels.to(device=images.device, dtype=images.dtype)
