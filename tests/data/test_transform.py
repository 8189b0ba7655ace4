import numpy as np
import pytest
from PIL import Image

from diffusekit.data import ImageArrays, resize_arrays
from diffusekit.data.transform import resample_filter, to_channels


def _arrays(images):
    return ImageArrays(np.asarray(images, np.uint8), np.arange(len(images)), len(images), ())


def test_filter_rule():
    assert resample_filter(64, 32) == Image.BOX and resample_filter(72, 64) == Image.LANCZOS
    assert resample_filter(28, 32) == Image.BICUBIC


def test_pad_centres_on_black():
    mnist_like = _arrays(np.full((3, 28, 28, 1), 200))
    padded = resize_arrays(mnist_like, 32, mode="pad")
    assert padded.images.shape == (3, 32, 32, 1) and padded.labels.tolist() == [0, 1, 2]
    assert padded.images[:, 2:30, 2:30].min() == 200 and padded.images.sum() == 3 * 28 * 28 * 200
    with pytest.raises(ValueError, match="cannot pad 28x28 images to 16x16: use mode='resize'"):
        resize_arrays(mnist_like, 16, mode="pad")


def test_resize_and_channels():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 8, 8, 3))
    grey = resize_arrays(_arrays(rgb), 32, channels=1)
    assert grey.images.shape == (2, 32, 32, 1) and grey.images.dtype == np.uint8
    luma = np.asarray(Image.fromarray(rgb[0].astype(np.uint8)).convert("L"))
    assert np.array_equal(to_channels(rgb.astype(np.uint8), 1)[0, ..., 0], luma)
    back = resize_arrays(grey, channels=3).images
    assert back.shape == (2, 32, 32, 3) and (back == back[..., :1]).all()
    same = _arrays(rgb)
    assert resize_arrays(same).images is same.images and resize_arrays(same, 8).images is same.images
    with pytest.raises(ValueError, match="unknown mode 'crop'"):
        resize_arrays(same, 8, mode="crop")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        resize_arrays(same, channels=2)
