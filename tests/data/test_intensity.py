import dataclasses

import numpy as np
import pytest
import torch

from diffusekit.config import Config, ConfigError, apply_override, parse_override, validate
from diffusekit.data import ImageArrays
from diffusekit.data.intensity import check_intensity, intensity_levels, mean_brightness, random_intensity


def _digits(n: int, size: int = 8, channels: int = 1) -> ImageArrays:
    """MNIST-like: black background, a white square covering 1/4 of the image."""
    images = np.zeros((n, size, size, channels), np.uint8)
    images[:, : size // 2, : size // 2] = 255
    return ImageArrays(images, np.arange(n) % 10, 10, tuple(str(d) for d in range(10)))


def test_levels_are_a_function_of_the_index_alone():
    first = intensity_levels(np.arange(1000), -1.0, 0.8)
    assert np.array_equal(first, intensity_levels(np.arange(1000), -1.0, 0.8))
    # a subset (data.limit, a shard, a resumed run) sees the same level for the same image
    assert np.array_equal(intensity_levels(np.array([7, 3, 999]), -1.0, 0.8), first[[7, 3, 999]])
    # and drawing them touches no global random state (the trainer's draws stay where they were)
    state = torch.random.get_rng_state()
    random_intensity(_digits(16), [-1, 0.8])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (first >= -1.0).all() and (first < 0.8).all()
    assert len(np.unique(first)) == 1000


def test_levels_are_uniform():
    u = (intensity_levels(np.arange(100_000), -1.0, 1.0) + 1) / 2
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.abs(counts / 10_000 - 1).max() < 0.05
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # neighbouring indices are not correlated


def test_transform_formula_shapes_and_dtypes():
    data = _digits(200, channels=3)
    out = random_intensity(data, [-1.0, 0.8, 0.5])
    assert out.images.shape == data.images.shape and out.images.dtype == np.uint8
    assert out.labels is data.labels and out.num_classes == 10 and out.class_names == data.class_names
    level = intensity_levels(np.arange(200), -1.0, 0.8)
    x = out.images.astype(np.float64) / 127.5 - 1
    # background (x = -1) at the level, white (x = +1) at level + contrast, clipped to [-1, 1]
    assert np.allclose(x[:, -1, -1, 0], level, atol=1 / 127.5)
    assert np.allclose(x[:, 0, 0, 0], np.minimum(level + 0.5, 1.0), atol=1 / 127.5)
    assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()  # a global (grey) intensity
    # identity and None
    assert np.array_equal(random_intensity(data, [-1, -1, 2]).images, data.images)
    assert random_intensity(data, None) is data
    # explicit indices: the images of a split's slice [100, 200) get the levels of those indices
    part = ImageArrays(data.images[100:], data.labels[100:], 10, data.class_names)
    assert np.array_equal(random_intensity(part, [-1, 0.8, 0.5], indices=np.arange(100, 200)).images,
                          out.images[100:])
    with pytest.raises(ValueError, match="one index per image"):
        random_intensity(part, [-1, 0.8], indices=np.arange(5))


def test_mean_brightness_spreads_from_dark_to_bright():
    data = _digits(2000, size=16)
    before = mean_brightness(data.images)
    assert np.allclose(before, -0.5)  # 1/4 white on black
    after = mean_brightness(random_intensity(data, [-1.0, 0.8]).images)
    # 3/4 background at the level, 1/4 white at level + 1, clipped at 1
    level = intensity_levels(np.arange(2000), -1.0, 0.8)
    assert np.allclose(after, 0.75 * level + 0.25 * np.minimum(level + 1, 1), atol=1 / 127.5)
    assert after.min() < -0.74 and after.max() > 0.84  # from dark to bright, not the constant -0.5
    assert np.quantile(after, 0.1) < -0.5 and np.quantile(after, 0.9) > 0.6
    assert 0.4 < after.std() < 0.55
    # float images in [-1, 1] (samples) give the same numbers as their uint8 form
    x = data.images.astype(np.float64) / 127.5 - 1
    assert np.allclose(mean_brightness(x), before)


@pytest.mark.parametrize("bad, message", [
    ([0.5, -0.5], "low <= high"),
    ([-1.5, 0.5], "low <= high"),
    ([-1, 1.2], "low <= high"),
    ([-1, 0.5, 0.0], r"contrast .* \(0, 2\]"),
    ([-1, 0.5, 2.5], r"contrast .* \(0, 2\]"),
    ([0.5], r"\[low, high\]"),
    ([0, 0.1, 1, 2], r"\[low, high\]"),
    ([True, 0.5], r"\[low, high\]"),
])
def test_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        check_intensity(bad)
    with pytest.raises(ValueError, match=message):
        random_intensity(_digits(2), bad)
    config = Config()
    bad_config = dataclasses.replace(config, data=dataclasses.replace(config.data, intensity=bad))
    with pytest.raises(ConfigError, match=rf"data.intensity: .*{message}"):
        validate(bad_config)


def test_config_key():
    assert Config().data.intensity is None
    keys, value = parse_override("data.intensity=[-1, 0.8]")
    config = validate(apply_override(Config(), keys, value))
    assert config.data.intensity == [-1.0, 0.8]
    keys, value = parse_override("data.intensity=[-1, 0.8, 0.5]")
    assert validate(apply_override(Config(), keys, value)).data.intensity == [-1.0, 0.8, 0.5]
    with pytest.raises(ConfigError, match="data.intensity"):
        apply_override(Config(), *parse_override("data.intensity=bright"))


def test_applied_once_at_load_time():
    from diffusekit.config import DataConfig
    from diffusekit.data import load, load_training_data, resize_arrays

    plain = load_training_data(DataConfig(name="mnist", limit=64, resolution=16))
    bright = load_training_data(DataConfig(name="mnist", limit=64, resolution=16, intensity=[-1.0, 0.8]))
    assert bright.images.shape == plain.images.shape == (64, 16, 16, 1) and bright.images.dtype == np.uint8
    assert np.array_equal(bright.images, random_intensity(plain, [-1.0, 0.8]).images)
    assert np.array_equal(bright.labels, plain.labels)
    # image i keeps its level whatever the limit
    more = load_training_data(DataConfig(name="mnist", limit=128, resolution=16, intensity=[-1.0, 0.8]))
    assert np.array_equal(more.images[:64], bright.images)
    # the whole split (no limit: loaded at size in one go) agrees too
    full = random_intensity(resize_arrays(load("mnist", "test"), 16), [-1.0, 0.8])
    test = load_training_data(DataConfig(name="mnist", split="test", resolution=16, intensity=[-1.0, 0.8]))
    assert np.array_equal(full.images, test.images)
