"""Likelihoods of diffusion models (docs/likelihood.md).

- :func:`ode_nll` (:mod:`.ode`): the exact negative log-likelihood of the probability-flow ODE's density, by the
  instantaneous change of variables;
- :func:`elbo` (:mod:`.elbo`): the variational bound of the diffusion process (VDM's continuous-time ELBO);
- :mod:`.bits`: bits per dimension of 8-bit images by uniform dequantisation.
"""

from .bits import bits_per_dim, bits_summary, dequantization_nats, dequantize
from .elbo import ELBOResult, elbo, elbo_integrand
from .ode import MAX_PRIOR_SNR, ODELikelihood, endpoint_std, ode_nll

__all__ = ["ode_nll", "ODELikelihood", "endpoint_std", "MAX_PRIOR_SNR", "ELBOResult", "elbo", "elbo_integrand",
           "bits_per_dim", "bits_summary", "dequantization_nats", "dequantize"]
