"""Bits per dimension of a model on its dataset's held-out images: the PF-ODE likelihood (``nll``) and the variational
bound (``elbo``), both through uniform dequantisation (:mod:`diffusekit.likelihood.bits`).

Every image gets one dequantisation draw u (seeded by the evaluation seed), shared by both metrics, so that they
bound -log P(x) of the same z. The likelihood of a class-conditional model is conditional on the image's label
(``cond="label"``: -log p(x | y)) or unconditional through the null label of classifier-free guidance
(``cond="null"``: needs training with condition dropout, objective.p_uncond > 0). The two true values differ by
the mutual information I(x; y) <= log K nats per image (0.004 bits/dim for 10 classes of 28x28), so the
conditional one, from the network's best-trained mode, is the default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from .. import likelihood
from ..data import load_training_data
from ..data.training_set import has_held_out
from ..errors import UsageError
from ..guidance import null_condition
from ..models.build import cascade_settings

__all__ = ["LIKELIHOOD_METRICS", "CONDITIONS", "LikelihoodSettings", "check_likelihood_model", "held_out_images",
           "likelihood_metrics"]

LIKELIHOOD_METRICS = ("nll", "elbo")
CONDITIONS = ("label", "null")


@dataclass(frozen=True)
class LikelihoodSettings:
    n: int = 256  # held-out images
    batch_size: int = 64
    cond: str = "label"  # label | null (module docstring)
    seed: int = 0  # dequantisation draws, ODE probes, ELBO noise
    # nll: diffusekit.likelihood.ode_nll
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "hutchinson"  # hutchinson | exact (D vector-Jacobian products per step: small D only)
    probes: int = 1
    probe: str = "rademacher"
    nll_t_min: float | None = None  # None: ode_nll's own default
    # elbo: diffusekit.likelihood.elbo
    samples: int = 4
    time: str = "quadrature"
    nodes: int = 128
    elbo_t_min: float | None = None  # None: elbo's own default (sigma / alpha = 1e-3)

    def describe_nll(self) -> dict:
        return {"rtol": self.rtol, "atol": self.atol, "divergence": self.divergence, "probes": self.probes,
                "probe": self.probe, "t_min": self.nll_t_min}

    def describe_elbo(self) -> dict:
        return {"samples": self.samples, "time": self.time, "nodes": self.nodes, "t_min": self.elbo_t_min}


def check_likelihood_model(model, cond: str) -> None:
    """Refuse, in one line, a model whose likelihood in bits/dim of 8-bit images is not defined here."""
    what = f"--metrics nll/elbo: {model.checkpoint}"
    if model.latent is not None:
        raise UsageError(f"{what} is a latent model: its density is over autoencoder latents, not 8-bit images, so "
                         "bits/dim of the images are not defined")
    if model.is_video:
        raise UsageError(f"{what} is {model.describe_kind()}; likelihoods are computed for image models")
    if model.config.data.captions:
        raise UsageError(f"{what} is text-conditioned; likelihoods take class labels or none")
    if cascade_settings(model.config) is not None:
        raise UsageError(f"{what} is a cascade stage conditioned on a low-resolution image; its likelihood is "
                         "conditional on that image and is not computed here")
    if cond not in CONDITIONS:
        raise UsageError(f"--nll-cond {cond!r}: choose label or null")
    if cond == "null" and model.num_classes and not model.config.objective.p_uncond > 0:
        raise UsageError(f"--nll-cond null: {model.checkpoint} was trained without condition dropout "
                         "(objective.p_uncond = 0), so its null label was never learned; use --nll-cond label")


def held_out_images(data_config, n: int) -> tuple[Tensor, Tensor, str]:
    """The first ``n`` images of the run's test split (a folder without a held-out part: its train split), as uint8
    ``[N, C, H, W]`` at the trained size, their labels ``[N]`` and the split's name. No augmentation."""
    split = "test" if has_held_out(data_config) else "train"
    data = replace(data_config, split=split, limit=n, intensity=None, xflip=False, augment=0.0)
    arrays = load_training_data(data)
    images = torch.from_numpy(np.array(arrays.images[:n], copy=True)).permute(0, 3, 1, 2)
    return images, torch.from_numpy(np.asarray(arrays.labels[:n])).long(), split


def likelihood_metrics(model, names: tuple[str, ...], settings: LikelihoodSettings, *,
                       device: str | torch.device = "cpu", progress=None) -> dict:
    """``{"nll": {...}, "elbo": {...}}``: bits/dim summaries (:func:`diffusekit.likelihood.bits_summary`) of the
    held-out images with each metric's terms and settings. ``progress(name, count)`` after each batch."""
    check_likelihood_model(model, settings.cond)
    pixels, labels, split = held_out_images(model.config.data, settings.n)
    dims = int(pixels[0].numel())
    generator = torch.Generator().manual_seed(settings.seed)
    z = likelihood.dequantize(pixels, generator=generator)  # one draw per image, shared by the metrics
    null = null_condition(model.num_classes)
    results = {}
    for name in names:
        terms: dict[str, list[Tensor]] = {}
        for first in range(0, len(z), settings.batch_size):
            x = z[first:first + settings.batch_size].to(device)
            cond = None
            if model.num_classes:
                cond = {"labels": labels[first:first + len(x)].to(device)}
                cond = null(cond) if settings.cond == "null" else cond
            batch_generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + first + 1)
            try:
                values = _one_batch(name, model.denoiser, x, cond, settings, batch_generator)
            except ValueError as e:  # a setting the estimator refuses (tolerance, t_min, nodes): one line
                raise UsageError(f"--metrics {name}: {e}") from None
            for key, value in values.items():
                terms.setdefault(key, []).append(value.detach().to("cpu", torch.float64).reshape(-1))
            if progress is not None:
                progress(name, len(x))
        joined = {key: torch.cat(values) for key, values in terms.items()}
        total = joined.pop("total")
        extra = joined.pop("extra")
        summary = likelihood.bits_summary(total, dims, joined)
        summary.update(split=split, dims=dims, cond=settings.cond if model.num_classes else "none",
                       **(settings.describe_nll() if name == "nll" else settings.describe_elbo()))
        if name == "nll":
            summary["nfe_mean"] = float(extra.mean())
        else:
            summary["mc_stderr_bpd"] = float(likelihood.bits_per_dim(extra.pow(2).mean().sqrt(), dims))
        results[name] = summary
    return results


def _one_batch(name: str, denoise, x: Tensor, cond, settings: LikelihoodSettings, generator) -> dict[str, Tensor]:
    """The per-image nats of one batch: ``total`` (continuous -log p_z or its bound), its terms, and ``extra`` (the
    ODE's function evaluations, or the ELBO's Monte-Carlo standard error)."""
    schedule = denoise.schedule
    if name == "nll":
        options = {} if settings.nll_t_min is None else {"t_min": settings.nll_t_min}
        result = likelihood.ode_nll(denoise, schedule, x, rtol=settings.rtol, atol=settings.atol,
                                    divergence=settings.divergence, probes=settings.probes, probe=settings.probe,
                                    generator=generator, cond=cond, **options)
        nfe = torch.as_tensor(result.nfe, dtype=torch.float64).expand(len(x))
        return {"total": result.nll, "prior": result.prior, "ode": -result.delta, "extra": nfe}  # nll = prior - delta
    result = likelihood.elbo(denoise, schedule, x, t_min=settings.elbo_t_min, samples=settings.samples,
                             time=settings.time, nodes=settings.nodes, generator=generator, cond=cond)
    return {"total": result.total, "prior": result.prior, "reconstruction": result.reconstruction,
            "diffusion": result.diffusion, "extra": result.stderr.nan_to_num(0.0)}
