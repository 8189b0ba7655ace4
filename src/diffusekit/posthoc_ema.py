"""Post-hoc EMA maths: power-function averaging profiles, their length ``sigma_rel``, and the least-squares mix of
stored averages that approximates an average of another length (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", EDM2, section 3 and appendix C). Numbers only: no tensors, no training.

**The power-function EMA.** After optimizer step ``t`` (counted from 1) the average moves with
``beta_t = (1 - 1/t) ** (gamma + 1)``. Unrolled, with ``S(t) = t ** (gamma + 1)`` and ``beta_t = S(t-1) / S(t)``,

    theta_hat_t = sum_{s=1..t} (S(s) - S(s-1)) / S(t) * theta_s,

and ``S(s) - S(s-1)`` is the integral of ``(gamma + 1) tau ** gamma`` over ``(s-1, s]``. With the weights constant
over each step the average is therefore *exactly* ``integral p(tau) theta(tau) dtau`` with the profile

    p(tau) = (gamma + 1) tau ** gamma / t ** (gamma + 1)   on [0, t]   (EDM2 eq. 2; beta_1 = 0: the
    initialisation gets no weight).

Time may be counted in images instead of steps (``tau_images = batch * tau_steps``): every profile is rescaled the
same way, so the inner products below scale by one common factor and the least-squares weights do not change.
Snapshots record their image count; the trainer steps the EMA with ``t = cur_nimg / batch``.

**Its length** (EDM2 eq. 3): the profile's standard deviation relative to ``t``. With ``u = tau / t`` distributed as
``(gamma + 1) u ** gamma`` on [0, 1]: ``E u = (g+1)/(g+2)``, ``E u^2 = (g+1)/(g+3)``, so

    sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3)).

``gamma >= 0`` (the weights never favour early steps) gives ``sigma_rel`` in ``(0, 1/sqrt(12)]``; ``gamma = 0``
is the plain average of the whole run (the uniform distribution's ``1/sqrt(12)``). The inverse solves the cubic
``g^3 + 7 g^2 + (16 - 1/s^2) g + 12 - 1/s^2 = 0`` (``s^2 (g+2)^2 (g+3) = g + 1`` expanded), whose largest real root
is the one ``>= 0``.

**Reconstruction** (EDM2 appendix C.3). Stored averages ``i`` with profiles ``p_i`` (``gamma_i``, ``t_i``) mix
into ``sum_i x_i theta_hat_i``, whose profile is ``sum_i x_i p_i``. The ``x`` closest in L2 to the target profile
``p_r`` solves ``A x = b``, ``A_ij = <p_i, p_j>``, ``b_i = <p_i, p_r>``. For ``t_i <= t_j`` both profiles are nonzero
on ``[0, t_i]`` and

    <p_i, p_j> = (g_i+1)(g_j+1) / (t_i^(g_i+1) t_j^(g_j+1)) * t_i^(g_i+g_j+1) / (g_i+g_j+1)
               = (g_i+1)(g_j+1) / (g_i+g_j+1) * (t_i/t_j)^g_j / t_j,

written in the second form so that no power of a large time is formed.

**Ordinary EMAs on the same axis.** An EMA with half-life ``h`` weights the past as ``exp(-ln 2 (t - tau) / h)``:
an exponential distribution of standard deviation ``h / ln 2``, so far from the start ``sigma_rel = h / (t ln 2)``
(:func:`half_life_of_sigma_rel`); :func:`ema_sigma_rel` computes the exact value of the discrete, ramped-up,
truncated profile that :class:`~diffusekit.training.ema.EMA` produces.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SIGMA_REL_MAX", "sigma_rel_of_gamma", "gamma_of_sigma_rel", "check_sigma_rel", "sigma_rel_label",
           "power_beta", "exponential_beta", "profile_inner_products", "profile_values", "solve_mix",
           "mix_error", "discrete_sigma_rel", "ema_sigma_rel", "half_life_of_sigma_rel"]

SIGMA_REL_MAX = 1 / math.sqrt(12)  # gamma = 0: the plain average of the whole run


def sigma_rel_of_gamma(gamma: float) -> float:
    """The relative standard deviation of the power profile with exponent ``gamma`` (EDM2 eq. 3)."""
    if not gamma >= 0:
        raise ValueError(f"the power-function EMA's exponent must be >= 0, got {gamma}")
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


def check_sigma_rel(sigma_rel: float, what: str = "sigma_rel") -> float:
    """``sigma_rel`` as a float when it lies in (0, 1/sqrt(12)]; a one-line ValueError naming ``what`` otherwise."""
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or \
            not 0 < sigma_rel <= SIGMA_REL_MAX:
        raise ValueError(f"{what}: {sigma_rel!r} is not a relative EMA length; it must lie in (0, 1/sqrt(12) = "
                         f"{SIGMA_REL_MAX:.6f}] (the upper end: the plain average of the whole run)")
    return float(sigma_rel)


def gamma_of_sigma_rel(sigma_rel: float) -> float:
    """The power profile's exponent ``gamma >= 0`` of relative standard deviation ``sigma_rel`` (the largest real
    root of the cubic in the module docstring)."""
    s2 = check_sigma_rel(sigma_rel) ** 2
    if math.isclose(s2, SIGMA_REL_MAX ** 2, rel_tol=1e-15):
        return 0.0
    roots = np.roots([1.0, 7.0, 16.0 - 1.0 / s2, 12.0 - 1.0 / s2])
    return max(0.0, float(max(r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r.real)))))


def sigma_rel_label(sigma_rel: float) -> str:
    """A name part without dots (checkpoint EMA names may not contain '.'): 0.05 -> "0p050", 0.0125 -> "0p0125"."""
    text = f"{sigma_rel:.3f}" if round(sigma_rel, 3) == sigma_rel else f"{sigma_rel:.6g}"
    return text.replace(".", "p")


def power_beta(gamma: float, step: float) -> float:
    """``beta_t = (1 - 1/t) ** (gamma + 1)`` after step ``t >= 1`` (0 at the first step: the average starts as a
    copy of the weights)."""
    if step < 1:
        raise ValueError(f"the power-function EMA counts steps from 1, got {step}")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def exponential_beta(half_life_images: float, cur_nimg: int, batch: int, rampup: float | None) -> float:
    """An ordinary EMA's ``beta = 0.5 ** (batch / half_life)`` after a step of ``batch`` images that brought the count
    to ``cur_nimg``; with ``rampup`` the half-life is at most ``rampup * cur_nimg`` (EDM, Karras et al. 2022, F.3)."""
    half_life = float(half_life_images)
    if rampup is not None:
        half_life = min(half_life, cur_nimg * rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


def _as_arrays(gammas, times) -> tuple[np.ndarray, np.ndarray]:
    g, t = np.asarray(gammas, dtype=np.float64).reshape(-1), np.asarray(times, dtype=np.float64).reshape(-1)
    if g.shape != t.shape:
        raise ValueError(f"{g.size} exponents but {t.size} times")
    if (g < 0).any() or (t <= 0).any():
        raise ValueError("power profiles need exponents >= 0 and times > 0")
    return g, t


def profile_inner_products(gammas_a, times_a, gammas_b, times_b) -> np.ndarray:
    """``[len(a), len(b)]`` matrix of L2 inner products ``<p_i, p_j>`` of power profiles (closed form, module
    docstring); the times in any one unit (steps or images)."""
    ga, ta = _as_arrays(gammas_a, times_a)
    gb, tb = _as_arrays(gammas_b, times_b)
    gi, ti = ga[:, None], ta[:, None]
    gj, tj = gb[None, :], tb[None, :]
    first = ti <= tj  # the shorter profile's support bounds the integral; write it with the longer one's time
    g_long, t_long = np.where(first, gj, gi), np.where(first, tj, ti)
    t_short = np.where(first, ti, tj)
    return (gi + 1) * (gj + 1) / (gi + gj + 1) * (t_short / t_long) ** g_long / t_long


def profile_values(gammas, times, tau) -> np.ndarray:
    """``[len(gammas), len(tau)]``: each profile ``p(tau) = (g+1) tau^g / t^(g+1)`` on [0, t], 0 after ``t``."""
    g, t = _as_arrays(gammas, times)
    tau = np.asarray(tau, dtype=np.float64)[None, :]
    u = tau / t[:, None]
    return np.where((u >= 0) & (u <= 1), (g[:, None] + 1) * u ** g[:, None] / t[:, None], 0.0)


def solve_mix(gammas, times, target_gamma: float, target_time: float) -> np.ndarray:
    """``[n]`` weights ``x`` of the stored averages (profiles ``gammas``, ``times``) whose mix is closest in L2 to the
    power profile (``target_gamma``, ``target_time``): the least-squares solution of ``A x = b``."""
    a = profile_inner_products(gammas, times, gammas, times)
    b = profile_inner_products(gammas, times, [target_gamma], [target_time])[:, 0]
    return np.linalg.lstsq(a, b, rcond=None)[0]


def mix_error(gammas, times, weights, target_gamma: float, target_time: float) -> float:
    """``||p_r - sum_i x_i p_i|| / ||p_r||``: the relative L2 error of a mix's profile, from the inner products."""
    a = profile_inner_products(gammas, times, gammas, times)
    b = profile_inner_products(gammas, times, [target_gamma], [target_time])[:, 0]
    rr = profile_inner_products([target_gamma], [target_time], [target_gamma], [target_time])[0, 0]
    x = np.asarray(weights, dtype=np.float64)
    return math.sqrt(max(rr - 2 * x @ b + x @ a @ x, 0.0) / rr)


def discrete_sigma_rel(betas) -> float:
    """The relative standard deviation of the averaging profile of an EMA with per-step ``betas`` ``[T]`` (the
    average after step ``s`` is ``beta_s avg + (1 - beta_s) theta_s``). Step ``s``'s weight is spread evenly over
    ``(s-1, s]`` (the weights are constant during a step); the initial weights sit at 0."""
    betas = np.asarray(betas, dtype=np.float64)
    steps = len(betas)
    # weight of step s: (1 - beta_s) times the product of all later betas
    later = np.concatenate([np.cumprod(betas[::-1])[::-1][1:], [1.0]])
    weights = (1 - betas) * later
    s = np.arange(1, steps + 1, dtype=np.float64)
    mean = float(weights @ (s - 0.5))  # the initialisation (weight prod(betas)) contributes 0 to both moments
    second = float(weights @ ((s - 1) ** 2 + (s - 1) * s + s ** 2) / 3)
    return math.sqrt(max(second - mean ** 2, 0.0)) / steps


def ema_sigma_rel(half_life_images: float, total_images: int, batch: int, rampup: float | None) -> float:
    """``sigma_rel`` of an ordinary EMA (half-life in images, EDM's ramp-up) after ``total_images`` images in steps
    of ``batch``: the exact discrete profile, ramp-up and truncation included."""
    steps = int(total_images // batch)
    betas = [exponential_beta(half_life_images, (k + 1) * batch, batch, rampup) for k in range(steps)]
    return discrete_sigma_rel(betas)


def half_life_of_sigma_rel(sigma_rel: float, cur_nimg: float) -> float:
    """The half-life in images of the ordinary EMA with the same relative length at ``cur_nimg`` images: the
    exponential profile's standard deviation is ``half_life / ln 2`` (untruncated, no ramp-up)."""
    return check_sigma_rel(sigma_rel) * cur_nimg * math.log(2)
