"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", Algorithms 1-3) with data prediction, as published.

Step i goes from lambda_s = lambda(t_i) to lambda_t = lambda(t_{i+1}), h = lambda_t - lambda_s, with the
data-prediction model outputs m_0 = x0_hat(t_i), m_k = x0_hat(t_{i-k}) and r_k = (lambda_{i-k} - lambda_s) / h:

- UniP-p (predictor of order p, p - 1 earlier outputs):
  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m_0 - alpha_t B(h) sum_k a_k D_k with
  D_k = (m_k - m_0) / r_k; a = R^{-1} g over the p - 1 differences (R_{nk} = r_k^{n-1}; g_n = hh n!
  phi_{n+1}(hh) / B(h), hh = -h, phi_1(z) = (e^z - 1) / z, phi_{n+1}(z) = (phi_n(z) - 1 / n!) / z);
  with a single difference a_1 = 1/2.
- UniC-p (corrector, once m_t = x0_hat(x_t) is known): the same update with m_t as one more difference
  (r = 1, D = m_t - m_0) and a = R^{-1} g over all p; for p = 1, a_1 = 1/2. The corrected x_t continues the
  solve, the evaluation at the uncorrected x_t is kept: the corrector costs no evaluation.
- B(h): ``variant="bh1"`` B(h) = hh, ``"bh2"`` B(h) = e^{hh} - 1 (hh = -h for data prediction).

The order ramps 1, 2, .., ``order`` over the first steps; ``lower_order_final`` (default) caps the order of
step i at N - i, as diffusers' ``UniPCMultistepScheduler`` does, so the last step is first order. The
last step to sigma = 0 (lambda = inf) is always first order, the denoising step x = m_0: a higher-order
step has no finite limit there (r_k = 0). A start at alpha = 0 (lambda = -inf) takes first-order steps
until lambda is finite, then ramps up again.

How this differs from ``multistep`` with ``corrector=True``: ``multistep`` integrates the interpolating
polynomial of x0_hat exactly (weights by quadrature, exact for polynomial x0_hat at every order), while
UniPC matches the Taylor coefficients through the phi-functions and B(h), exact to its order only as
h -> 0; ``multistep`` interpolates in ve_sigma by default, UniPC in lambda.
"""

from __future__ import annotations

import math

import numpy as np

from ._step import after_step, call_denoise
from .grid import Grid

__all__ = ["unipc", "unipc_coefficients", "UNIPC_VARIANTS"]

UNIPC_VARIANTS = ("bh1", "bh2")


def unipc_coefficients(rs: list[float], h: float, variant: str, corrector: bool) -> np.ndarray:
    """The coefficients a_k of UniP (``corrector=False``; ``rs`` the p - 1 earlier points' r_k) or UniC
    (``rs`` the p - 1 earlier points' r_k; the new point's r = 1 is appended), h > 0 finite."""
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    p = len(rs) + 1
    g, h_phi, factorial = [], math.expm1(hh) / hh - 1.0, 1.0  # h_phi = hh * phi_2(hh)
    for n in range(1, p + 1):
        g.append(h_phi * factorial / b_h)
        factorial *= n + 1
        h_phi = h_phi / hh - 1.0 / factorial  # hh * phi_{n+2}(hh)
    points = np.asarray(list(rs) + [1.0], dtype=np.float64)
    R = np.stack([points ** (n - 1) for n in range(1, p + 1)])
    if corrector:
        return np.array([0.5]) if p == 1 else np.linalg.solve(R, np.asarray(g))
    if p == 1:
        return np.zeros(0)
    if p == 2:
        return np.array([0.5])
    return np.linalg.solve(R[:-1, :-1], np.asarray(g[:-1]))


def _update(grid: Grid, i: int, x_s, m0, earlier, new, variant: str, corrector: bool):
    """x at t_{i+1} from x_s at t_i: UniP over ``earlier`` [(lambda_k, m_k)], or UniC with ``new`` = m_t too."""
    lam_s, lam_t = grid.lam(i), grid.lam(i + 1)
    h = lam_t - lam_s
    ratio = grid.sigma[i + 1] / grid.sigma[i]
    out = x_s * ratio
    out.add_(m0, alpha=grid.alpha[i + 1] - ratio * grid.alpha[i])  # - alpha_t (e^{-h} - 1) m_0
    rs = [(lam_k - lam_s) / h for lam_k, _ in earlier]
    a = unipc_coefficients(rs, h, variant, corrector)
    if len(a) == 0:
        return out
    b_h = -h if variant == "bh1" else math.expm1(-h)
    scale = -grid.alpha[i + 1] * b_h
    differences = [(m_k, r) for (_, m_k), r in zip(earlier, rs, strict=True)]
    if corrector:
        differences.append((new, 1.0))
    for a_k, (m_k, r) in zip(a, differences, strict=True):
        out.add_(m_k - m0, alpha=scale * float(a_k) / r)
    return out


def unipc(denoise, x, grid: Grid, *, cond, callback, measure=None, order: int = 2, variant: str = "bh2",
          corrector: bool = True, lower_order_final: bool = True):
    if not isinstance(order, int) or not 1 <= order <= 3:
        raise ValueError(f"unipc order must be an integer in 1..3, got {order!r}")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"unipc variant must be one of {', '.join(UNIPC_VARIANTS)}, got {variant!r}")
    outputs: list[tuple[float, object]] = []  # (lambda, x0_hat), newest first
    last = None  # (x at t_{i-1}, i - 1, order of that step) for the corrector
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        if corrector and last is not None and grid.t[i + 1] > 0.0:
            x_prev, j, p = last  # UniC-p on the step t_j -> t_i, with m_t = x0_hat
            x = _update(grid, j, x_prev, outputs[0][1], outputs[1:p], x0_hat, variant, True)
        lam = grid.lam(i)
        outputs = ([(lam, x0_hat)] + outputs)[:order] if math.isfinite(lam) else []
        p = min(order, len(outputs))
        if lower_order_final:
            p = min(p, grid.steps - i)
        final = not math.isfinite(grid.lam(i + 1))
        if final or p == 0:  # to sigma = 0, or from alpha = 0: first order (x0_hat, or DDIM)
            ratio = grid.sigma[i + 1] / grid.sigma[i]
            x_next = ratio * x + (grid.alpha[i + 1] - ratio * grid.alpha[i]) * x0_hat
            last = None
        else:
            x_next = _update(grid, i, x, x0_hat, outputs[1:p], None, variant, False)
            last = (x, i, p)
        x = after_step(measure, x_next, i)
    return x
