"""``solve``: one entry point for every inverse-problem method, with the checks that name a bad input."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..conditions import Conditions, as_conditions
from ..errors import InverseProblemError
from ..sampling import SAMPLERS, options_of, sampler_name
from ..sampling.grid import evaluate_grid
from ..schedules import Schedule
from .methods import LATENT_METHODS, METHODS
from .problem import Problem

__all__ = ["solve", "method_options"]


def method_options(method: str) -> dict[str, object]:
    """The options of ``method`` and their defaults (``ccdf`` also passes its consistency method's options on)."""
    if method not in METHODS:
        raise InverseProblemError(f"unknown inverse-problem method {method!r}; choose one of {', '.join(METHODS)}")
    parameters = list(inspect.signature(METHODS[method]).parameters.values())[3:]
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}


def _check_options(method: str, options: dict) -> None:
    allowed = method_options(method)
    if method == "ccdf":
        allowed = {**allowed, **method_options(options.get("consistency", allowed["consistency"]))}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InverseProblemError(f"method {method!r} has no option {', '.join(unknown)}; its options: "
                                  f"{', '.join(allowed) or 'none'}")


@torch.no_grad()
def solve(denoise, schedule: Schedule, operator, y: Tensor, noise: Tensor, ts: Tensor, method: str = "dps",
          generator: torch.Generator | None = None, *, cond: Conditions | None = None, sampler: str = "ddpm",
          sampler_options: dict | None = None, decode=None, **options) -> Tensor:
    """Samples x0 of the posterior of ``y = A x0 + sigma_y n`` under the prior ``denoise``, by ``method``.

    ``denoise(x_t, t, cond) -> x0_hat`` and ``schedule`` are the model; ``operator`` is ``A`` with its noise
    level (:mod:`diffusekit.inverse.operators`); ``y`` ``[N, *measurement]`` the measurements; ``noise`` ``[N,
    *sample]`` the standard normal start noise; ``ts`` a decreasing grid ending at 0 (``sampling.timesteps``);
    ``sampler`` any diffusekit sampler (``sampler_options`` its options); ``options`` the method's (docs/inverse.md,
    :func:`method_options`). ``decode``: a latent model's decoder, differentiable; the samples are then latents,
    the operator acts on ``decode(x)`` and the decoded images are returned. Returns ``[N, *sample]`` (or images).
    """
    _check_options(method, options)
    try:
        sampler = sampler_name(sampler, stacklevel=3)
    except ValueError as e:
        raise InverseProblemError(str(e)) from None
    unknown = sorted(set(sampler_options or {}) - set(options_of(SAMPLERS[sampler])))
    if unknown:
        raise InverseProblemError(f"sampler {sampler!r} has no option {', '.join(unknown)}")
    if decode is not None and method not in LATENT_METHODS and not (
            method == "ccdf" and options.get("consistency") in LATENT_METHODS):
        raise InverseProblemError(
            f"method {method!r} acts on the pixels of the sample itself, but this model samples latents that a "
            f"decoder turns into images: a latent model can use {' or '.join(map(repr, LATENT_METHODS))}, which "
            "differentiate through the decoder")
    image_shape = tuple(noise.shape[1:]) if decode is None else tuple(decode(noise[:1]).shape[1:])
    operator.check(image_shape)
    expected = (noise.shape[0], *operator.measurement_shape(image_shape))
    if tuple(y.shape) != expected:
        raise InverseProblemError(f"the measurements have shape {tuple(y.shape)}, but {type(operator).__name__} on "
                                  f"{noise.shape[0]} samples of shape {image_shape} measures {expected}")
    grid = evaluate_grid(schedule, ts)
    problem = Problem(denoise=denoise, schedule=schedule, operator=operator, y=y.to(noise.dtype), grid=grid,
                      generator=generator, cond=as_conditions(cond), sampler=sampler, sample_shape=image_shape,
                      sampler_options=dict(sampler_options or {}), decode=decode)
    x = METHODS[method](problem, grid.sigma[0] * noise, grid, **options)
    return x if decode is None else decode(x)
