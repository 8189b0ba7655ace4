"""Inverse problems with a trained diffusion prior: inpainting, super-resolution, deblurring and noisy linear
measurements (docs/inverse.md).

- :mod:`~diffusekit.inverse.operators`: the measurement ``y = A x + sigma_y n`` (``Inpaint(mask)``,
  ``Downsample(factor, kind)``, ``Blur(sigma)``, ``Matrix(A)``), each with its transpose, pseudo-inverse and
  projection; :mod:`~diffusekit.inverse.masks` builds inpainting masks.
- :func:`solve` runs a method (:data:`METHODS`: replacement, RePaint, POCS, ILVR, CCDF, MCG, reconstruction
  guidance, DPS, and the asymptotically exact SMC) with any sampler, on pixel or latent models.
"""

from .methods import LATENT_METHODS, METHODS
from .solve import method_options, solve

__all__ = ["solve", "METHODS", "LATENT_METHODS", "method_options"]
