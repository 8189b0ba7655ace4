import pytest
import torch

from diffusekit.config import PRESETS, preset
from diffusekit.training.build import build_denoiser, build_loss, build_network

# (channels, resolution, classes) each preset's data has after its resize settings
SHAPES = {"tiny": (1, 16, 10), "mnist": (1, 28, 10), "fashion-mnist": (1, 32, 10), "tiles": (3, 32, 4),
          "mnist-dit": (1, 32, 10)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_a_working_denoiser(name):
    config = preset(name)
    channels, resolution, classes = SHAPES[name]
    if config.data.resolution is not None:
        assert config.data.resolution == resolution
    torch.manual_seed(0)
    network = build_network(config.network, (channels, resolution, resolution), classes).float()
    denoiser = build_denoiser(config, network)
    x = torch.randn(2, channels, resolution, resolution, dtype=torch.float32)
    with torch.no_grad():
        out = denoiser(x, torch.tensor([0.3, 0.9]), torch.tensor([0, classes]))  # a label and the null class
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert build_loss(config).schedule is not None


def test_network_options_from_yaml_lists_become_tuples():
    config = preset("mnist")
    assert isinstance(config.network.options["channel_mult"], list)
    network = build_network(config.network, (1, 28, 28), 10)
    assert network(torch.randn(1, 1, 28, 28), torch.zeros(1), torch.tensor([3])).shape == (1, 1, 28, 28)
