"""The idx format of MNIST and Fashion-MNIST (LeCun et al.): a magic number, the dimensions, raw bytes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import BadFileError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped or not) into an array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise BadFileError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    payload = data[4 + 4 * ndim:]
    if len(payload) != expected:
        raise BadFileError(f"{path} is truncated or corrupt: {len(payload)} bytes of data, expected {expected}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)
