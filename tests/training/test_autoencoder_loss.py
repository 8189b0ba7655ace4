"""The autoencoder's loss against exact references: hand-made logits for the GAN losses, gradient norms taken
here with autograd for the adaptive weight, the Gaussian KL from torch.distributions, and LDM's loss written out."""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

from diffusekit.networks.discriminator import PatchDiscriminator
from diffusekit.training.autoencoder_loss import (
    ADAPTIVE_WEIGHT_MAX,
    AutoencoderLoss,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
)


# -- stand-ins for diffusekit.networks.autoencoder's interface --------------------------------------------------------
class DiagonalGaussian:
    def __init__(self, mean, logvar):
        self.mean, self.logvar = mean, logvar

    def kl(self):  # LDM's DiagonalGaussianDistribution.kl() against N(0, I): a sum over the latent, [B]
        return 0.5 * (self.mean ** 2 + self.logvar.exp() - 1 - self.logvar).sum((1, 2, 3))


@dataclass
class Quantization:
    loss: torch.Tensor | None


@dataclass
class AutoencoderOutput:
    reconstruction: torch.Tensor
    posterior: DiagonalGaussian | None
    quantization: Quantization | None


class TinyAutoencoder(nn.Module):
    """16 x 16 images -> a 2 x 8 x 8 Gaussian latent -> a two-convolution decoder."""

    def __init__(self, channels=3):
        super().__init__()
        self.encoder = nn.Conv2d(channels, 4, 3, stride=2, padding=1)
        self.decoder = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2),
                                     nn.Conv2d(8, channels, 3, padding=1))

    def last_layer(self):
        return self.decoder[-1].weight

    def forward(self, x, generator=None):
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator)
        return AutoencoderOutput(self.decoder(z), DiagonalGaussian(mean, logvar), None)


class CountingDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = PatchDiscriminator(channels=8, layers=2, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyAutoencoder()
    x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    return model, x, model(x, g)


# -- GAN losses on hand-made logits ----------------------------------------------------------------------------------
REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-3.0, 0.0, 0.5])


def test_hinge_losses():
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 1.5]
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert hinge_g_loss(FAKE).item() == pytest.approx(2.5 / 3)


def test_non_saturating_losses():
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected_d = sum(softplus(-r) for r in REAL.tolist()) / 3 + sum(softplus(f) for f in FAKE.tolist()) / 3
    assert non_saturating_d_loss(REAL, FAKE).item() == pytest.approx(expected_d)
    assert non_saturating_g_loss(FAKE).item() == pytest.approx(sum(softplus(-f) for f in FAKE.tolist()) / 3)


def test_discriminator_loss_uses_the_chosen_gan_loss_on_both_batches():
    logits = {0: REAL.view(3, 1, 1, 1), 1: FAKE.view(3, 1, 1, 1)}  # a "discriminator" that knows the answers
    x, r = torch.zeros(3, 3, 8, 8), torch.ones(3, 3, 8, 8)
    fake_d = lambda images: logits[int(images[0, 0, 0, 0])]  # noqa: E731
    loss, stats = AutoencoderLoss(gan_start_images=0).discriminator_loss(x, r, fake_d, cur_nimg=0)
    assert loss.item() == pytest.approx(5 / 3)
    assert {k: round(v.item(), 6) for k, v in stats.items()} == {
        "d": round(5 / 3, 6), "logits_real": round(1.5 / 3, 6), "logits_fake": round(-2.5 / 3, 6)}
    ns, _ = AutoencoderLoss(gan_start_images=0, gan_loss="non_saturating").discriminator_loss(x, r, fake_d, 0)
    assert ns.item() == pytest.approx(non_saturating_d_loss(REAL, FAKE).item())


def test_discriminator_loss_trains_only_the_discriminator(batch):
    model, x, output = batch
    d = CountingDiscriminator()
    loss, _ = AutoencoderLoss(gan_start_images=0).discriminator_loss(x, output.reconstruction, d, cur_nimg=5)
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in d.parameters())


# -- the adaptive weight ---------------------------------------------------------------------------------------------
def test_adaptive_weight_is_the_ratio_of_gradient_norms_clamped():
    w = torch.tensor([[1.0, -2.0], [2.0, 4.0]], requires_grad=True)  # ||w|| = 5
    rec, g = 3 * w.sum(), 0.5 * w.pow(2).sum()  # gradients: all 3 (norm 6) and w (norm 5)
    assert adaptive_gan_weight(rec, g, w).item() == pytest.approx(6 / (5 + 1e-4))
    assert adaptive_gan_weight(1e3 * w.sum(), 0 * w.sum(), w).item() == ADAPTIVE_WEIGHT_MAX
    assert not adaptive_gan_weight(rec, g, w).requires_grad


@pytest.mark.parametrize("perceptual", ["none", "ssim"])
def test_adaptive_weight_on_a_tiny_decoder(batch, perceptual):
    model, x, output = batch
    d = CountingDiscriminator()
    loss_fn = AutoencoderLoss(perceptual=perceptual, perceptual_weight=0.7, gan_start_images=0, gan_weight=0.5)
    loss, stats = loss_fn.generator_loss(x, output, model.last_layer(), d, cur_nimg=0)
    last = model.last_layer()
    r = output.reconstruction
    nll = (r - x).abs().mean()
    if perceptual == "ssim":
        nll = nll + 0.7 * (1 - ssim_reference(x, r)).mean()
    g = -d.net(r).mean()
    (grad_nll,) = torch.autograd.grad(nll, last, retain_graph=True)
    (grad_g,) = torch.autograd.grad(g, last, retain_graph=True)
    lam = grad_nll.norm() / (grad_g.norm() + 1e-4)
    torch.testing.assert_close(stats["adaptive_weight"], lam)
    torch.testing.assert_close(stats["g"], g.detach())
    # The weight is a constant in the backward pass, and the KL does not reach the decoder: at the last layer the
    # loss's gradient is grad(nll) + 0.5 lambda grad(g)
    (grad_loss,) = torch.autograd.grad(loss, last, retain_graph=True)
    torch.testing.assert_close(grad_loss, grad_nll + 0.5 * lam * grad_g)


def ssim_reference(x, y):
    return ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0, size_average=False)


def test_without_adaptive_weight_the_gan_term_is_gan_weight_times_g(batch):
    model, x, output = batch
    d = CountingDiscriminator()
    loss_fn = AutoencoderLoss(gan_start_images=0, gan_weight=0.3, adaptive_weight=False, kl_weight=0.0)
    loss, stats = loss_fn.generator_loss(x, output, model.last_layer(), d, cur_nimg=0)
    assert "adaptive_weight" not in stats
    torch.testing.assert_close(loss, (output.reconstruction - x).abs().mean() + 0.3 * stats["g"])


def test_adaptive_weight_is_zero_without_gradients(batch):
    model, x, _ = batch
    with torch.no_grad():
        output = model(x)
        loss, stats = AutoencoderLoss(gan_start_images=0).generator_loss(
            x, output, model.last_layer(), CountingDiscriminator(), cur_nimg=0)
    assert stats["adaptive_weight"].item() == 0.0 and torch.isfinite(loss)


# -- the KL term and LDM's balance -----------------------------------------------------------------------------------
def test_kl_term_against_the_gaussian_closed_form(batch):
    model, x, output = batch
    mean, logvar = output.posterior.mean, output.posterior.logvar
    closed_form = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)).sum((1, 2, 3))
    loss_fn = AutoencoderLoss(kl_weight=1e-3, gan_start_images=10)
    loss, stats = loss_fn.generator_loss(x, output, model.last_layer(), CountingDiscriminator(), cur_nimg=0)
    torch.testing.assert_close(stats["kl"], closed_form.mean().detach())
    d = 3 * 16 * 16
    torch.testing.assert_close(loss, (output.reconstruction - x).abs().mean() + 1e-3 * closed_form.mean() / d)


def test_the_loss_is_ldms_divided_by_the_pixel_count(batch):
    # LDM's LPIPSWithDiscriminator (logvar = 0, disc_factor = 1), written out: every sum over pixels, / B.
    model, x, output = batch
    d = CountingDiscriminator()
    kl_weight, p_weight, gan_weight = 1e-6, 0.7, 0.5
    loss_fn = AutoencoderLoss(kl_weight=kl_weight, perceptual="ssim", perceptual_weight=p_weight,
                              gan_weight=gan_weight, gan_start_images=0)
    loss, _ = loss_fn.generator_loss(x, output, model.last_layer(), d, cur_nimg=0)
    r, b = output.reconstruction, x.shape[0]
    p_loss = (1 - ssim_reference(x, r)).view(b, 1, 1, 1)
    rec_loss = (x - r).abs() + p_weight * p_loss
    nll_loss = rec_loss.sum() / b
    kl_loss = output.posterior.kl().sum() / b
    g_loss = -d.net(r).mean()
    (nll_grads,) = torch.autograd.grad(nll_loss, model.last_layer(), retain_graph=True)
    (g_grads,) = torch.autograd.grad(g_loss, model.last_layer(), retain_graph=True)
    d_weight = torch.clamp(nll_grads.norm() / (g_grads.norm() + 1e-4), 0.0, 1e4).detach() * gan_weight
    ldm = nll_loss + kl_weight * kl_loss + d_weight * g_loss
    torch.testing.assert_close(loss * x[0].numel(), ldm)


def test_l2_reconstruction(batch):
    model, x, output = batch
    loss, stats = AutoencoderLoss(reconstruction="l2", kl_weight=0.0, gan_start_images=10).generator_loss(
        x, output, model.last_layer(), CountingDiscriminator(), cur_nimg=0)
    torch.testing.assert_close(stats["rec"], F.mse_loss(output.reconstruction, x).detach())
    torch.testing.assert_close(loss, F.mse_loss(output.reconstruction, x))


def test_codebook_loss_of_a_quantised_autoencoder(batch):
    model, x, output = batch
    q = torch.tensor(0.25, requires_grad=True)
    vq = AutoencoderOutput(output.reconstruction, None, Quantization(q))
    loss, stats = AutoencoderLoss(codebook_weight=2.0, gan_start_images=10).generator_loss(
        x, vq, model.last_layer(), CountingDiscriminator(), cur_nimg=0)
    assert set(stats) == {"rec", "codebook"} and stats["codebook"].item() == 0.25
    torch.testing.assert_close(loss, (output.reconstruction - x).abs().mean() + 0.5)


# -- the GAN's start -------------------------------------------------------------------------------------------------
def test_gan_terms_are_absent_before_gan_start_images(batch):
    model, x, output = batch
    d = CountingDiscriminator()
    loss_fn = AutoencoderLoss(gan_start_images=1000)
    loss, stats = loss_fn.generator_loss(x, output, model.last_layer(), d, cur_nimg=999)
    d_loss, d_stats = loss_fn.discriminator_loss(x, output.reconstruction, d, cur_nimg=999)
    assert d.calls == 0 and not loss_fn.gan_active(999)
    assert set(stats) == {"rec", "kl"} and d_stats == {}
    assert d_loss.item() == 0.0 and not d_loss.requires_grad
    expected = (output.reconstruction - x).abs().mean() + 1e-6 * output.posterior.kl().mean() / (3 * 16 * 16)
    assert torch.equal(loss, expected)
    # from gan_start_images on: one discriminator call per loss
    loss, stats = loss_fn.generator_loss(x, output, model.last_layer(), d, cur_nimg=1000)
    assert d.calls == 1 and {"g", "adaptive_weight", "logits_fake"} <= set(stats)
    loss_fn.discriminator_loss(x, output.reconstruction, d, cur_nimg=1000)
    assert d.calls == 3  # real and fake


def test_stats_are_detached_zero_dimensional_tensors(batch):
    model, x, output = batch
    _, stats = AutoencoderLoss(perceptual="ssim", gan_start_images=0).generator_loss(
        x, output, model.last_layer(), CountingDiscriminator(), cur_nimg=0)
    assert set(stats) == {"rec", "perceptual", "kl", "g", "adaptive_weight", "logits_fake"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in stats.values())


def test_inception_perceptual_term(inception_weights_installed):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    r = (x + 0.2 * torch.randn(x.shape, generator=g)).requires_grad_()
    output = AutoencoderOutput(r, None, None)
    loss_fn = AutoencoderLoss(perceptual="inception", perceptual_weight=2.0, gan_start_images=10)
    loss, stats = loss_fn.generator_loss(x, output, r, CountingDiscriminator(), cur_nimg=0)
    torch.testing.assert_close(stats["perceptual"], loss_fn.inception(x, r).mean().detach())
    torch.testing.assert_close(loss, (r - x).abs().mean() + 2.0 * stats["perceptual"])
    loss.backward()
    assert r.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(reconstruction="l3"), "unknown reconstruction loss 'l3'; choose one of l1, l2"),
    (dict(perceptual="lpips"), "unknown perceptual loss 'lpips'; choose one of none, inception, ssim, ms_ssim"),
    (dict(gan_loss="wgan"), "unknown GAN loss 'wgan'; choose one of hinge, non_saturating"),
    (dict(kl_weight=-1e-6), "kl_weight must be a number >= 0"),
    (dict(gan_weight=float("nan")), "gan_weight must be a number >= 0"),
    (dict(gan_start_images=-1), "gan_start_images must be an integer >= 0"),
    (dict(gan_start_images=1.5), "gan_start_images must be an integer >= 0"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderLoss(**kwargs)


def test_mismatched_reconstruction_is_refused(batch):
    model, x, output = batch
    bad = AutoencoderOutput(output.reconstruction[:, :, :8], None, None)
    with pytest.raises(ValueError, match="reconstruction's shape"):
        AutoencoderLoss().generator_loss(x, bad, model.last_layer(), CountingDiscriminator(), cur_nimg=0)
