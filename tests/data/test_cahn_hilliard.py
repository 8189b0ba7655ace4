import csv
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from diffusekit.data import cahn_hilliard
from diffusekit.data.cahn_hilliard import CAHN_HILLIARD_TEST_SIMULATIONS, read_simulation
from diffusekit.errors import BadFileError, UsageError

from ..assets import require_cahn_hilliard


def _write_simulation(directory, index, snapshots, energies, names=None):
    names = names or [f"{k:05d}.png" for k in range(len(snapshots))]
    with zipfile.ZipFile(directory / f"images_{index}.zip", "w") as archive:
        for name, snapshot in zip(names, snapshots, strict=True):
            buffer = io.BytesIO()
            Image.fromarray(snapshot).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())
    with open(directory / f"labels_{index}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filenames", "energy"])
        writer.writerows(zip([f"{k:05d}.png" for k in range(len(energies))], energies, strict=True))


def test_snapshots_are_put_in_order_of_falling_energy(tmp_path):
    snapshots = [np.full((64, 64), value, np.uint8) for value in (30, 10, 20)]
    _write_simulation(tmp_path, 0, snapshots, [5.0, 9.5, 7.25])
    frames, energies = read_simulation(0, root=tmp_path)
    assert frames[:, 0, 0].tolist() == [10, 20, 30] and energies.tolist() == [9.5, 7.25, 5.0]
    _write_simulation(tmp_path, 1, snapshots, [1.0, 2.0, 3.0], names=["a.png", "b.png", "c.png"])
    with pytest.raises(BadFileError, match="name different files"):
        read_simulation(1, root=tmp_path)
    with pytest.raises(UsageError, match="unknown split 'val'"):
        cahn_hilliard("val", root=tmp_path)


def test_clips_longer_than_a_simulation_are_refused(tmp_path):
    for index in CAHN_HILLIARD_TEST_SIMULATIONS:
        _write_simulation(tmp_path, index, [np.full((64, 64), v, np.uint8) for v in range(5)], [5, 4, 3, 2, 1])
    assert cahn_hilliard("test", frames=2, frame_step=4, root=tmp_path).clips[:, :, 0, 0, 0].tolist() == [[0, 4]] * 3
    assert cahn_hilliard("test", frames=3, frame_step=2, stride=1, root=tmp_path).clips.shape[:2] == (3, 3)
    with pytest.raises(UsageError, match=r"clips of 3 frames 3 apart span 7 snapshots, more .* has \(5\)"):
        cahn_hilliard("test", frames=3, frame_step=3, root=tmp_path)


@pytest.fixture(scope="module")
def simulation_five():
    require_cahn_hilliard()
    return read_simulation(5)


def test_falling_energy_is_time_order(simulation_five):
    frames, energies = simulation_five
    assert len(frames) == 989 and frames.shape[1:] == (64, 64)
    assert np.all(np.diff(energies) < 0)  # distinct energies, so the order is unique
    x = frames.astype(np.float64)
    consecutive = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(x), (2, 300))
    random_pairs = np.abs(x[a] - x[b]).mean(axis=(1, 2))
    # measured: consecutive snapshots differ by ~0.18 grey levels per pixel (at most ~1.3), random pairs by ~37
    assert consecutive.max() < 2 and np.median(random_pairs) > 20 * consecutive.mean()


def test_test_clips_are_windows_of_the_held_out_simulations(simulation_five):
    frames, energies = simulation_five
    data = cahn_hilliard("test", frames=4, frame_step=3, stride=50)
    assert data.clips.shape[1:] == (4, 64, 64, 1) and data.num_classes == 0
    assert set(data.extras["simulation"].tolist()) == set(CAHN_HILLIARD_TEST_SIMULATIONS)
    fives = np.flatnonzero(data.extras["simulation"] == 5)
    assert data.extras["start"][fives].tolist() == list(range(0, 989 - 9, 50))
    k = fives[3]
    assert np.array_equal(data.clips[k, :, :, :, 0], frames[[150, 153, 156, 159]])
    assert np.array_equal(data.extras["energy"][k], energies[[150, 153, 156, 159]])


def test_train_holds_the_other_simulations():
    require_cahn_hilliard()
    data = cahn_hilliard("train", frames=100)
    assert set(data.extras["simulation"].tolist()) == set(range(18)) - set(CAHN_HILLIARD_TEST_SIMULATIONS)
    assert data.clips.shape[1:] == (100, 64, 64, 1) and np.all(data.extras["start"] % 100 == 0)


def test_other_resolutions_are_area_averaged(tmp_path):
    rng = np.random.default_rng(0)
    snapshots = [rng.integers(0, 64, (64, 64)).astype(np.uint8) * 4 for _ in range(2)]  # multiples of 4
    for index in CAHN_HILLIARD_TEST_SIMULATIONS:
        _write_simulation(tmp_path, index, snapshots, [2.0, 1.0])
    data = cahn_hilliard("test", frames=2, resolution=32, root=tmp_path)
    blocks = snapshots[1].reshape(32, 2, 32, 2).astype(np.float64).mean(axis=(1, 3))  # box filter, 2x2 means
    assert data.clips.shape == (3, 2, 32, 32, 1) and np.abs(data.clips[0, 1, :, :, 0] - blocks).max() <= 0.5
