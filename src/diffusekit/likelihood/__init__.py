"""Likelihoods of a diffusion model's data density.

- :func:`ode_nll` (:mod:`.ode`): the exact negative log-likelihood of the probability-flow ODE's density,
  by the instantaneous change of variables (docs/likelihood.md).
"""

from .ode import MAX_PRIOR_SNR, ODELikelihood, endpoint_std, ode_nll

__all__ = ["ode_nll", "ODELikelihood", "endpoint_std", "MAX_PRIOR_SNR"]
