"""VDM's learned noise schedule (Kingma et al. 2021, "Variational Diffusion Models", section 3.4 and its
appendix on the monotone network), its variance-minimising gradient, and the bound's terms that train its
endpoints. The schedule itself (:class:`LearnedVP`) lives in :mod:`diffusekit.schedules` beside the fixed ones
(``schedules.get("learned")``); this module is its description and its training side.

The schedule is variance preserving and given by gamma(t) = -logsnr(t):

    alpha^2 = sigmoid(-gamma(t)),   sigma^2 = sigmoid(gamma(t))                  (VDM section 3.4)
    gamma(t) = gamma_min + (gamma_max - gamma_min) * s(t),  s(t) = (g(t) - g(0)) / (g(1) - g(0))

with g VDM's monotone network: g(t) = l1(t) + l3(sigmoid(l2(l1(t)))), l1: 1 -> 1, l2: 1 -> hidden,
l3: hidden -> 1, every weight kept positive as the softplus of a raw parameter (so g' > 0 everywhere, which the
inversion ``t_from_logsnr`` relies on), l3's weights divided by ``hidden`` (a mean over the features, so that the
initial schedule is close to linear in gamma, as VDM's is) and without a bias (it cancels in s). gamma'(t) is
written out analytically: g'(t) = w1 (1 + sum_j w3_j w2_j h_j (1 - h_j)), h = sigmoid(l2(l1(t))).

Endpoints: s(0) = 0 and s(1) = 1 exactly, so gamma(0) = gamma_min and gamma(1) = gamma_max. With VDM's
initial -13.3 and 5.0, sigma(0) = sigmoid(-13.3)^(1/2) = 1.3e-3 (t = 0 is not noise-free: samplers end at z_0,
a sample carrying that much noise) and alpha(1) = sigmoid(-5)^(1/2) = 0.082 (t = 1 still holds signal: sampling
starts from sigma(1) * noise, the prior N(0, sigma(1)^2) ~ N(0, 1) that VDM's prior term measures).

The variance trick (VDM section 5 and its appendix on variance minimisation): the diffusion loss
L = -1/2 lambda'(t) ||eps - eps_hat||^2 (eq. 17, lambda = logsnr = -gamma) is, in expectation over uniform t,
invariant to the schedule's shape between its endpoints (section 5.1: it depends on SNR_min and SNR_max only,
once the model is a function of the noise level), so the shape is free to minimise the estimator's variance
E[L^2]. Its gradient is E[2 L dL/d eta], so one backward pass of the batch-mean loss serves both: the model's
parameters get dL, the shape's parameters eta (the parameters of g) get dL scaled by 2 L.
:meth:`LearnedVP.tape` records every
evaluation of s and s' made while building a batch's loss; :meth:`VarianceTape.scale_gradients` then hooks a
per-example factor 2 L_i onto the gradients flowing into them. gamma_min and gamma_max enter gamma directly,
not through s, and so keep the plain gradient of the bound.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .schedules import LearnedVP, MonotoneNetwork, VarianceTape

__all__ = ["MonotoneNetwork", "LearnedVP", "VarianceTape", "endpoint_terms"]


def endpoint_terms(schedule: LearnedVP, x0: Tensor, noise: Tensor, levels: int = 256) -> Tensor:
    """The bound's prior and reconstruction terms per example, in nats per dimension (the diffusion loss's
    unit): [batch]. Through them (and the diffusion term) gamma_min and gamma_max train on the whole bound.

    - prior: KL(N(alpha_1 x, sigma_1^2) || N(0, sigma_1^2)) = SNR(1) x^2 / 2, the prior being the density samplers
      start from;
    - reconstruction: -log p(x | z_0), z_0 = alpha_0 x + sigma_0 ``noise``, with VDM's discrete decoder for data
      quantised to ``levels`` values v_k in [-1, 1]: p(x = v_k | z_0) proportional to
      exp(-(z_0 / alpha_0 - v_k)^2 / (2 r^2)), r = sigma_0 / alpha_0 = exp(gamma_min / 2). Over a discrete
      decoder the bound is finite for discrete data, so gamma_min settles where sharper reconstruction stops
      paying for the longer diffusion (a continuous Gaussian decoder would reward gamma_min -> -inf).
    """
    dtype = torch.float32
    gamma_min, gamma_max = (v.to(dtype) for v in schedule.module.endpoints(dtype))
    x = x0.to(dtype).reshape(len(x0), -1)
    prior = 0.5 * torch.exp(-gamma_max) * x.pow(2).mean(1)
    r = torch.exp(gamma_min / 2)
    values = torch.linspace(-1.0, 1.0, levels, dtype=dtype, device=x.device)
    k = ((x.clamp(-1, 1) + 1) * (levels - 1) / 2).round().long()  # the level of each value
    z_hat = x + r * noise.to(dtype).reshape(len(x0), -1)  # z_0 / alpha_0
    logits = -(z_hat[..., None] - values).pow(2) / (2 * r**2)  # [batch, D, levels]
    reconstruction = -(logits.gather(-1, k[..., None]).squeeze(-1) - torch.logsumexp(logits, -1))
    return prior + reconstruction.mean(1)
