from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageFont

from diffusekit.monitor import plot_curves, plot_loss_curve
from diffusekit.monitor.plot import PALETTE, _decimate, _hex, _lighten, _linear_ticks, _log_ticks, _tick_label, ema

SMALL = (320, 240)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int64)


def _near(pixels: np.ndarray, color: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    """Mask of pixels within ``tol`` (per channel) of ``color``."""
    return (np.abs(pixels - np.array(color)) <= tol).all(axis=-1)


def _tinted(pixels: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Mask of pixels that are ``color`` blended with at most half white: an anti-aliased line of that colour."""
    white, c = np.array([255.0, 255.0, 255.0]), np.array(color, dtype=float)
    direction = c - white
    amount = ((pixels - white) @ direction) / (direction @ direction)
    residual = np.linalg.norm(pixels - (white + amount[..., None] * direction), axis=-1)
    return (amount >= 0.5) & (amount <= 1.1) & (residual <= 12)


def test_png_has_requested_size_and_drawn_content(tmp_path):
    path = plot_curves(tmp_path / "sub" / "c.png", {"loss": ([0, 1000, 2000], [1.0, 0.3, 0.1])}, size=(500, 300))
    pixels = _pixels(path)
    assert pixels.shape == (300, 500, 3)
    inner = pixels[60:240, 100:450]  # well inside the plot area
    assert (inner != 255).any(axis=-1).sum() > 200
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.png"]  # written atomically, no temp file left


def test_series_have_distinct_colours_in_the_right_places(tmp_path):
    # log y: "high" (10) must be drawn above "low" (1); "short" spans only the left half of the x range
    series = {"high": ([0, 100], [10.0, 10.0]), "low": ([0, 100], [1.0, 1.0]), "short": ([0, 40], [3.0, 3.0])}
    pixels = _pixels(plot_curves(tmp_path / "c.png", series, size=(400, 300)))
    rows = {}
    for name, color in zip(series, PALETTE, strict=False):
        mask = _tinted(pixels, _hex(color))
        assert mask.sum() > 100, name
        rows[name] = np.nonzero(mask)[0]
    assert np.median(rows["high"]) < np.median(rows["short"]) < np.median(rows["low"])
    short_columns = np.nonzero(_tinted(pixels, _hex(PALETTE[2])))[1]
    high_columns = np.nonzero(_tinted(pixels, _hex(PALETTE[0])))[1]
    assert np.median(short_columns) < np.median(high_columns)  # short line stays on the left


def test_loss_curve_draws_raw_light_and_smoothed_bold(tmp_path):
    rng = np.random.default_rng(0)
    nimg = np.arange(1, 301) * 256
    loss = 0.05 + np.exp(-nimg / 2e4) * 0.5 * np.exp(0.3 * rng.standard_normal(nimg.size))
    loss[10], loss[20], loss[30] = np.nan, 0.0, -1.0  # skipped on the log axis
    pixels = _pixels(plot_loss_curve(tmp_path / "loss.png", nimg, loss, smoothing=0.9, size=(480, 320)))
    blue = _hex(PALETTE[0])
    assert _near(pixels, blue, tol=25).sum() > 300  # the bold EMA
    assert _near(pixels, _lighten(blue, 0.65), tol=12).sum() > 300  # the light raw curve


def test_degenerate_inputs_still_draw(tmp_path):
    for i, series in enumerate([{"one": ([5], [0.5])}, {"flat": ([0, 10, 20], [2.0, 2.0, 2.0])},
                                {"zero": ([3, 3], [0.0, 0.0])}]):
        log_y = "zero" not in series
        pixels = _pixels(plot_curves(tmp_path / f"d{i}.png", series, size=SMALL, log_y=log_y))
        assert pixels.shape == (240, 320, 3)
        assert _near(pixels, _hex(PALETTE[0]), tol=30).sum() > 10


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one series"):
        plot_curves(tmp_path / "e.png", {})
    with pytest.raises(ValueError, match="'loss' is empty"):
        plot_curves(tmp_path / "e.png", {"loss": ([], [])})
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        plot_curves(tmp_path / "e.png", {"loss": ([1, 2, 3], [1, 2])})
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_curves(tmp_path / "e.png", {"loss": ([1, 2], [0.0, -1.0])}, log_y=True)
    with pytest.raises(ValueError, match="size"):
        plot_curves(tmp_path / "e.png", {"loss": ([1, 2], [1, 2])}, size=(50, 50))
    assert not (tmp_path / "e.png").exists()


def test_linear_ticks_are_round_and_x_labels_use_suffixes():
    ticks, step = _linear_ticks(0, 1.28e6, 6)
    assert step == 2e5 and ticks[0] == 0 and ticks[-1] == pytest.approx(1.2e6)
    assert [_tick_label(t, step, si=True) for t in ticks] == ["0", "200k", "400k", "600k", "800k", "1M", "1.2M"]
    assert _tick_label(1.25e6, 2.5e5, si=True) == "1.25M"
    ticks, step = _linear_ticks(-0.013, 0.041, 5)
    assert step == 0.01 and [_tick_label(t, step, si=False) for t in ticks] == ["-0.01", "0", "0.01", "0.02", "0.03",
                                                                                "0.04"]


def test_log_ticks_decades_and_short_ranges():
    ticks, labels, minor = _log_ticks(3e-5, 2.0)
    assert labels == ["1e-4", "0.001", "0.01", "0.1", "1"]
    assert all(math.log10(t) == pytest.approx(round(math.log10(t))) for t in ticks) and 0.2 in minor
    ticks, labels, _ = _log_ticks(0.022, 0.6)  # under two decades: 1-2-5 ticks
    assert labels == ["0.05", "0.1", "0.2", "0.5"]
    ticks, labels, _ = _log_ticks(0.031, 0.079)  # under a factor 3: every mantissa
    assert labels == ["0.04", "0.05", "0.06", "0.07"]
    ticks, labels, _ = _log_ticks(1e-12, 1e4)  # many decades: thinned to every other one
    assert len(ticks) <= 9 and "1e-10" in labels


def test_ema_is_bias_corrected_and_skips_gaps():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    out = ema([1.0, np.nan, 3.0], 0.5)
    assert out[0] == 1.0 and out[1] == 1.0 and out[2] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
    assert ema([1.0, 5.0], 0.0) == pytest.approx([1.0, 5.0])
    with pytest.raises(ValueError):
        ema([1.0], 1.0)


def test_decimation_keeps_every_column_envelope():
    rng = np.random.default_rng(1)
    xs = np.linspace(0, 99.99, 10_000)  # 100 pixel columns, 100 points each
    ys = rng.standard_normal(xs.size)
    ys[5_555] = 50.0  # a one-point spike must survive
    dx, dy = _decimate(xs, ys)
    assert len(dx) == 4 * 100 and dy.max() == 50.0
    for column in (0, 55, 99):
        inside = np.floor(xs) == column
        kept = (dx >= column) & (dx < column + 1)
        assert dy[kept].min() == ys[inside].min() and dy[kept].max() == ys[inside].max()
    assert dx[0] == xs[0] and dx[-1] == xs[-1] and dy[0] == ys[0] and dy[-1] == ys[-1]
    few = np.arange(50.0)
    assert _decimate(few, few)[0] is few  # sparse data is drawn point by point


def test_old_pillow_bitmap_font_fallback(tmp_path, monkeypatch):
    """Pillow < 10.1 has no ``load_default(size=)``: the chart is drawn unscaled with the bitmap font."""
    original = ImageFont.load_default

    def old_load_default(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() takes no arguments")
        return original()

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    pixels = _pixels(plot_curves(tmp_path / "c.png", {"a": ([0, 1, 2], [3.0, 2.0, 1.0])}, size=SMALL))
    assert pixels.shape == (240, 320, 3) and _tinted(pixels, _hex(PALETTE[0])).sum() > 50
