from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusekit.data import load
from diffusekit.metrics.memorization import (
    MemorizationResult,
    memorization_check,
    nearest_neighbours,
    write_memorization_grid,
)


def _brute_force(q: torch.Tensor, r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cdist(q.reshape(len(q), -1).double(), r.reshape(len(r), -1).double())
    return d.topk(k, dim=1, largest=False, sorted=True)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [7, 1000])  # 7: smaller than Q and R, and R = 53 is not a multiple of it
def test_nearest_neighbours_matches_brute_force(k, batch_size):
    g = torch.Generator().manual_seed(k)
    q, r = torch.randn(37, 3, 2, 2, generator=g), torch.randn(53, 3, 2, 2, generator=g)
    distances, indices = nearest_neighbours(q, r, k=k, batch_size=batch_size)
    expected_d, expected_i = _brute_force(q, r, k)
    assert distances.dtype == torch.float64 and indices.dtype == torch.int64
    assert distances.shape == indices.shape == (37, k)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(distances, expected_d, rtol=1e-10, atol=1e-10)
    assert (distances[:, 1:] >= distances[:, :-1]).all()


def test_nearest_neighbours_uint8_float32_and_numpy():
    rng = np.random.default_rng(0)
    q, r = rng.integers(0, 256, (20, 5, 5, 1), dtype=np.uint8), rng.integers(0, 256, (30, 5, 5, 1), dtype=np.uint8)
    expected_d, expected_i = _brute_force(torch.from_numpy(q), torch.from_numpy(r), 3)
    r.flags.writeable = False  # as the built-in datasets' arrays are
    for args in [(q, r), (torch.from_numpy(q), torch.from_numpy(r.copy()))]:
        distances, indices = nearest_neighbours(*args, k=3, batch_size=8)
        # uint8 inputs: squared distances are exact integers in float64
        assert torch.equal(distances.square().round(), expected_d.square().round())
        assert torch.equal(indices, expected_i)
    x32 = torch.from_numpy(q).float()
    distances, indices = nearest_neighbours(x32, torch.from_numpy(r.copy()).float(), k=3)
    assert distances.dtype == torch.float64 and torch.equal(indices, expected_i)


def test_nearest_neighbours_bad_input():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="different sizes per item"):
        nearest_neighbours(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="k must be between 1 and the number of references"):
        nearest_neighbours(x, x, k=5)
    with pytest.raises(ValueError, match="batch_size"):
        nearest_neighbours(x, x, batch_size=0)


def test_exact_copy_duplicates_and_ties():
    rng = np.random.default_rng(1)
    training = rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    training[7] = training[3]  # a duplicated training image
    samples = np.stack([training[5], training[3], rng.integers(0, 256, (1, 4, 4), dtype=np.uint8)])
    result = memorization_check(samples, training)
    # an exact copy: d1 = 0, ratio 0, flagged
    assert result.distances[0, 0] == 0 and result.indices[0, 0] == 5 and result.ratio[0] == 0
    # a copy of a duplicated image: 0 / 0 is treated as ratio 0, i.e. still flagged as a copy
    assert torch.equal(result.distances[1], torch.zeros(2, dtype=torch.float64))
    assert set(result.indices[1].tolist()) == {3, 7} and result.ratio[1] == 0
    assert result.flagged.tolist() == [True, True, False]
    assert result.fraction == pytest.approx(2 / 3)
    # a tie at a positive distance: ratio 1, not flagged
    tie = memorization_check(torch.tensor([[1.0]]), torch.tensor([[0.0], [2.0]]), space="toy")
    assert tie.ratio.tolist() == [1.0] and not tie.flagged.any() and tie.space == "toy"


def test_pixel_scale_and_layout():
    training = np.zeros((3, 1, 2, 2), np.uint8)
    training[1, 0, 0, 0] = 255
    training[2] = 255
    result = memorization_check(np.zeros((1, 1, 2, 2), np.uint8), training)
    # uint8 pixels are compared on the [0, 1] scale
    assert result.distances.tolist() == [[0.0, 1.0]] and result.indices.tolist() == [[0, 1]]
    # NHWC and NCHW give the same answer, as long as both sides share the layout
    rng = np.random.default_rng(2)
    nchw, train = rng.integers(0, 256, (6, 3, 4, 5), dtype=np.uint8), rng.integers(0, 256, (9, 3, 4, 5), dtype=np.uint8)
    a = memorization_check(nchw, train)
    b = memorization_check(nchw.transpose(0, 2, 3, 1), train.transpose(0, 2, 3, 1))
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.ratio, b.ratio)


def test_summary_is_json_ready():
    result = memorization_check(torch.tensor([[0.0], [0.9], [2.0]]), torch.tensor([[0.0], [1.0], [3.1]]))
    summary = json.loads(json.dumps(result.summary()))
    assert summary["space"] == "pixel" and summary["n"] == 3 and summary["flagged"] == 2
    assert summary["threshold"] == pytest.approx(1 / 3) and summary["fraction"] == pytest.approx(2 / 3)
    assert summary["ratio_quantiles"]["min"] == 0.0 and set(summary["ratio_quantiles"]) == {"min", "p05", "p50", "p95"}
    assert summary["ratio_quantiles"]["p50"] == pytest.approx(0.1 / 0.9)


def test_memorization_check_bad_input():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="different shapes"):
        memorization_check(torch.zeros(4, 1, 28, 28), torch.zeros(4, 28, 28, 1))
    with pytest.raises(ValueError, match="at least 2 training items"):
        memorization_check(x, x[:1])
    with pytest.raises(ValueError, match="no samples"):
        memorization_check(x[:0], x)
    for threshold in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
            memorization_check(x, x, threshold=threshold)
    with pytest.raises(ValueError, match="uint8"):
        memorization_check(x.to(torch.uint8), x)
    assert memorization_check(x, x + 1, threshold=1.0).threshold == 1.0


# Acceptance check on real data: the first 5000 MNIST training digits are the training set.


@pytest.fixture(scope="module")
def mnist():
    return load("mnist", "train").images[:5000], load("mnist", "test").images  # uint8 NHWC


@pytest.mark.parametrize("sigma", [4, 8])
def test_perturbed_training_copies_are_flagged(mnist, sigma):
    # A "generator" that returns training images with Gaussian pixel noise (sigma uint8 levels on every pixel,
    # rounded and clipped to [0, 255]): visually the same digits, no pixel left exactly as it was.
    training, _ = mnist
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(training), 200, replace=False)
    noise = np.rint(rng.normal(0, sigma, (200, *training.shape[1:])))
    samples = np.clip(training[chosen] + noise, 0, 255).astype(np.uint8)
    result = memorization_check(samples, training)
    print(f"perturbed copies (noise sigma {sigma}):", result.summary())
    assert result.fraction >= 0.95
    # the flagged ones point at the image they were made from
    assert torch.equal(result.indices[result.flagged, 0], torch.from_numpy(chosen)[result.flagged])


def test_fresh_test_digits_are_not_flagged(mnist):
    training, test = mnist
    result = memorization_check(test[:200], training)
    print("fresh test digits:", result.summary())
    assert result.fraction <= 0.05


def _fft_features(images: np.ndarray) -> np.ndarray:
    """|2-D Fourier transform|: unchanged by circular shifts (np.roll) of the image."""
    return np.abs(np.fft.rfft2(images[..., 0] / 255.0)).reshape(len(images), -1)


def test_shifted_copies_need_a_shift_invariant_feature_space(mnist):
    # Pixel distances are not shift-invariant: a training digit moved by one pixel is not flagged in pixel space
    # (its nearest neighbours are other digits at similar distances). A shift-invariant feature space catches it,
    # and still does not flag fresh digits.
    training, test = mnist
    rng = np.random.default_rng(0)
    shifted = np.roll(training[rng.choice(len(training), 200, replace=False)], 1, axis=2)  # MNIST borders are 0
    pixel = memorization_check(shifted, training)
    print("shifted copies, pixels:", pixel.summary())
    assert pixel.fraction <= 0.05
    features = _fft_features(training)
    feature = memorization_check(_fft_features(shifted), features, space="fft-magnitude")
    fresh = memorization_check(_fft_features(test[:200]), features, space="fft-magnitude")
    print("shifted copies, |FFT|:", feature.summary(), "fresh digits, |FFT|:", fresh.summary())
    assert feature.space == "fft-magnitude" and feature.fraction >= 0.95 and fresh.fraction <= 0.05


# The grid of flagged samples beside their neighbours.


def _toy_result(flagged: list[bool], ratio: list[float]) -> MemorizationResult:
    n = len(flagged)
    indices = torch.tensor([[(2 * i) % 5, (2 * i + 1) % 5] for i in range(n)])
    return MemorizationResult("pixel", 1 / 3, torch.tensor(ratio, dtype=torch.float64),
                              torch.zeros(n, 2, dtype=torch.float64), indices, torch.tensor(flagged))


@pytest.mark.parametrize("channels", [1, 3])
def test_grid_rows_columns_and_order(tmp_path, channels):
    rng = np.random.default_rng(3)
    samples = rng.integers(0, 256, (4, channels, 6, 5), dtype=np.uint8)
    training = torch.from_numpy(rng.integers(0, 256, (5, channels, 6, 5), dtype=np.uint8))
    result = _toy_result([True, False, True, True], [0.2, 0.9, 0.05, 0.3])
    path = write_memorization_grid(tmp_path / "grid.png", result, samples, training)
    assert path == tmp_path / "grid.png" and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]
    grid = np.asarray(Image.open(path))
    grid = grid[..., None] if grid.ndim == 2 else grid
    assert grid.shape == (3 * (6 + 2) + 2, 3 * (5 + 2) + 2, channels)  # 3 flagged rows, sample + 2 neighbours
    tile = lambda row, col: grid[2 + row * 8:8 + row * 8, 2 + col * 7:7 + col * 7]  # noqa: E731
    # most copied first: sample 2 (ratio 0.05), then 0, then 3; each followed by its neighbours
    for row, i in enumerate([2, 0, 3]):
        assert np.array_equal(tile(row, 0), samples[i].transpose(1, 2, 0))
        for col, j in enumerate(result.indices[i].tolist(), start=1):
            assert np.array_equal(tile(row, col), training[j].permute(1, 2, 0).numpy())
    # at most max_rows rows and `neighbours` neighbours; NHWC images are accepted
    path = write_memorization_grid(tmp_path / "small.png", result, samples.transpose(0, 2, 3, 1),
                                   training.permute(0, 2, 3, 1), neighbours=1, max_rows=2)
    assert Image.open(path).size == (2 * (5 + 2) + 2, 2 * (6 + 2) + 2)  # PIL: (width, height)
    # only_flagged=False: the smallest ratios whether flagged or not, so sample 1 (0.9, not flagged) comes last
    path = write_memorization_grid(tmp_path / "nearest.png", result, samples, training, only_flagged=False)
    grid = np.asarray(Image.open(path))
    grid = grid[..., None] if grid.ndim == 2 else grid
    assert grid.shape == (4 * (6 + 2) + 2, 3 * (5 + 2) + 2, channels)
    for row, i in enumerate([2, 0, 3, 1]):
        assert np.array_equal(tile(row, 0), samples[i].transpose(1, 2, 0))


def test_grid_nothing_flagged_writes_nothing(tmp_path):
    images = np.zeros((2, 1, 4, 4), np.uint8)
    result = _toy_result([False, False], [0.5, 1.0])
    assert write_memorization_grid(tmp_path / "grid.png", result, images, np.zeros((5, 1, 4, 4), np.uint8)) is None
    assert list(tmp_path.iterdir()) == []
    assert write_memorization_grid(tmp_path / "nearest.png", result, images, np.zeros((5, 1, 4, 4), np.uint8),
                                   only_flagged=False, max_rows=1) == tmp_path / "nearest.png"
    assert Image.open(tmp_path / "nearest.png").size == (3 * (4 + 2) + 2, 4 + 2 + 2)  # one row: the smallest ratio
    (tmp_path / "nearest.png").unlink()
    with pytest.raises(ValueError, match="neighbours must be between 1 and 2"):
        write_memorization_grid(tmp_path / "grid.png", result, images, images, neighbours=3)
    with pytest.raises(ValueError, match="2 samples but 3 sample images"):
        write_memorization_grid(tmp_path / "grid.png", _toy_result([True, False], [0.1, 1.0]),
                                np.zeros((3, 1, 4, 4), np.uint8), np.zeros((5, 1, 4, 4), np.uint8))
