"""Likelihoods of diffusion models: the variational bound (:mod:`.elbo`) and bits per dimension of 8-bit images
(:mod:`.bits`)."""

from .bits import bits_per_dim, bits_summary, dequantization_nats, dequantize
from .elbo import ELBOResult, elbo, elbo_integrand

__all__ = ["ELBOResult", "elbo", "elbo_integrand", "bits_per_dim", "bits_summary", "dequantization_nats", "dequantize"]
