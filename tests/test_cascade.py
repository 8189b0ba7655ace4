"""Cascade conditioning: box downsampling, the noise-augmentation path, training and sampling conditions."""

import math

import pytest
import torch

from diffusekit.cascade import (
    CascadeSettings,
    downsample,
    noise_augment,
    sampling_condition,
    training_condition,
    upsample,
)


def test_downsample_is_the_block_mean_and_upsample_restores_constants():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    torch.testing.assert_close(upsample(torch.full((2, 3, 7, 7), 0.3), 14), torch.full((2, 3, 14, 14), 0.3))
    with pytest.raises(ValueError, match="must divide"):
        downsample(torch.zeros(1, 1, 28, 28), 10)


def test_noise_augmentation_has_the_cosine_path_statistics():
    low = torch.full((4000, 1, 2, 2), 0.5)
    level = torch.full((4000,), 0.5, dtype=torch.float64)
    out = noise_augment(low, level, torch.Generator().manual_seed(0))
    alpha = math.cos(math.pi / 2 * (0.5 + 0.008) / 1.008) / math.cos(math.pi / 2 * 0.008 / 1.008)
    sigma = math.sqrt(1 - alpha**2)
    assert out.mean().item() == pytest.approx(0.5 * alpha, abs=4 * sigma / math.sqrt(16000))
    assert out.std().item() == pytest.approx(sigma, rel=0.03)
    assert torch.equal(noise_augment(low[:3], torch.zeros(3, dtype=torch.float64), None), low[:3])  # s = 0: clean


def test_sampling_level_has_the_requested_snr_and_conditions_reproduce_by_index():
    settings = CascadeSettings(7, sample_snr=4.0)
    from diffusekit.schedules import Cosine

    at = Cosine()(torch.tensor(settings.sample_level, dtype=torch.float64))
    assert float(at.alpha**2 / at.sigma**2) == pytest.approx(4.0, rel=1e-9)
    low = torch.rand(6, 1, 7, 7) * 2 - 1
    whole = sampling_condition(low, settings, 14, seed=3)
    part = sampling_condition(low[4:], settings, 14, seed=3, first=4)
    torch.testing.assert_close(whole["image"][4:], part["image"])
    assert whole["image"].shape == (6, 1, 14, 14) and whole["aug_level"].shape == (6,)
    clean = sampling_condition(low, CascadeSettings(7, noise_aug=False), 14)
    assert set(clean) == {"image"}
    torch.testing.assert_close(clean["image"], upsample(low, 14))
    with pytest.raises(ValueError, match="conditioned on 7x7"):
        sampling_condition(torch.zeros(1, 1, 14, 14), settings, 28)


def test_training_condition_levels_and_shapes():
    x0 = torch.rand(500, 1, 14, 14) * 2 - 1
    cond = training_condition(x0, CascadeSettings(7, aug_max=0.3), torch.Generator().manual_seed(0))
    assert cond["image"].shape == x0.shape
    assert 0 <= cond["aug_level"].min() and cond["aug_level"].max() <= 0.3 and cond["aug_level"].std() > 0.05
    clean = training_condition(x0, CascadeSettings(7, noise_aug=False), None)
    torch.testing.assert_close(clean["image"], upsample(downsample(x0, 7), 14))


@pytest.mark.parametrize("kwargs, message", [
    ({"low_resolution": 0}, "low resolution must be >= 1"),
    ({"low_resolution": 7, "aug_max": 0.0}, "aug_max must be in"),
    ({"low_resolution": 7, "sample_snr": -1.0}, "SNR must be > 0"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CascadeSettings(**kwargs)
