"""Line charts of training curves as PNG, drawn with Pillow alone (no matplotlib to install on a training box).

The chart is drawn at twice its size and averaged down (a box filter: no ringing, so colours stay true), which
anti-aliases lines and text.
Ticks are round numbers (1, 2, 5 x 10^k); a logarithmic y axis gets decade ticks (with 1-2-5 or 1..9 ticks
when the data span less than a decade) and light minor grid lines. x tick labels use k/M/G suffixes.
Points that cannot be drawn (NaN, +-inf, and y <= 0 on a log axis) are skipped and break the line there,
so a diverged stretch shows as a gap rather than as a wrong value. The PNG is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["plot_curves", "plot_loss_curve", "ema"]

# Tableau 10: distinct for the usual kinds of colour blindness, familiar from matplotlib.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
_BACKGROUND, _TEXT, _AXIS = (255, 255, 255), (40, 40, 40), (90, 90, 90)
_GRID, _MINOR_GRID = (226, 226, 226), (243, 243, 243)
_SUPERSAMPLE = 2
_SUFFIXES = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]


@dataclass
class _Series:
    label: str | None  # None: not in the legend
    x: np.ndarray
    y: np.ndarray
    color: tuple[int, int, int]
    width: float


@dataclass
class _Axis:
    lo: float
    hi: float
    log: bool
    ticks: list[float]
    labels: list[str]
    minor: list[float]

    def fraction(self, v: np.ndarray | float) -> np.ndarray | float:
        """Position of ``v`` along the axis, 0 at ``lo`` and 1 at ``hi``."""
        if self.log:
            return (np.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (np.asarray(v) - self.lo) / (self.hi - self.lo)


# --- numbers and ticks --------------------------------------------------------------------------------------


def _hex(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _lighten(color: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """Mix with white: how a raw, noisy curve is drawn behind its smoothed version."""
    return tuple(round(c + (255 - c) * amount) for c in color)


def _decimals(step: float) -> int:
    """Fewest decimals that write multiples of ``step`` exactly (0.25 -> 2, 500 -> 0)."""
    for d in range(10):
        if abs(round(step, d) - step) <= 1e-9 * abs(step):
            return d
    return 10


def _strip(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def _tick_label(v: float, step: float, si: bool) -> str:
    """A tick label with just the digits the tick spacing needs; ``si`` scales by k/M/G/T."""
    if abs(v) < 1e-9 * step:
        return "0"
    if si:
        scale, suffix = next(((s, x) for s, x in _SUFFIXES if abs(v) >= s), (1.0, ""))
        return _strip(f"{v / scale:.{_decimals(step / scale)}f}") + suffix
    if abs(v) >= 1e5 or step < 1e-4:
        return f"{v:.3g}"
    return _strip(f"{v:.{_decimals(step)}f}")


def _nice_step(span: float, target: int) -> float:
    """The 1-2-5 x 10^k step closest (in ratio) to giving ``target`` intervals over ``span``."""
    raw = span / max(target, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return min((m * magnitude for m in (1, 2, 5, 10)), key=lambda step: abs(math.log(step / raw)))


def _linear_ticks(lo: float, hi: float, target: int) -> tuple[list[float], float]:
    """Multiples of a 1-2-5 step inside [lo, hi], about ``target`` of them."""
    step = _nice_step(hi - lo, target)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)], step


def _log_label(v: float) -> str:
    exponent = math.floor(math.log10(v) + 1e-9)
    mantissa = round(v / 10.0**exponent, 6)
    if -3 <= exponent <= 4:
        return _strip(f"{v:.{max(0, -exponent) + (0 if mantissa == int(mantissa) else 1)}f}")
    return f"{_strip(f'{mantissa:g}')}e{exponent}"


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str], list[float]]:
    """Decade ticks (thinned over many decades) with 2..9 minors; 1-2-5 or 1..9 ticks over a short range."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))

    def inside(mantissas: Sequence[int], every: int = 1) -> list[float]:
        return [m * 10.0**k for k in range(k0, k1 + 1) if k % every == 0 for m in mantissas if lo <= m * 10.0**k <= hi]

    every = max(1, math.ceil((k1 - k0) / 8))
    choices = [(inside([1], every), inside(range(2, 10)) if every == 1 else []),
               (inside([1, 2, 5]), inside([3, 4, 6, 7, 8, 9])),
               (inside(range(1, 10)), [])]
    for ticks, minor in choices:
        if len(ticks) >= 3:
            return ticks, [_log_label(t) for t in ticks], minor
    ticks, step = _linear_ticks(lo, hi, 4)  # less than a factor of ~2: plain round numbers
    ticks = [t for t in ticks if t > 0]
    return ticks, [_tick_label(t, step, si=False) for t in ticks], []


def _padded(lo: float, hi: float, log: bool, pad: float) -> tuple[float, float]:
    """The data range widened by ``pad`` of itself on each side (in log space on a log axis); never empty."""
    if log:
        a, b = _padded(math.log10(lo), math.log10(hi), False, pad)
        return 10.0**a, 10.0**b
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi)):
        half = abs(lo) * 0.05 if lo else 0.5
        return lo - half, hi + half
    span = hi - lo
    return lo - pad * span, hi + pad * span


def _make_axis(lo: float, hi: float, log: bool, pad: float, target: int, si: bool) -> _Axis:
    lo, hi = _padded(lo, hi, log, pad)
    if log:
        ticks, labels, minor = _log_ticks(lo, hi)
        return _Axis(lo, hi, True, ticks, labels, minor)
    ticks, step = _linear_ticks(lo, hi, target)
    return _Axis(lo, hi, False, ticks, [_tick_label(t, step, si) for t in ticks], [])


# --- data ---------------------------------------------------------------------------------------------------


def _as_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"series {name!r} is empty")
    return array


def _drawable(s: _Series, log_y: bool) -> np.ndarray:
    """Mask of the points that can be placed on the chart."""
    ok = np.isfinite(s.x) & np.isfinite(s.y)
    return ok & (s.y > 0) if log_y else ok


def _runs(mask: np.ndarray) -> list[slice]:
    """Maximal stretches of True: a line is drawn through each, with a gap at every skipped point."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [slice(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def ema(values: Sequence[float] | np.ndarray, smoothing: float) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard's smoothing); non-finite values are carried over."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out, acc, weight = [], 0.0, 0.0
    for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist():  # Python floats: 10x faster to loop
        if math.isfinite(v):
            acc = smoothing * acc + (1 - smoothing) * v
            weight = smoothing * weight + (1 - smoothing)
        out.append(acc / weight if weight else math.nan)
    return np.array(out, dtype=np.float64)


# --- drawing ------------------------------------------------------------------------------------------------


class _Canvas:
    """A supersampled image with text helpers; every length is given at 1x and scaled here."""

    def __init__(self, size: tuple[int, int]):
        self.font, self.scale = _font(12)
        self.title_font, _ = _font(15)
        self.s = self.scale
        self.image = Image.new("RGB", (size[0] * self.s, size[1] * self.s), _BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        top, bottom = self.font.getbbox("Hg0")[1::2]
        self.text_top, self.text_height = top, bottom - top

    def text_width(self, text: str, font: ImageFont.ImageFont | None = None) -> int:
        left, _, right, _ = (font or self.font).getbbox(text)
        return right - left

    def text(self, x: float, y: float, text: str, align: str = "center", valign: str = "middle",
             font: ImageFont.ImageFont | None = None, fill: tuple[int, int, int] = _TEXT) -> None:
        """Draw ``text`` placed by its box: ``align`` left/center/right of x, ``valign`` top/middle/bottom of y."""
        font = font or self.font
        left, top, right, bottom = font.getbbox(text)
        if font is self.font:  # one line height for every label, so labels of one axis line up
            top, bottom = self.text_top, self.text_top + self.text_height
        dx = {"left": 0, "center": (right - left) / 2, "right": right - left}[align]
        dy = {"top": 0, "middle": (bottom - top) / 2, "bottom": bottom - top}[valign]
        self.draw.text((round(x - dx - left), round(y - dy - top)), text, font=font, fill=fill)

    def vertical_text(self, x: float, y: float, text: str) -> None:
        """Text rotated a quarter turn counter-clockwise, centred on (x, y): the y-axis label."""
        left, top, right, bottom = self.font.getbbox(text)
        layer = Image.new("L", (right - left + 2, bottom - top + 2), 0)
        ImageDraw.Draw(layer).text((1 - left, 1 - top), text, font=self.font, fill=255)
        layer = layer.rotate(90, expand=True)
        box = (round(x - layer.width / 2), round(y - layer.height / 2))
        self.image.paste(Image.new("RGB", layer.size, _TEXT), box, layer)

    def finish(self, size: tuple[int, int]) -> Image.Image:
        return self.image if self.s == 1 else self.image.resize(size, Image.Resampling.BOX)


def _font(size: int) -> tuple[ImageFont.ImageFont, int]:
    """Pillow's bundled font at ``size`` px (x supersampling), or its fixed bitmap font on old/FreeType-less Pillow."""
    try:
        return ImageFont.load_default(size=size * _SUPERSAMPLE), _SUPERSAMPLE
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 takes no size; no FreeType: bitmap only
        return ImageFont.load_default(), 1


@dataclass
class _Frame:
    """The plot area in (supersampled) pixels and the mapping of data into it."""

    left: int
    top: int
    right: int
    bottom: int
    x: _Axis
    y: _Axis

    def px(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.left + self.x.fraction(x) * (self.right - self.left)

    def py(self, y: np.ndarray | float) -> np.ndarray | float:
        return self.bottom - self.y.fraction(y) * (self.bottom - self.top)


def _x_axis(lo: float, hi: float, canvas: _Canvas, length: int) -> _Axis:
    """Linear x axis with as many ticks as fit without their labels touching; from 0 if the data start near it."""
    if 0 < lo < 0.1 * hi:  # a run logged from its first step: show where training started
        lo = 0.0
    for target in range(max(2, length // (90 * canvas.s)), 1, -1):
        axis = _make_axis(lo, hi, False, 0.0, target, si=True)
        widest = max((canvas.text_width(label) for label in axis.labels), default=0)
        if len(axis.ticks) * (widest + 16 * canvas.s) <= length:
            return axis
    return axis


def _layout(canvas: _Canvas, size: tuple[int, int], title: str, xlabel: str, ylabel: str,
            x_range: tuple[float, float], y_range: tuple[float, float], log_y: bool) -> _Frame:
    s, th = canvas.s, canvas.text_height
    width, height = size[0] * s, size[1] * s
    top = (16 * s + canvas.title_font.getbbox(title)[3]) if title else 16 * s
    bottom = height - (10 * s + th + 8 * s + (th + 8 * s if xlabel else 0))
    y_axis = _make_axis(*y_range, log_y, 0.05, max(2, (bottom - top) // (55 * s)), si=False)
    widest = max((canvas.text_width(label) for label in y_axis.labels), default=0)
    left = 12 * s + (th + 10 * s if ylabel else 0) + widest + 8 * s
    right = width - 24 * s
    x_axis = _x_axis(*x_range, canvas, right - left)
    return _Frame(left, top, right, bottom, x_axis, y_axis)


def _draw_grid_and_axes(canvas: _Canvas, frame: _Frame) -> None:
    draw, s = canvas.draw, canvas.s
    for y in frame.y.minor:
        py = round(frame.py(y))
        draw.line([(frame.left, py), (frame.right, py)], fill=_MINOR_GRID, width=s)
    for y, label in zip(frame.y.ticks, frame.y.labels, strict=True):
        py = round(frame.py(y))
        draw.line([(frame.left, py), (frame.right, py)], fill=_GRID, width=s)
        draw.line([(frame.left - 4 * s, py), (frame.left, py)], fill=_AXIS, width=s)
        canvas.text(frame.left - 7 * s, py, label, align="right")
    for x, label in zip(frame.x.ticks, frame.x.labels, strict=True):
        px = round(frame.px(x))
        draw.line([(px, frame.top), (px, frame.bottom)], fill=_GRID, width=s)
        draw.line([(px, frame.bottom), (px, frame.bottom + 4 * s)], fill=_AXIS, width=s)
        canvas.text(px, frame.bottom + 8 * s, label, valign="top")
    draw.rectangle([frame.left, frame.top, frame.right, frame.bottom], outline=_AXIS, width=s)


def _decimate(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates reduced to first, lowest, highest and last point per pixel column.

    A long run logs far more points than the chart has columns; the envelope draws the same picture
    (every spike kept) at a fraction of the cost. Only for x in increasing order, as a training curve is.
    """
    if len(xs) < 4 * (xs[-1] - xs[0] + 1) or np.any(np.diff(xs) < 0):
        return xs, ys
    column = np.floor(xs)
    starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
    ends = np.r_[starts[1:], len(xs)] - 1
    low, high = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
    middle = (xs[starts] + xs[ends]) / 2
    return (np.stack([xs[starts], middle, middle, xs[ends]], axis=1).reshape(-1),
            np.stack([ys[starts], low, high, ys[ends]], axis=1).reshape(-1))


def _draw_series(canvas: _Canvas, frame: _Frame, series: list[_Series], log_y: bool) -> Image.Image:
    """Lines on a layer the size of the plot area, so nothing is drawn outside it; returns the layer."""
    w, h = frame.right - frame.left + 1, frame.bottom - frame.top + 1
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for s in series:
        mask = _drawable(s, log_y)
        if not mask.any():
            continue
        xs = frame.px(np.where(mask, s.x, frame.x.lo)) - frame.left
        ys = frame.py(np.where(mask, s.y, frame.y.lo)) - frame.top
        width = max(1, round(s.width * canvas.s))
        for run in _runs(mask):
            points = list(zip(*(a.tolist() for a in _decimate(xs[run], ys[run])), strict=True))
            if len(points) == 1:
                (x, y), r = points[0], width + canvas.s
                draw.ellipse([x - r, y - r, x + r, y + r], fill=s.color)
            else:
                draw.line(points, fill=s.color, width=width, joint="curve")
    canvas.image.paste(layer, (frame.left, frame.top), layer)
    return layer


def _legend_box(canvas: _Canvas, frame: _Frame, entries: list[_Series], lines: Image.Image) -> tuple[int, ...]:
    """The legend's box in the plot corner that hides the least of the drawn lines (top right on a tie)."""
    s = canvas.s
    row = canvas.text_height + 7 * s
    w = 28 * s + 8 * s + max(canvas.text_width(e.label) for e in entries) + 20 * s
    h = row * len(entries) + 10 * s
    margin = 10 * s
    xs = [frame.right - margin - w, frame.left + margin]
    ys = [frame.top + margin, frame.bottom - margin - h]
    corners = [(x, y, x + w, y + h) for y in ys for x in xs]
    coverage = np.asarray(lines.getchannel("A"), dtype=np.int64)

    def hidden(box: tuple[int, int, int, int]) -> int:
        return int(coverage[box[1] - frame.top:box[3] - frame.top, box[0] - frame.left:box[2] - frame.left].sum())

    return min(corners, key=hidden)


def _draw_legend(canvas: _Canvas, frame: _Frame, series: list[_Series], lines: Image.Image) -> None:
    entries = [e for e in series if e.label]
    if not entries:
        return
    s = canvas.s
    box = _legend_box(canvas, frame, entries, lines)
    overlay = Image.new("RGBA", canvas.image.size, (0, 0, 0, 0))
    ImageDraw.Draw(overlay).rounded_rectangle(box, radius=4 * s, fill=(255, 255, 255, 225),
                                              outline=(200, 200, 200, 255), width=s)
    canvas.image.paste(overlay, (0, 0), overlay)
    row = canvas.text_height + 7 * s
    for i, entry in enumerate(entries):
        y = box[1] + 5 * s + row * i + row / 2
        x0 = box[0] + 10 * s
        canvas.draw.line([(x0, y), (x0 + 28 * s, y)], fill=entry.color, width=max(s, round(entry.width * s)))
        canvas.text(x0 + 36 * s, y, entry.label, align="left")


def _data_range(values: list[np.ndarray], masks: list[np.ndarray]) -> tuple[float, float]:
    kept = np.concatenate([v[m] for v, m in zip(values, masks, strict=True)])
    return float(kept.min()), float(kept.max())


def _render(path: str | Path, series: list[_Series], title: str, xlabel: str, ylabel: str, log_y: bool,
            size: tuple[int, int]) -> Path:
    masks = [_drawable(s, log_y) for s in series]
    if not any(m.any() for m in masks):
        what = "finite, positive" if log_y else "finite"
        raise ValueError(f"nothing to plot: no series has a {what} point (log_y={log_y})")
    canvas = _Canvas(size)
    frame = _layout(canvas, size, title, xlabel, ylabel, _data_range([s.x for s in series], masks),
                    _data_range([s.y for s in series], masks), log_y)
    _draw_grid_and_axes(canvas, frame)
    lines = _draw_series(canvas, frame, series, log_y)
    _draw_legend(canvas, frame, series, lines)
    s = canvas.s
    if title:
        canvas.text((frame.left + frame.right) / 2, 10 * s, title, valign="top", font=canvas.title_font)
    if xlabel:
        canvas.text((frame.left + frame.right) / 2, size[1] * s - 8 * s, xlabel, valign="bottom")
    if ylabel:
        canvas.vertical_text(12 * s + canvas.text_height / 2, (frame.top + frame.bottom) / 2, ylabel)
    return _save(canvas.finish(size), Path(path))


def _save(image: Image.Image, path: Path) -> Path:
    """Temporary file then rename: a reader (or a kill) never sees half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _check_size(size: tuple[int, int]) -> None:
    if size[0] < 200 or size[1] < 150:
        raise ValueError(f"size must be at least 200 x 150 pixels, got {size}")


def plot_curves(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
                xlabel: str = "training images", ylabel: str = "loss", log_y: bool = True,
                size: tuple[int, int] = (800, 500)) -> Path:
    """Draw ``{label: (xs, ys)}`` as lines, one palette colour each, with axes, grid and legend; return the path."""
    if not series:
        raise ValueError("plot_curves needs at least one series")
    _check_size(size)
    items = []
    for i, (label, (xs, ys)) in enumerate(series.items()):
        x, y = _as_array(xs, label), _as_array(ys, label)
        if x.shape != y.shape:
            raise ValueError(f"series {label!r}: {x.size} x values but {y.size} y values")
        items.append(_Series(label, x, y, _hex(PALETTE[i % len(PALETTE)]), 2.0))
    return _render(path, items, title, xlabel, ylabel, log_y, size)


def plot_loss_curve(path: str | Path, nimg: Sequence[float], loss: Sequence[float], smoothing: float = 0.9,
                    title: str = "training loss", xlabel: str = "training images", ylabel: str = "loss",
                    log_y: bool = True, size: tuple[int, int] = (800, 500)) -> Path:
    """The raw loss (light) under its bias-corrected EMA (bold); ``smoothing`` as TensorBoard's slider, 0 = none."""
    _check_size(size)
    x, y = _as_array(nimg, "loss"), _as_array(loss, "loss")
    if x.shape != y.shape:
        raise ValueError(f"{x.size} image counts but {y.size} loss values")
    color = _hex(PALETTE[0])
    smoothed = ema(np.where(y > 0, y, np.nan) if log_y else y, smoothing)
    items = [_Series("raw", x, y, _lighten(color, 0.65), 1.0),
             _Series(f"EMA {smoothing:g}", x, smoothed, color, 2.5)]
    return _render(path, items, title, xlabel, ylabel, log_y, size)
