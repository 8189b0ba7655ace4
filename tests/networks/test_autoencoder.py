import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffusekit.networks.autoencoder import PRESETS, Autoencoder, DiagonalGaussian
from diffusekit.networks.quantize import QuantizerOutput


def images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1


# -- the posterior ---------------------------------------------------------------------------------------------------
def test_kl_matches_the_closed_form_of_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    logvar = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    posterior = DiagonalGaussian(mean, logvar)
    expected = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum((1, 2, 3))
    assert posterior.kl().shape == (3,)
    torch.testing.assert_close(posterior.kl(), expected)


def test_logvar_is_clamped_to_minus_30_and_20():
    posterior = DiagonalGaussian(torch.zeros(1, 1, 1, 3), torch.tensor([[[[-100.0, 0.0, 100.0]]]]))
    assert posterior.logvar.flatten().tolist() == [-30.0, 0.0, 20.0]
    torch.testing.assert_close(posterior.std.flatten(), torch.exp(torch.tensor([-15.0, 0.0, 10.0])))


def test_sample_is_mean_plus_std_times_the_generators_noise():
    gen = torch.Generator().manual_seed(1)
    moments = torch.randn(2, 8, 3, 3, generator=gen)
    posterior = DiagonalGaussian.from_moments(moments)
    torch.testing.assert_close(posterior.mean, moments[:, :4])
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    expected = moments[:, :4] + torch.exp(0.5 * moments[:, 4:]) * noise
    torch.testing.assert_close(posterior.sample(torch.Generator().manual_seed(5)), expected)
    assert not torch.equal(posterior.sample(torch.Generator().manual_seed(6)), expected)
    assert torch.equal(posterior.mode(), posterior.mean)


def test_a_deterministic_posterior_has_no_spread():
    mean = torch.randn(2, 4, 3, 3)
    posterior = DiagonalGaussian(mean, deterministic=True)
    assert torch.equal(posterior.sample(torch.Generator().manual_seed(0)), mean)
    assert torch.equal(posterior.kl(), torch.zeros(2))
    assert torch.equal(posterior.std, torch.zeros_like(mean))


# -- the network -----------------------------------------------------------------------------------------------------
def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def resnet(cin: int, cout: int) -> int:
    # norm1, conv1, norm2, conv2, and a 1x1 shortcut when the width changes
    return 2 * cin + conv(3, cin, cout) + 2 * cout + conv(3, cout, cout) + (conv(1, cin, cout) if cin != cout else 0)


def mid_block(c: int, attention: bool = True) -> int:
    return 2 * resnet(c, c) + ((2 * c + 4 * (c * c + c)) if attention else 0)  # GroupNorm + q, k, v, out


def autoencoder_params(widths, layers: int, latent: int, image: int = 3) -> int:
    """The LDM autoencoder written out level by level."""
    total = conv(3, image, widths[0])
    previous = widths[0]
    for i, c in enumerate(widths):  # encoder
        total += resnet(previous, c) + (layers - 1) * resnet(c, c) + (conv(3, c, c) if i < len(widths) - 1 else 0)
        previous = c
    total += mid_block(widths[-1]) + 2 * widths[-1] + conv(3, widths[-1], 2 * latent)
    total += conv(1, 2 * latent, 2 * latent) + conv(1, latent, latent)  # quant_conv, post_quant_conv
    reverse = widths[::-1]
    total += conv(3, latent, reverse[0]) + mid_block(reverse[0])
    previous = reverse[0]
    for i, c in enumerate(reverse):  # decoder: layers + 1 resnets per level
        total += resnet(previous, c) + layers * resnet(c, c) + (conv(3, c, c) if i < len(reverse) - 1 else 0)
        previous = c
    return total + 2 * reverse[-1] + conv(3, reverse[-1], image)


@pytest.mark.parametrize("name, factor, latent_side", [("f4", 4, 16), ("f8", 8, 8)])
def test_presets_have_their_shapes_and_parameter_counts(name, factor, latent_side):
    torch.manual_seed(0)
    model = Autoencoder.from_preset(name).eval()
    preset = PRESETS[name]
    assert sum(p.numel() for p in model.parameters()) == autoencoder_params(preset["block_out_channels"], 1, 4)
    assert model.downsample_factor == factor and model.latent_channels == 4
    assert model.latent_shape((3, 64, 64)) == (4, latent_side, latent_side)
    assert model.latent_shape((3, 64, 32)) == (4, latent_side, latent_side // 2)
    x = images()
    with torch.no_grad():
        posterior = model.encode(x)
        assert posterior.mean.shape == posterior.logvar.shape == (2, 4, latent_side, latent_side)
        assert model.decode(posterior.mean).shape == x.shape
        out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.reconstruction.shape == x.shape and out.quantization is None
    # eps 1e-6 in every GroupNorm, norm_num_groups groups
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.eps == 1e-6 and m.num_groups == preset["norm_num_groups"] for m in norms)


def test_forward_samples_the_posterior_with_the_generator_or_takes_its_mean():
    torch.manual_seed(0)
    model = Autoencoder.from_preset("f4").eval()
    x = images(size=16)
    with torch.no_grad():
        posterior = model.encode(x)
        sampled = model(x, generator=torch.Generator().manual_seed(3))
        expected = model.decode(posterior.sample(torch.Generator().manual_seed(3)))
        torch.testing.assert_close(sampled.reconstruction, expected)
        torch.testing.assert_close(model(x, sample_posterior=False).reconstruction, model.decode(posterior.mean))


def test_latent_normalisation_uses_the_shift_and_scale_buffers():
    model = Autoencoder.from_preset("f4")
    assert torch.equal(model.latent_shift, torch.zeros(4)) and torch.equal(model.latent_scale, torch.ones(4))
    assert {"latent_shift", "latent_scale"} <= set(model.state_dict())
    shift, scale = torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([0.5, 2.0, 1.5, 0.18215])
    model.latent_shift.copy_(shift)
    model.latent_scale.copy_(scale)
    z = torch.randn(2, 4, 3, 3)
    expected = (z - shift[None, :, None, None]) * scale[None, :, None, None]
    torch.testing.assert_close(model.normalize_latent(z), expected)
    torch.testing.assert_close(model.denormalize_latent(expected), z)


def test_last_layer_is_the_decoders_output_conv_weight():
    model = Autoencoder.from_preset("f4")
    assert model.last_layer() is model.decoder.conv_out.weight


def test_a_tiny_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    model = Autoencoder.from_preset("f4", block_out_channels=(16, 16, 16), norm_num_groups=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    # Smooth images (4x4 colour grids upsampled) fit through the 4x4x4 latent; white noise would not.
    x = torch.nn.functional.interpolate(images(batch=4, size=4), size=16, mode="bilinear")
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        out = model(x, generator=gen)
        loss = (out.reconstruction - x).pow(2).mean() + 1e-6 * out.posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


# -- the VQ-regularised autoencoder ----------------------------------------------------------------------------------
def vq_model(**options) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder.from_preset("f4", quantizer=dict(num_codes=16, **options))


def test_a_vq_model_has_a_deterministic_encoder_and_returns_the_quantizers_output():
    model = vq_model()
    assert model.encoder.conv_out.out_channels == 4
    assert model.quant_conv.in_channels == model.quant_conv.out_channels == 4
    x = images(size=16)
    out = model.train()(x, generator=torch.Generator().manual_seed(0))
    assert out.posterior.deterministic and torch.equal(out.posterior.kl(), torch.zeros(2))
    assert isinstance(out.quantization, QuantizerOutput)
    assert out.quantization.indices.shape == (2, 4, 4)
    assert model.quantizer.initialized  # k-means on the first training batch
    out.reconstruction.mean().backward()
    assert model.encoder.conv_in.weight.grad is not None  # the straight-through gradient reaches the encoder


def test_vq_decode_snaps_to_the_codebook_and_changes_no_state():
    model = vq_model(restart_after=1).train()
    z = torch.randn(2, 4, 4, 4)
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    with torch.no_grad():
        decoded = model.decode(z)
        indices = ((z.permute(0, 2, 3, 1)[..., None, :] - model.quantizer.codebook) ** 2).sum(-1).argmin(-1)
        snapped = model.quantizer.codebook[indices].permute(0, 3, 1, 2)
        torch.testing.assert_close(decoded, model.decoder(model.post_quant_conv(snapped)))
    for name, value in model.quantizer.state_dict().items():
        assert torch.equal(value, before[name]), name


# -- bad input -------------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_a_message_naming_it():
    model = Autoencoder.from_preset("f8")
    with pytest.raises(ValueError, match="divisible by the downsample factor 8"):
        model.encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match="divisible by the downsample factor 8"):
        model.latent_shape((3, 64, 12))
    with pytest.raises(ValueError, match="3-channel images, got 1"):
        model.encode(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 4, h, w\] latents"):
        model.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="48 channels do not split into norm_num_groups=32"):
        Autoencoder(block_out_channels=(32, 48))
    with pytest.raises(ValueError, match="unknown autoencoder preset 'f16'; known: f4, f8"):
        Autoencoder.from_preset("f16")
    with pytest.raises(ValueError, match="unknown autoencoder option.*layers"):
        Autoencoder.from_preset("f4", layers=2)
    with pytest.raises(ValueError, match="unknown quantizer option.*codes"):
        Autoencoder.from_preset("f4", quantizer=dict(codes=16))
    with pytest.raises(ValueError, match="quantizer dim 8 must equal latent_channels 4"):
        Autoencoder.from_preset("f4", quantizer=dict(num_codes=16, dim=8))
    with pytest.raises(ValueError, match="num_codes"):
        Autoencoder.from_preset("f4", quantizer=dict(beta=0.5))
