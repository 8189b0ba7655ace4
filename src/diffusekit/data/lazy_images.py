"""Image arrays that are not held in memory: read on demand, indexed like a uint8 ``[N, H, W, C]`` array.

They stand in for :attr:`ImageArrays.images`: ``shape``, ``len`` and indexing by an integer, a slice or an index
array (the rows come back as a new uint8 array) are all :meth:`ImageArrays.tensors`, the batch stream and its
DataLoader workers use. They pickle without their open files, so each worker process reopens them.

- :class:`FlippedImages`: EDM's x-flips (Karras et al. 2022): twice the images, image ``i + N`` is image ``i``
  mirrored left to right. Deterministic in the index, so a resumed run reads the same pixels.
- :class:`StreamImages`: a folder's files decoded at each read. A file that passed the header check but fails
  to decode is replaced by the next image (in index order) of the same label, else the next image; this
  happens in every process that reads it, the same way each time, and is warned about once per process.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .folder_files import DECODE_ERRORS, TooSmall, read_image
from .folder_transform import FolderTransform

__all__ = ["FlippedImages", "LazyImages", "StreamImages"]


class LazyImages:
    """Base class: subclasses set ``shape`` and implement ``_gather(indices) -> uint8 [n, H, W, C]``."""

    dtype = np.dtype(np.uint8)
    ndim = 4
    shape: tuple[int, int, int, int]

    def __len__(self) -> int:
        return self.shape[0]

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        indices = np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise IndexError(f"{type(self).__name__} takes an integer, a slice or a 1-d index array")
        indices = np.where(indices < 0, indices + len(self), indices).astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        if not indices.size:
            return np.zeros((0, *self.shape[1:]), np.uint8)
        return self._gather(indices)

    def __array__(self, dtype=None, copy=None):
        """Every image read into memory (for small uses such as statistics of a few thousand images)."""
        array = self[:]
        return array if dtype is None else array.astype(dtype)


class FlippedImages(LazyImages):
    """``images`` followed by the same images mirrored left to right (``images`` any array or LazyImages)."""

    def __init__(self, images):
        self.images = images
        self.shape = (2 * len(images), *tuple(images.shape[1:]))

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        n = len(self.images)
        out = np.array(self.images[indices % n], dtype=np.uint8)  # a copy: the flip writes into it
        flip = indices >= n
        out[flip] = out[flip, :, ::-1]
        return out


class StreamImages(LazyImages):
    """The files ``files`` decoded by ``transform`` at each read (module docstring); ``keys``: their relative
    paths (random crops), ``labels``: what a failing file's replacement matches."""

    def __init__(self, files: list[Path], keys: list[str], labels: np.ndarray, transform: FolderTransform):
        self.files, self.keys, self.labels, self.transform = list(files), list(keys), np.asarray(labels), transform
        r = transform.resolution
        self.shape = (len(self.files), r, r, transform.channels)
        self._failed: set[int] = set()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_failed"] = set()  # each process finds and warns on its own
        return state

    def _decode(self, index: int) -> np.ndarray | None:
        if index in self._failed:
            return None
        try:
            return read_image(self.files[index], 0, transform=self.transform, key=self.keys[index])
        except (TooSmall, *DECODE_ERRORS):
            self._failed.add(index)
            if len(self._failed) == 1:
                warnings.warn(f"{self.files[index]} could not be decoded; it and any later such file are replaced "
                              "by the next image of the same label (see data.storage: cache, which finds them all "
                              "up front)", stacklevel=4)
            return None

    def replacement(self, index: int) -> int:
        """The image read in place of a failing ``index``: the next one (cyclically) of its label that decodes."""
        n = len(self.files)
        order = [(index + k) % n for k in range(1, n)]
        same = [j for j in order if self.labels[j] == self.labels[index]]
        for j in same + [j for j in order if self.labels[j] != self.labels[index]]:
            if j not in self._failed and self._decode(j) is not None:
                return j
        raise RuntimeError(f"no image of {self.files[0].parent} can be decoded any more")

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        for row, index in enumerate(indices.tolist()):
            image = self._decode(index)
            if image is None:
                image = self._decode(self.replacement(index))
            out[row] = image
        return out

    @property
    def failures(self) -> int:
        """Files found undecodable by this process so far."""
        return len(self._failed)
