"""Perceptual distances: SSIM against Wang et al.'s formula written out in numpy and its closed form on flat
images; the Inception feature distance's properties and its layer-size table against the network itself."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusekit.metrics.inception import inception_weights_path
from diffusekit.metrics.perceptual import (
    DEFAULT_INCEPTION_LAYERS,
    INCEPTION_LAYERS,
    MIN_SIZE,
    InceptionDistance,
    ms_ssim_distance,
    ssim_distance,
)
from tests import assets

K1, K2 = 0.01, 0.03


def _numpy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004, Eq. 13 with C1 = (K1 L)^2, C2 = (K2 L)^2, L = 1, an 11 x 11 Gaussian window of sigma 1.5
    (normalised to sum 1), local statistics over every position where the window fits, averaged (one channel)."""
    k = np.arange(11) - 5
    g = np.exp(-k ** 2 / (2 * 1.5 ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    pa = np.lib.stride_tricks.sliding_window_view(a, (11, 11))
    pb = np.lib.stride_tricks.sliding_window_view(b, (11, 11))
    mu_a, mu_b = (pa * window).sum((-2, -1)), (pb * window).sum((-2, -1))
    var_a = (pa ** 2 * window).sum((-2, -1)) - mu_a ** 2
    var_b = (pb ** 2 * window).sum((-2, -1)) - mu_b ** 2
    cov = (pa * pb * window).sum((-2, -1)) - mu_a * mu_b
    c1, c2 = K1 ** 2, K2 ** 2
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def test_ssim_of_an_image_with_itself_is_one():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(ssim_distance(x, x), torch.zeros(2), atol=1e-6, rtol=0)


def test_ssim_against_the_formula_written_out_in_numpy(float64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 13, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    a, b = ((x.numpy() + 1) / 2), ((y.numpy() + 1) / 2)  # images in [-1, 1] are compared in [0, 1]
    expected = [1 - np.mean([_numpy_ssim(a[i, c], b[i, c]) for c in range(3)]) for i in range(2)]
    # pytorch-msssim builds its window in float32: agreement to float32's precision, not float64's
    np.testing.assert_allclose(ssim_distance(x, y).numpy(), expected, rtol=1e-6)
    assert 0.1 < expected[0] < 0.9


def test_ssim_of_two_flat_images_is_the_luminance_term(float64):
    # No variance: the structure term is C2 / C2 = 1 and SSIM = (2 a b + C1) / (a^2 + b^2 + C1) in [0, 1] units.
    a, b = 0.2, 0.6
    x, y = torch.full((1, 1, 12, 12), 2 * a - 1), torch.full((1, 1, 12, 12), 2 * b - 1)
    expected = 1 - (2 * a * b + K1 ** 2) / (a ** 2 + b ** 2 + K1 ** 2)
    # pytorch-msssim's float32 window sums to 1 within ~1e-7, leaving a spurious variance of ~1e-8 beside C2 = 9e-4
    torch.testing.assert_close(ssim_distance(x, y), torch.tensor([expected]), rtol=1e-4, atol=0)


def test_ms_ssim_needs_161_pixels_and_is_zero_for_identical_images():
    with pytest.raises(ValueError, match="at least 161 x 161 pixels, got 64 x 64"):
        ms_ssim_distance(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64))
    x = torch.rand(1, 1, 161, 161) * 2 - 1
    assert ms_ssim_distance(x, x).abs().item() < 1e-6
    assert ms_ssim_distance(x, x.flip(-1)).item() > 0.1


def test_ssim_refuses_mismatched_or_tiny_images():
    with pytest.raises(ValueError, match="differ in shape"):
        ssim_distance(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 15))
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim_distance(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ssim_distance(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16))


# -- the Inception feature distance (loads the 87 MB FID network once) ------------------------------------------------
@pytest.fixture(scope="module")
def distance():
    assets.require_inception_weights()
    return InceptionDistance()


@pytest.fixture(scope="module")
def blocks(distance):
    """The TorchScript file's top-level blocks by name, read independently of InceptionDistance."""
    with warnings.catch_warnings():  # torch >= 2.9 flags jit.load as deprecated; the file is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        return dict(torch.jit.load(str(inception_weights_path())).net.layers.named_children())


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-4, 5, dtype=x.dtype)
    g = torch.exp(-k ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (4, 4, 0, 0), mode="reflect"), g.view(1, 1, 1, 9).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 4, 4), mode="reflect"), g.view(1, 1, 9, 1).repeat(c, 1, 1, 1), groups=c)


def _smooth_images(n: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) \
        + 0.2 * torch.randn(n, 3, size, size, generator=g)


def test_inception_distance_is_zero_symmetric_and_grows_with_blur(distance):
    x = _smooth_images(2, 48)
    torch.testing.assert_close(distance(x, x), torch.zeros(2), atol=0, rtol=0)
    y = _blur(x, 1.0)
    torch.testing.assert_close(distance(x, y), distance(y, x), rtol=1e-5, atol=0)
    d = torch.stack([distance(x, _blur(x, sigma)) for sigma in (0.5, 1.0, 2.0, 4.0)])
    assert (d[1:] > d[:-1]).all(), d
    # Each layer adds at most mean ||u - v||^2 = 4 for unit vectors u, v.
    assert (d > 0).all() and (d <= 4 * len(DEFAULT_INCEPTION_LAYERS)).all()
    grey = x[:, :1]
    torch.testing.assert_close(distance(grey, _blur(grey, 1.0)),
                               distance(grey.repeat(1, 3, 1, 1), _blur(grey, 1.0).repeat(1, 3, 1, 1)))


def test_inception_distance_is_the_unit_normalised_feature_difference(blocks):
    # Written out for one layer from the TorchScript file's own blocks.
    x, y = _smooth_images(2, 32), _blur(_smooth_images(2, 32), 1.0)
    one = InceptionDistance(layers=("conv_4",))
    fx, fy = x, y
    for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4"):
        fx, fy = blocks[name](fx), blocks[name](fy)
    ux = fx / fx.norm(dim=1, keepdim=True)
    uy = fy / fy.norm(dim=1, keepdim=True)
    expected = ((ux - uy) ** 2).sum(1).mean((1, 2))
    torch.testing.assert_close(one(x, y), expected, rtol=1e-5, atol=1e-7)


def test_inception_distance_passes_gradients_to_the_reconstruction_only(distance):
    x = _smooth_images(1, 48)
    y = _blur(x, 1.0).requires_grad_()
    distance(x, y).sum().backward()
    assert y.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in distance.parameters())


def test_min_size_table_matches_the_network(blocks):
    for layer in ("conv_2", "conv_4", "mixed_2", "mixed_7", "mixed_8"):
        for size, fits in ((MIN_SIZE[layer], True), (MIN_SIZE[layer] - 1, False)):
            x = torch.zeros(1, 3, size, size)
            try:
                for name in INCEPTION_LAYERS[:INCEPTION_LAYERS.index(layer) + 1]:
                    x = blocks[name](x)
                ok = x.numel() > 0
            except RuntimeError:
                ok = False
            assert ok == fits, (layer, size)


def test_inception_distance_refuses_small_images_and_unknown_layers(distance):
    with pytest.raises(ValueError, match="at least 43 x 43 pixels, got 32 x 32"):
        distance(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown Inception layer"):
        InceptionDistance(layers=("relu5_3",))
