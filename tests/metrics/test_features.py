import numpy as np
import pytest

from diffusekit.data import open_dataset
from diffusekit.errors import UsageError
from diffusekit.metrics.features import dataset_reference_stats

pytest.importorskip("sklearn")  # the 8x8 digits ship with scikit-learn


class RowMeans:
    """A stand-in feature extractor: one feature per image row, its mean grey level."""

    name, config_hash, dim = "row-means", "row-means", 8

    def __call__(self, batch):
        return batch.double().mean(dim=(1, 3))

    def describe(self) -> dict:
        return {"extractor": self.name, "config_hash": self.config_hash}


def row_means(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64).mean(axis=(2, 3))


def test_a_slice_from_start_has_the_statistics_of_exactly_those_images():
    images = open_dataset("digits").images  # NHWC uint8
    stats = dataset_reference_stats(RowMeans(), "digits", "train", 40, start=100, cache=False)
    expected = row_means(images[100:140])
    assert stats.count == 40
    np.testing.assert_allclose(stats.mu, expected.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(expected, rowvar=False), rtol=1e-10, atol=1e-12)
    assert stats.meta["split"] == "train[100:140]"


def test_the_default_start_keeps_the_first_images_and_the_plain_split_label():
    images = open_dataset("digits").images
    stats = dataset_reference_stats(RowMeans(), "digits", "train", 30, cache=False)
    np.testing.assert_allclose(stats.mu, row_means(images[:30]).mean(axis=0), rtol=1e-12)
    assert stats.meta["split"] == "train"


def test_a_slice_past_the_end_is_refused_by_name():
    size = len(open_dataset("digits"))
    with pytest.raises(UsageError, match=rf"count must be in 2..10 .*starting at {size - 10}"):
        dataset_reference_stats(RowMeans(), "digits", "train", 11, start=size - 10, cache=False)
    with pytest.raises(UsageError, match="start must be in"):
        dataset_reference_stats(RowMeans(), "digits", "train", 2, start=size, cache=False)
