"""Moving MNIST against the published rule (Srivastava et al. 2015), recomputed here one digit at a time."""

import numpy as np
import pytest
from PIL import Image

from diffusekit.data import moving_mnist
from diffusekit.data.builtin import mnist
from diffusekit.errors import UsageError

from ..assets import require_mnist

require_mnist()

ROOM = 12  # resolution 40 - digit size 28: digits bounce often


@pytest.fixture(scope="module")
def two_digit_clips():
    return moving_mnist("train", count=40, frames=20, resolution=40, digits=2, speed=(2.0, 4.0), seed=3)


@pytest.fixture(scope="module")
def train_digits():
    return mnist("train")


def _walk(start, velocity, frames):
    """The rule done by hand in float32: pos += vel, then reflect at 0 and at ROOM (the velocity flips)."""
    limit, p, v, out = np.float32(ROOM), start.copy(), velocity.copy(), []
    for _ in range(frames):
        out.append((np.rint(p), v.copy()))
        p = p + v
        for axis in range(2):
            if p[axis] < 0:
                p[axis], v[axis] = -p[axis], -v[axis]
            if p[axis] > limit:
                p[axis], v[axis] = np.float32(2) * limit - p[axis], -v[axis]
    return out


def test_same_seed_same_bytes_and_splits_differ(two_digit_clips):
    again = moving_mnist("train", count=40, frames=20, resolution=40, digits=2, speed=(2.0, 4.0), seed=3)
    assert again.clips.tobytes() == two_digit_clips.clips.tobytes()
    assert all(np.array_equal(again.extras[k], v, equal_nan=True) for k, v in two_digit_clips.extras.items())
    test = moving_mnist("test", count=40, frames=20, resolution=40, digits=2, speed=(2.0, 4.0), seed=3)
    assert not np.array_equal(test.extras["initial_positions"], two_digit_clips.extras["initial_positions"])
    other_seed = moving_mnist("train", count=40, frames=20, resolution=40, digits=2, speed=(2.0, 4.0), seed=4)
    assert other_seed.clips.tobytes() != two_digit_clips.clips.tobytes()


def test_trajectories_follow_the_bounce_rule(two_digit_clips):
    extras = two_digit_clips.extras
    positions, velocities = extras["positions"], extras["velocities"]
    assert positions.shape == velocities.shape == (40, 20, 2, 2)
    for n in range(40):
        for d in range(2):
            walk = _walk(extras["initial_positions"][n, d], velocities[n, 0, d], 20)
            assert np.array_equal(positions[n, :, d], [p for p, _ in walk])
            assert np.array_equal(velocities[n, :, d], [v for _, v in walk])
    speeds = np.hypot(velocities[..., 0], velocities[..., 1])
    assert np.allclose(speeds, speeds[:, :1], atol=1e-5) and speeds.min() >= 2 - 1e-5 and speeds.max() <= 4 + 1e-5
    assert positions.min() == 0 and positions.max() == ROOM  # digits reach both walls
    assert np.any(np.sign(velocities[:, 1:]) != np.sign(velocities[:, :1]))  # and bounce off them


def test_frames_are_the_max_of_the_digits_at_their_positions(two_digit_clips, train_digits):
    extras = two_digit_clips.extras
    for n, f in [(0, 0), (0, 19), (7, 5), (39, 11)]:
        canvas = np.zeros((40, 40), np.uint8)
        for d in range(2):
            r, c = extras["positions"][n, f, d].astype(int)
            glyph = train_digits.images[extras["mnist_index"][n, d], :, :, 0]
            canvas[r:r + 28, c:c + 28] = np.maximum(canvas[r:r + 28, c:c + 28], glyph)
        assert np.array_equal(two_digit_clips.clips[n, f, :, :, 0], canvas)
    assert np.array_equal(extras["digits"], train_digits.labels[extras["mnist_index"]])
    assert two_digit_clips.num_classes == 0 and not two_digit_clips.labels.any()


def test_one_small_digit_is_the_label(train_digits):
    data = moving_mnist("train", count=30, frames=6, resolution=32, digits=1, digit_size=14, speed=1.5, seed=1)
    assert data.clips.shape == (30, 6, 32, 32, 1) and data.num_classes == 10
    index = data.extras["mnist_index"][:, 0]
    assert np.array_equal(data.labels, train_digits.labels[index])
    n, f = 4, 5
    r, c = data.extras["positions"][n, f, 0].astype(int)
    glyph = np.asarray(Image.fromarray(train_digits.images[index[n], :, :, 0]).resize((14, 14), Image.BOX))
    expected = np.zeros((32, 32), np.uint8)
    expected[r:r + 14, c:c + 14] = glyph
    assert np.array_equal(data.clips[n, f, :, :, 0], expected)


def test_a_range_of_digit_counts_marks_absent_slots():
    data = moving_mnist("test", count=60, frames=3, resolution=40, digits=(1, 3), seed=0)
    digits = data.extras["digits"]
    present = (digits >= 0).sum(1)
    assert set(present.tolist()) == {1, 2, 3} and np.all(digits[:, 0] >= 0)
    absent = digits < 0
    assert np.isnan(data.extras["positions"][:, :, :, 0]).sum() == absent.sum() * 3
    assert np.all(data.extras["mnist_index"][absent] == -1) and data.num_classes == 0


def test_bad_settings_name_the_problem():
    with pytest.raises(UsageError, match="resolution 20 is too small for 28-px digits"):
        moving_mnist(count=1, resolution=20)
    with pytest.raises(UsageError, match=r"speed \(2.0, 9.0\) must lie in \[0, 4\]"):
        moving_mnist(count=1, resolution=32, digit_size=28, speed=(2.0, 9.0))
    with pytest.raises(UsageError, match="frames must be at least 1"):
        moving_mnist(count=1, frames=0)
    with pytest.raises(UsageError, match="unknown split 'val'"):
        moving_mnist("val")
    with pytest.raises(UsageError, match="at least one digit"):
        moving_mnist(count=1, digits=0)
