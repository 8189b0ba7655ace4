"""Loss curves with matplotlib: the PNG's pixels, the axes drawn (log y, k/M x labels), the EMA, gaps, errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusekit.monitor import plot_curves, plot_loss_curve
from diffusekit.monitor.plot import curves_figure, ema, loss_figure

SMALL = (320, 240)
TABLEAU = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)]  # Tableau 10's blue, orange, green


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int64)


def _tinted(pixels: np.ndarray, color: tuple[int, int, int], least: float = 0.5) -> np.ndarray:
    """Mask of pixels that are ``color`` blended with at most ``1 - least`` white: an anti-aliased line of it."""
    white, c = np.array([255.0, 255.0, 255.0]), np.array(color, dtype=float)
    direction = c - white
    amount = ((pixels - white) @ direction) / (direction @ direction)
    residual = np.linalg.norm(pixels - (white + amount[..., None] * direction), axis=-1)
    return (amount >= least) & (amount <= 1.1) & (residual <= 12)


def _ema_closed_form(values: list[float], s: float) -> list[float]:
    """TensorBoard's debiased EMA written out: at each point, the finite values so far f_0 .. f_k weighted by
    s^(k - j), divided by the sum of those weights (non-finite values are skipped, not decayed over)."""
    out = []
    for t in range(len(values)):
        finite = [v for v in values[: t + 1] if math.isfinite(v)]
        weights = [s ** (len(finite) - 1 - j) for j in range(len(finite))]
        out.append(sum(w * v for w, v in zip(weights, finite, strict=True)) / sum(weights) if finite else math.nan)
    return out


def _tick_labels(axis, minor: bool = False) -> list[str]:
    """The labels of the ticks inside the axis' view, as drawn."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = axis.get_minor_ticks() if minor else axis.get_major_ticks()
    return [t.label1.get_text() for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_text()]


def test_png_has_requested_size_and_drawn_content(tmp_path):
    path = plot_curves(tmp_path / "sub" / "c.png", {"loss": ([0, 1000, 2000], [1.0, 0.3, 0.1])}, size=(500, 300))
    pixels = _pixels(path)
    assert pixels.shape == (300, 500, 3)
    assert _tinted(pixels, TABLEAU[0]).sum() > 200  # the line
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.png"]  # written atomically, no temp file left


def test_series_have_distinct_colours_in_the_right_places(tmp_path):
    # log y: "high" (10) must be drawn above "low" (1); "short" spans only the left half of the x range
    series = {"high": ([0, 100], [10.0, 10.0]), "low": ([0, 100], [1.0, 1.0]), "short": ([0, 40], [3.0, 3.0])}
    pixels = _pixels(plot_curves(tmp_path / "c.png", series, size=(400, 300)))
    rows, columns = {}, {}
    for name, color in zip(series, TABLEAU, strict=True):
        mask = _tinted(pixels, color)
        assert mask.sum() > 100, name
        rows[name], columns[name] = np.nonzero(mask)
    assert np.median(rows["high"]) < np.median(rows["short"]) < np.median(rows["low"])
    assert np.median(columns["short"]) < np.median(columns["high"])  # the short line stays on the left


def test_loss_curve_axes_raw_light_and_ema_bold():
    nimg = [256, 512, 768, 1024, 1280, 1536]
    loss = [0.5, 0.25, math.nan, 0.0, 0.125, 0.1]  # NaN and 0 cannot be drawn on a log axis
    figure = loss_figure(nimg, loss, smoothing=0.5, title="training loss")
    (axes,) = figure.axes
    assert axes.get_yscale() == "log" and axes.get_title() == "training loss"
    assert axes.get_xlabel() == "training images" and axes.get_ylabel() == "loss"
    raw, smooth = axes.get_lines()
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["raw", "EMA 0.5"]
    assert raw.get_alpha() < 0.5 and smooth.get_alpha() is None and smooth.get_linewidth() > raw.get_linewidth()
    assert raw.get_color() == smooth.get_color() == "C0"
    np.testing.assert_array_equal(raw.get_xdata(), nimg)
    np.testing.assert_array_equal(raw.get_ydata(), [0.5, 0.25, np.nan, np.nan, 0.125, 0.1])  # gaps, not values
    expected = _ema_closed_form([0.5, 0.25, math.nan, math.nan, 0.125, 0.1], 0.5)  # zeros are left out of the EMA
    np.testing.assert_allclose(smooth.get_ydata(), expected, rtol=1e-12)


def test_loss_curve_png(tmp_path):
    rng = np.random.default_rng(0)
    nimg = np.arange(1, 301) * 4096
    loss = 0.05 + np.exp(-nimg / 2e5) * 0.5 * np.exp(0.3 * rng.standard_normal(nimg.size))
    pixels = _pixels(plot_loss_curve(tmp_path / "loss.png", nimg, loss, smoothing=0.9, size=(480, 320)))
    assert pixels.shape == (320, 480, 3)
    assert _tinted(pixels, TABLEAU[0], least=0.9).sum() > 300  # the bold EMA, at full colour
    light = _tinted(pixels, TABLEAU[0], least=0.2) & ~_tinted(pixels, TABLEAU[0], least=0.5)
    assert light.sum() > 300  # the raw curve, at about a third of the colour


def test_tick_labels_k_m_suffixes_and_plain_log_numbers():
    figure = curves_figure({"loss": ([0, 1.28e6], [3e-4, 2.0])})
    figure.draw_without_rendering()
    (axes,) = figure.axes
    assert _tick_labels(axes.xaxis) == ["0", "200k", "400k", "600k", "800k", "1M", "1.2M"]
    assert _tick_labels(axes.yaxis) == ["0.001", "0.01", "0.1", "1"]
    figure = curves_figure({"loss": ([0, 100], [0.022, 0.6])})  # under two decades: minor ticks labelled too
    figure.draw_without_rendering()
    axis = figure.axes[0].yaxis
    minor = _tick_labels(axis, minor=True)
    assert _tick_labels(axis) == ["0.1"] and {"0.02", "0.2", "0.3"} <= set(minor)
    assert all(0.02 <= float(label) <= 0.7 and "$" not in label for label in minor)  # plain numbers, not 2x10^-2


def test_isolated_points_get_a_dot(tmp_path):
    line = curves_figure({"a": ([0, 1, 2, 3, 4], [1.0, math.nan, 2.0, math.nan, 3.0])}).axes[0].get_lines()[0]
    assert line.get_marker() == "o" and line.get_markevery() == [0, 2, 4]
    line = curves_figure({"a": ([0, 1, 2], [1.0, 2.0, 3.0])}).axes[0].get_lines()[0]
    assert line.get_marker() in ("None", None, "")  # a plain line has no dots
    for i, series in enumerate([{"one": ([5], [0.5])}, {"flat": ([0, 10, 20], [2.0, 2.0, 2.0])},
                                {"zero": ([3, 3], [0.0, 0.0])}]):
        pixels = _pixels(plot_curves(tmp_path / f"d{i}.png", series, size=SMALL, log_y="zero" not in series))
        assert pixels.shape == (240, 320, 3) and _tinted(pixels, TABLEAU[0]).sum() > 10


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
    with pytest.raises(ValueError, match="3 image counts but 2 loss values"):
        plot_loss_curve(tmp_path / "e.png", [1, 2, 3], [1.0, 2.0])
    assert not (tmp_path / "e.png").exists()


def test_ema_is_bias_corrected_and_skips_gaps():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    out = ema([1.0, np.nan, 3.0], 0.5)
    assert out[0] == 1.0 and out[1] == 1.0 and out[2] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
    assert ema([1.0, 5.0], 0.0) == pytest.approx([1.0, 5.0])
    values = [0.3, 0.1, math.inf, 0.7, 0.2]
    np.testing.assert_allclose(ema(values, 0.8), _ema_closed_form(values, 0.8), rtol=1e-12)
    with pytest.raises(ValueError):
        ema([1.0], 1.0)


def test_matplotlib_is_imported_only_to_draw_and_never_pyplot(tmp_path):
    code = (
        "import sys\n"
        "import diffusekit.monitor as m\n"
        "assert 'matplotlib' not in sys.modules and 'tensorboardX' not in sys.modules\n"
        f"m.plot_loss_curve({str(tmp_path / 'loss.png')!r}, [1, 2, 3], [0.3, 0.2, 0.1])\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "loss.png").is_file()
