import gzip
import struct

import numpy as np
import pytest

from diffusekit.data import load
from diffusekit.data.builtin import DatasetNotInstalled, fashion_mnist
from diffusekit.data.idx import read_idx


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_is_the_full_dataset():
    train, test = load("mnist", "train"), load("mnist", "test")
    assert train.images.shape == (60_000, 28, 28, 1) and test.images.shape == (10_000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and np.bincount(train.labels).tolist()[1] == 6742  # ones in MNIST train
    x, y = train.tensors([0, 1])
    assert x.shape == (2, 1, 28, 28) and float(x.min()) >= -1 and float(x.max()) <= 1 and y.tolist() == [5, 0]


def test_fashion_mnist_from_a_directory(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    data = fashion_mnist("test", root=tmp_path)
    assert data.images.shape == (5, 28, 28, 1) and data.class_names[9] == "Ankle boot"


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(DatasetNotInstalled, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; built-in datasets: mnist"):
        load("cifar10")


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "bad-idx.gz"
    _write_idx(path, np.zeros((4, 3, 3)))
    with gzip.open(path) as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(plain)
