"""Feature statistics: streaming float64 mean and covariance, and the ``.npz`` files that hold them.

:class:`RunningStats` merges per-batch moments with Chan, Golub & LeVeque's parallel update (1979), so
features are never all held in memory and the covariance never suffers the cancellation of
``E[xx^T] - mu mu^T``. The covariance is the unbiased one (``n - 1``), as pytorch-fid's ``np.cov``.

A statistics file (``.npz``) holds ``mu`` and ``sigma`` (the keys pytorch-fid reads and writes, so files are
exchangeable with it), ``count``, optionally ``features`` (float32, for KID and precision/recall) and
``meta``: a JSON string with the dataset, split, resolution, count, extractor, preprocessing and its hash.
:func:`check_compatible` refuses to compare statistics taken with different extractors or preprocessing.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..errors import BadFileError, MissingFileError, UsageError

__all__ = ["RunningStats", "FeatureStats", "load_stats", "check_compatible", "is_stats_file", "open_npz", "FORMAT"]

FORMAT = "diffusekit-feature-stats/1"


class RunningStats:
    """Mean and covariance of feature batches added one at a time (float64 throughout)."""

    def __init__(self, dim: int, keep_features: bool = False):
        self.dim, self.count = int(dim), 0
        self.mean = np.zeros(dim, np.float64)
        self._m2 = np.zeros((dim, dim), np.float64)  # sum of outer products of deviations from the mean
        self._kept: list[np.ndarray] | None = [] if keep_features else None

    def update(self, features) -> None:
        x = np.asarray(features.cpu() if hasattr(features, "cpu") else features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be [N, {self.dim}], got shape {x.shape}")
        n = x.shape[0]
        if n == 0:
            return
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf (check the images fed to the extractor)")
        batch_mean = x.mean(0)
        centered = x - batch_mean
        batch_m2 = centered.T @ centered
        total = self.count + n
        delta = batch_mean - self.mean
        self._m2 += batch_m2 + np.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total
        if self._kept is not None:
            self._kept.append(x.astype(np.float32))

    @property
    def covariance(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return self._m2 / (self.count - 1)

    def finish(self, **meta) -> FeatureStats:
        features = np.concatenate(self._kept) if self._kept else None
        return FeatureStats(self.mean.copy(), self.covariance, self.count, features, {**meta, "count": self.count})


@dataclass
class FeatureStats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None  # float32 [count, dim] when kept
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_features(cls, features, **meta) -> FeatureStats:
        x = np.asarray(features, dtype=np.float64)
        stats = RunningStats(x.shape[1], keep_features=True)
        stats.update(x)
        return stats.finish(**meta)

    def save(self, path: str | Path, include_features: bool = True) -> Path:
        """Write atomically (temporary file, then rename): an interrupted write never leaves a torn file."""
        arrays = {"mu": self.mu, "sigma": self.sigma, "count": np.int64(self.count),
                  "meta": json.dumps({"format": FORMAT, **self.meta})}
        if include_features and self.features is not None:
            arrays["features"] = self.features.astype(np.float32)
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz")

    def describe(self) -> str:
        m = self.meta
        what = ", ".join(f"{k}={m[k]}" for k in ("dataset", "split", "resolution", "count", "extractor", "preprocess")
                         if m.get(k) is not None)
        return what or "no metadata (a foreign statistics file)"


def is_stats_file(path: str | Path) -> bool:
    """True for an ``.npz`` with ``mu`` and ``sigma`` (ours or pytorch-fid's)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    with open_npz(path) as f:
        return "mu" in f.files and "sigma" in f.files


@contextlib.contextmanager
def open_npz(path: str | Path):
    """``np.load`` of an ``.npz`` that never unpickles (a hostile file could run code): what numpy cannot read as
    plain arrays, here or while the arrays are read in the ``with`` block, raises :class:`BadFileError`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise BadFileError(f"{path} is a single .npy array, not an .npz file of named arrays")
            yield f
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise BadFileError(f"cannot read {path} as an .npz file: {e}") from None
    except ValueError as e:
        if isinstance(e, BadFileError) or "pickle" not in str(e):
            raise
        raise BadFileError(f"{path} holds pickled Python objects, which are never loaded (refused): .npz files "
                           "are read as plain arrays only") from None


def load_stats(path: str | Path) -> FeatureStats:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "mu" not in f.files or "sigma" not in f.files:
                raise BadFileError(f"{path} holds no feature statistics (no 'mu' and 'sigma' arrays)")
            meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            features = f["features"] if "features" in f.files else None
            count = int(f["count"]) if "count" in f.files else int(meta.get("count", 0))
    except (OSError, EOFError) as e:
        raise BadFileError(f"cannot read statistics file {path}: {e}") from None
    except ValueError as e:
        if "pickle" in str(e):  # numpy refuses object arrays and pickles when allow_pickle=False
            raise BadFileError(f"{path} holds pickled Python objects, which are never loaded (refused): "
                               "statistics files hold plain arrays only") from None
        raise
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise BadFileError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return FeatureStats(mu, sigma, count, features, meta)


def check_compatible(a: FeatureStats, b: FeatureStats, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise if both carry an extractor hash and the hashes differ (different network or preprocessing)."""
    ha, hb = a.meta.get("config_hash"), b.meta.get("config_hash")
    if ha and hb and ha != hb:
        raise UsageError(f"{names[0]} and {names[1]} were computed with different feature extractors or "
                         f"preprocessing ({a.describe()} vs {b.describe()}); recompute one of them with the other's "
                         "settings")
    if a.mu.shape != b.mu.shape:
        raise UsageError(f"{names[0]} has {a.mu.shape[0]}-d features, {names[1]} {b.mu.shape[0]}-d")
