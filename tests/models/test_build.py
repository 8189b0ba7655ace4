import pytest
import torch

from diffusekit.config import PRESETS, preset
from diffusekit.models.build import build_denoiser, build_loss, build_network, network_conditioning
from diffusekit.networks.unet import UNet

# (channels, resolution, classes) each preset's data has after its resize settings
# (a caption run's network has no classes: mnist-text is text-only)
SHAPES = {"tiny": (1, 16, 10), "mnist": (1, 28, 10), "mnist-text": (1, 28, 0), "fashion-mnist": (1, 32, 10),
          "tiles": (3, 32, 4), "mnist-dit": (1, 32, 10), "emoji": (3, 64, 0), "emoji-latent": (4, 16, 0),
          "moving-mnist": (1, 32, 10)}
# the latent preset's denoiser works on its autoencoder's 4x16x16 latents of 64x64 images
LATENT_IMAGES = {"emoji-latent": 64}


@pytest.mark.parametrize("name", [name for name in PRESETS if preset(name).network.kind != "autoencoder"])
def test_every_preset_builds_a_working_denoiser(name):
    config = preset(name)
    channels, resolution, classes = SHAPES[name]
    if config.data.resolution is not None:
        assert config.data.resolution == LATENT_IMAGES.get(name, resolution)
    torch.manual_seed(0)
    frames = () if config.video.frames is None else (config.video.frames,)  # a video preset draws clips
    shape = (channels, *frames, resolution, resolution)
    network = build_network(config.network, shape, classes, **network_conditioning(config, shape)).float()
    denoiser = build_denoiser(config, network)
    x = torch.randn(2, *shape, dtype=torch.float32)
    cond = {"labels": torch.tensor([0, classes])} if classes else {}  # a label and the null class
    if config.data.captions:  # text-only: a caption's token states and the null text
        cond = {"text": torch.randn(2, 5, 384), "text_null": torch.tensor([False, True])}
    with torch.no_grad():
        out = denoiser(x, torch.tensor([0.3, 0.9]), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the loss trains on the path the denoiser samples: the same alpha(t) and sigma(t)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    trained, sampled = build_loss(config).schedule(t), denoiser.schedule(t)
    assert torch.equal(trained.alpha, sampled.alpha) and torch.equal(trained.sigma, sampled.sigma)


@pytest.mark.parametrize("name", [name for name in PRESETS if preset(name).network.kind == "autoencoder"])
def test_every_autoencoder_preset_reconstructs_its_images_shape(name):
    config = preset(name)
    assert name == "emoji-ae" and config.data.resolution == 64
    torch.manual_seed(0)
    network = build_network(config.network, (3, 64, 64), 0).float()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        posterior = network.encode(x)
        out = network.decode(posterior.mode())
    assert posterior.mode().shape == (2, 4, 16, 16)  # f4, four latent channels
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_network_options_from_yaml_lists_become_tuples(monkeypatch):
    config = preset("mnist")
    assert config.network.options["channel_mult"] == [1, 2, 4] and config.network.options["attn_resolutions"] == [7]
    received, from_preset = {}, UNet.from_preset

    def recording(name, **options):
        received.update(options)
        return from_preset(name, **options)

    monkeypatch.setattr(UNet, "from_preset", recording)
    network = build_network(config.network, (1, 28, 28), 10)
    assert received["channel_mult"] == (1, 2, 4) and received["attn_resolutions"] == (7,)  # tuples, not lists
    assert network(torch.randn(1, 1, 28, 28), torch.zeros(1), {"labels": torch.tensor([3])}).shape == (1, 1, 28, 28)
