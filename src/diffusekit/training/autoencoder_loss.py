"""The autoencoder's objective: reconstruction + perceptual + KL (or codebook) + an adaptively weighted patch GAN.

This is LDM's ``LPIPSWithDiscriminator`` (Rombach et al. 2022) and VQGAN's ``VQLPIPSWithDiscriminator``
(Esser et al. 2021), written per pixel. For images of ``D = C * H * W`` values and a batch of ``B``,

    generator loss = rec + perceptual_weight * p + kl_weight * KL / D + codebook_weight * q + w * g,

- ``rec = mean |x - x_hat|`` (``l1``) or ``mean (x - x_hat)^2`` (``l2``) over every pixel of the batch;
- ``p`` the batch mean of a perceptual distance (:mod:`diffusekit.metrics.perceptual`; none, the Inception
  feature distance, ``1 - SSIM`` or ``1 - MS-SSIM``);
- ``KL = mean_b posterior.kl()[b]``, each ``kl()`` the sum over the latent's elements of
  ``0.5 (mu^2 + var - 1 - log var)``; ``q`` the quantiser's codebook + commitment loss;
- ``g`` the generator's GAN loss on ``discriminator(x_hat)`` and ``w = gan_weight * lambda``, with VQGAN's
  adaptive ``lambda = ||grad_L (rec + perceptual_weight * p)|| / (||grad_L g|| + 1e-4)`` clamped to [0, 1e4] and
  detached (Esser et al. 2021, Eq. 7), ``L`` the decoder's last layer; ``lambda = 1`` without ``adaptive_weight``.

Convention: every term is LDM's divided by ``D``. LDM's loss (``logvar`` at its initial 0, as here) is

    sum_pixels |x - x_hat| / B + perceptual_weight * D * p + kl_weight * KL + d_weight * g

(its ``p`` is broadcast over the pixels before the sum); dividing by ``D`` gives the line above, and since
LDM's ``d_weight`` is computed from the same sum it is ``D`` times our ``lambda`` (exactly so but for the
1e-4 and the clamp). So ``kl_weight`` means what it means in LDM's configs, and the default 1e-6 keeps LDM's
balance between KL and reconstruction at every image size. For a VQ autoencoder (no posterior) the loss is
taming's ``VQLPIPSWithDiscriminator`` exactly, which already averages over pixels.

The GAN terms (``hinge``: ``d = mean relu(1 - D(x)) + mean relu(1 + D(x_hat))``, ``g = -mean D(x_hat)``, Lim &
Ye 2017; ``non_saturating``: ``d = mean softplus(-D(x)) + mean softplus(D(x_hat))``, ``g = mean softplus(-D(x_hat))``,
Goodfellow et al. 2014) are absent before ``gan_start_images`` training images: the discriminator is not
called, no GAN key is in the stats and the loss has no GAN term at all (not a zero-weighted one). taming and
LDM halve their discriminator loss; under Adam a constant factor changes almost nothing, and this is the
published hinge loss.

Differences from LDM on purpose: no learned output log-variance (LDM learns one scalar ``logvar``,
initialised at 0, that rescales the reconstruction term; it stays at 0 here, LDM's loss at initialisation, and
the trainer owns no extra parameter); the perceptual term is not LPIPS, whose VGG weights would be downloaded
(see :mod:`~diffusekit.metrics.perceptual`); the hinge loss is not halved (above).
As in taming, ``lambda`` is 0 when gradients are off (a validation pass), so that pass reports the other terms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..metrics.perceptual import InceptionDistance, ms_ssim_distance, ssim_distance

__all__ = ["AutoencoderLoss", "RECONSTRUCTIONS", "PERCEPTUALS", "GAN_LOSSES", "adaptive_gan_weight",
           "hinge_d_loss", "hinge_g_loss", "non_saturating_d_loss", "non_saturating_g_loss", "LDM_KL_WEIGHT",
           "LDM_GAN_START_IMAGES"]

RECONSTRUCTIONS = ("l1", "l2")
PERCEPTUALS = ("none", "inception", "ssim", "ms_ssim")
GAN_LOSSES = ("hinge", "non_saturating")
LDM_KL_WEIGHT = 1e-6  # LDM's autoencoder configs (kl_weight: 0.000001)
# LDM's autoencoder_kl_64x64x3 config starts the discriminator at step 50001 with batch size 12.
LDM_GAN_START_IMAGES = 50_000 * 12
ADAPTIVE_WEIGHT_MAX = 1e4  # VQGAN's clamp
_ADAPTIVE_EPS = 1e-4


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    return -logits_fake.mean()


def non_saturating_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def non_saturating_g_loss(logits_fake: Tensor) -> Tensor:
    return F.softplus(-logits_fake).mean()


_GAN = {"hinge": (hinge_d_loss, hinge_g_loss), "non_saturating": (non_saturating_d_loss, non_saturating_g_loss)}


def adaptive_gan_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
    """VQGAN's ``||grad rec|| / (||grad g|| + 1e-4)`` at the decoder's last layer, clamped to [0, 1e4], detached."""
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (rec_grad.norm() / (g_grad.norm() + _ADAPTIVE_EPS)).clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


def _non_negative(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise UsageError(f"{what} must be a number >= 0, got {value!r}")
    return float(value)


class AutoencoderLoss(nn.Module):
    """The autoencoder's generator and discriminator losses (see the module docstring for every formula).

    ``generator_loss(x, output, last_layer, discriminator, cur_nimg) -> (loss, stats)`` for the autoencoder's
    step, ``discriminator_loss(x, reconstruction, discriminator, cur_nimg) -> (loss, stats)`` for the
    discriminator's; ``stats`` maps names to detached 0-d tensors. Before ``gan_start_images``
    (:meth:`gan_active` is False) the discriminator step has nothing to learn: its loss is a constant 0 without
    a graph, and the trainer should skip that step. It is an ``nn.Module`` only so that ``.to(device)`` moves the
    perceptual network; it has no trained state (with ``perceptual="inception"`` its state dict is the frozen
    Inception weights: do not checkpoint it).
    """

    def __init__(self, reconstruction: str = "l1", kl_weight: float = LDM_KL_WEIGHT, perceptual: str = "none",
                 perceptual_weight: float = 1.0, gan_weight: float = 0.5,
                 gan_start_images: int = LDM_GAN_START_IMAGES, gan_loss: str = "hinge",
                 adaptive_weight: bool = True, codebook_weight: float = 1.0):
        super().__init__()
        self.reconstruction = _choice(reconstruction, RECONSTRUCTIONS, "reconstruction loss")
        self.perceptual = _choice(perceptual, PERCEPTUALS, "perceptual loss")
        self.gan_loss = _choice(gan_loss, GAN_LOSSES, "GAN loss")
        self.kl_weight = _non_negative(kl_weight, "kl_weight")
        self.perceptual_weight = _non_negative(perceptual_weight, "perceptual_weight")
        self.gan_weight = _non_negative(gan_weight, "gan_weight")
        self.codebook_weight = _non_negative(codebook_weight, "codebook_weight")
        if isinstance(gan_start_images, bool) or not isinstance(gan_start_images, int) or gan_start_images < 0:
            raise UsageError(f"gan_start_images must be an integer >= 0, got {gan_start_images!r}")
        self.gan_start_images = gan_start_images
        self.adaptive_weight = bool(adaptive_weight)
        self.inception = InceptionDistance() if perceptual == "inception" else None
        self._d_loss, self._g_loss = _GAN[gan_loss]

    def gan_active(self, cur_nimg: int) -> bool:
        """Whether the GAN terms are on after ``cur_nimg`` training images (never with ``gan_weight`` 0)."""
        return self.gan_weight > 0 and cur_nimg >= self.gan_start_images

    def reconstruction_loss(self, x: Tensor, reconstruction: Tensor) -> Tensor:
        diff = reconstruction - x
        return diff.abs().mean() if self.reconstruction == "l1" else diff.pow(2).mean()

    def perceptual_loss(self, x: Tensor, reconstruction: Tensor) -> Tensor:
        """The batch mean of the perceptual distance (not weighted); 0 for ``perceptual="none"``."""
        if self.perceptual == "none":
            return x.new_zeros(())
        if self.perceptual == "inception":
            return self.inception(x, reconstruction).mean()
        if self.perceptual == "ssim":
            return ssim_distance(x, reconstruction).mean()
        return ms_ssim_distance(x, reconstruction).mean()

    def generator_loss(self, x: Tensor, output: Any, last_layer: Tensor, discriminator: Callable[[Tensor], Tensor],
                       cur_nimg: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The autoencoder's loss for images ``x`` and its ``AutoencoderOutput``; ``last_layer`` is the decoder's
        last weight (for the adaptive GAN weight). The discriminator's parameters receive gradients from the GAN
        term: freeze them (``requires_grad_(False)``) for this step or zero their gradients before theirs."""
        reconstruction = output.reconstruction
        if reconstruction.shape != x.shape:
            raise ValueError(f"the reconstruction's shape {tuple(reconstruction.shape)} differs from the images' "
                             f"{tuple(x.shape)}")
        stats: dict[str, Tensor] = {}
        nll = stats["rec"] = self.reconstruction_loss(x, reconstruction)
        if self.perceptual != "none":
            stats["perceptual"] = self.perceptual_loss(x, reconstruction)
            nll = nll + self.perceptual_weight * stats["perceptual"]
        loss = nll
        if output.posterior is not None and not getattr(output.posterior, "deterministic", False):  # VQ: no KL
            stats["kl"] = output.posterior.kl().mean()
            loss = loss + self.kl_weight * stats["kl"] / x[0].numel()
        if output.quantization is not None and output.quantization.loss is not None:
            stats["codebook"] = output.quantization.loss
            loss = loss + self.codebook_weight * stats["codebook"]
        if self.gan_active(cur_nimg):
            logits_fake = discriminator(reconstruction)
            g = self._g_loss(logits_fake)
            weight = self.gan_weight
            if self.adaptive_weight:
                stats["adaptive_weight"] = adaptive_gan_weight(nll, g, last_layer) if torch.is_grad_enabled() \
                    else g.new_zeros(())
                weight = weight * stats["adaptive_weight"]
            loss = loss + weight * g
            stats["g"], stats["logits_fake"] = g, logits_fake.mean()
        return loss, {name: value.detach() for name, value in stats.items()}

    def discriminator_loss(self, x: Tensor, reconstruction: Tensor, discriminator: Callable[[Tensor], Tensor],
                           cur_nimg: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The discriminator's loss on real images ``x`` and reconstructions (detached here if they are not)."""
        if not self.gan_active(cur_nimg):
            return x.new_zeros(()), {}
        logits_real = discriminator(x.detach())
        logits_fake = discriminator(reconstruction.detach())
        d = self._d_loss(logits_real, logits_fake)
        stats = {"d": d, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return d, {name: value.detach() for name, value in stats.items()}
