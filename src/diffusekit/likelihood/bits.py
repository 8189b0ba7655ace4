"""Bits per dimension of 8-bit images under a continuous density, by uniform dequantisation (Theis et al. 2016).

An image x in {0, ..., 255}^D is modelled in the data space z = x / 127.5 - 1 (diffusekit's image convention,
``data/builtin.py``). A continuous model density p_z gives the discrete model P(x) = int_{bin(x)} p_z(z) dz over
the cell of x: z = (x + u - 1/2) / 127.5 - 1, u in [0, 1)^D, which is centred on the point the model was trained on.
With the change of variables dz = du / 127.5^D and Jensen's inequality,

    -log P(x) = -log int_{[0,1)^D} p_z(z(x + u)) 127.5^-D du  <=  E_u[-log p_z(z(x + u))] + D log 127.5,

so a continuous negative log-likelihood in z-space (from the ODE or the variational bound, nats) becomes a bound on
the discrete one by adding ``D log 127.5`` nats, the *dequantisation term*, log2(127.5) = 6.994 bits per dimension.
bits/dim = nats / (D ln 2). Check: the uniform density on the dequantised cube [-1 - 1/255, 1 + 1/255]^D (side
512 / 255) gives exactly log2(512 / 255) + log2(127.5) = 8 bits/dim, the bound being tight for a density constant on
every cell.

Ho et al. 2020 use a discretised Gaussian decoder instead (the last step's Gaussian integrated over each bin); here
dequantisation keeps one rule for every continuous estimate (PF-ODE likelihood, variational bound) and matches Song
et al. 2021 and Theis et al. 2016. It is an upper bound on -log P(x); variational dequantisation (Ho et al. 2019,
Flow++) would tighten it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["PIXEL_SCALE", "DEQUANTIZATION", "dequantize", "dequantization_nats", "bits_per_dim", "bits_summary"]

PIXEL_SCALE = 127.5  # z = x / 127.5 - 1
DEQUANTIZATION = "uniform"  # the name written into results


def dequantize(pixels: Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """8-bit pixel values ``[N, ...]`` (any dtype, integers 0..255) -> z = (x + u - 1/2) / 127.5 - 1, u ~ U[0, 1).

    The noise is drawn on the CPU from ``generator`` and the result is on ``pixels``' device."""
    values = pixels.detach().to("cpu", torch.float64)
    if values.numel() and (not bool(torch.isfinite(values).all()) or bool((values != values.round()).any())):
        raise ValueError("dequantize needs integer pixel values 0..255 (8-bit images); got non-integer values")
    if values.numel() and (float(values.min()) < 0 or float(values.max()) > 255):
        raise ValueError(f"dequantize needs pixel values 0..255 (8-bit images); got the range "
                         f"[{float(values.min()):g}, {float(values.max()):g}]")
    u = torch.rand(values.shape, generator=generator, dtype=torch.float64)
    return ((values + u - 0.5) / PIXEL_SCALE - 1).to(device=pixels.device, dtype=dtype)


def dequantization_nats(dims: int) -> float:
    """D log 127.5: the nats added to a z-space negative log-density to bound -log P(x) of the 8-bit image."""
    return dims * math.log(PIXEL_SCALE)


def bits_per_dim(nats: Tensor | float, dims: int) -> Tensor | float:
    """nats / (D ln 2)."""
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    return nats / (dims * math.log(2))


def bits_summary(continuous_nll: Tensor, dims: int, terms: dict[str, Tensor] | None = None) -> dict:
    """The mean bits/dim over images of the discrete bound, with its standard error over images, and each term.

    Args:
        continuous_nll: ``[N]`` nats per image, -log p_z (or its upper bound) at the dequantised z.
        dims: D, the number of pixel values per image.
        terms: ``[N]`` nats per image of the parts of ``continuous_nll`` (e.g. prior, diffusion), each reported
            as ``<name>_bpd``.
    Returns a dict: ``bpd`` (continuous_nll + dequantisation, mean), ``bpd_stderr`` (the sample standard deviation
    over images / sqrt(N): it holds the Monte-Carlo noise of each image's estimate too), ``continuous_bpd``,
    ``dequantization_bpd`` (log2 127.5), ``<name>_bpd`` per term, ``n`` and ``dequantization``."""
    nll = continuous_nll.detach().to(torch.float64).cpu()
    n = len(nll)
    if n == 0:
        raise ValueError("bits_summary needs at least one image")
    per_image = bits_per_dim(nll + dequantization_nats(dims), dims)
    stderr = float(per_image.std() / math.sqrt(n)) if n > 1 else math.nan
    out = {"bpd": float(per_image.mean()), "bpd_stderr": stderr,
           "continuous_bpd": float(bits_per_dim(nll.mean(), dims)),
           "dequantization_bpd": bits_per_dim(dequantization_nats(dims), dims)}
    for name, value in (terms or {}).items():
        out[f"{name}_bpd"] = float(bits_per_dim(value.detach().to(torch.float64).cpu().mean(), dims))
    return {**out, "n": n, "dequantization": DEQUANTIZATION}
