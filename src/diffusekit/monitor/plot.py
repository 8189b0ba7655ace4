"""Training curves as PNG files, drawn with matplotlib's Agg renderer (no pyplot: no global state, no display).

Points that cannot be drawn (NaN, +-inf, and y <= 0 on a log axis) are left out and break the line there, so a
diverged stretch shows as a gap rather than as a wrong value; a point standing alone between gaps gets a dot.
x tick labels use k/M/G suffixes. The PNG is written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_curves", "plot_loss_curve", "ema"]

DPI = 100


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


def _as_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"series {name!r} is empty")
    return array


def _drawable(x: np.ndarray, y: np.ndarray, log_y: bool) -> np.ndarray:
    """Mask of the points that can be placed on the chart."""
    ok = np.isfinite(x) & np.isfinite(y)
    return ok & (y > 0) if log_y else ok


def _isolated(mask: np.ndarray) -> list[int]:
    """Indices of drawable points with no drawable neighbour: a line through them would be invisible."""
    padded = np.concatenate([[False], mask, [False]])
    return np.flatnonzero(mask & ~padded[:-2] & ~padded[2:]).tolist()


def _check_size(size: tuple[int, int]) -> None:
    if size[0] < 200 or size[1] < 150:
        raise ValueError(f"size must be at least 200 x 150 pixels, got {size}")


@functools.cache
def _plain_log_formatter() -> type:
    """A ``LogFormatter`` that labels the ticks it would label, as plain numbers (0.2, 0.01, 1e-08)
    rather than as powers of ten."""
    from matplotlib.ticker import LogFormatter  # lazy: matplotlib takes most of a second to import

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter


def _figure(series: list[tuple[str | None, np.ndarray, np.ndarray, dict]], title: str, xlabel: str, ylabel: str,
            log_y: bool, size: tuple[int, int]) -> Figure:
    """The chart of ``(label, x, y, line style)`` series (label None: not in the legend), not yet saved."""
    masks = [_drawable(x, y, log_y) for _, x, y, _ in series]
    if not any(m.any() for m in masks):
        what = "finite, positive" if log_y else "finite"
        raise ValueError(f"nothing to plot: no series has a {what} point (log_y={log_y})")
    from matplotlib.figure import Figure  # lazy: matplotlib takes most of a second to import
    from matplotlib.ticker import EngFormatter  # lazy: matplotlib takes most of a second to import

    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    for (label, x, y, style), mask in zip(series, masks, strict=True):
        isolated = _isolated(mask)
        dots = {"marker": "o", "markersize": 3, "markevery": isolated} if isolated else {}
        axes.plot(x, np.where(mask, y, np.nan), label=label, **dots, **style)
    if log_y:
        axes.set_yscale("log")
        plain = _plain_log_formatter()
        axes.yaxis.set_major_formatter(plain())
        axes.yaxis.set_minor_formatter(plain(minor_thresholds=(2, 0.4)))  # 0.2, 0.5 ... labelled on short ranges
    axes.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.2M
    axes.grid(True, which="major", color="#e2e2e2")
    if log_y:
        axes.grid(True, which="minor", color="#f3f3f3")
    axes.set_axisbelow(True)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if any(label for label, *_ in series):
        axes.legend(loc="best")
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    """Temporary file then rename: a reader (or a kill) never sees half a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    FigureCanvasAgg(figure).print_png(tmp)
    os.replace(tmp, path)
    return path


def _curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> list:
    if not series:
        raise ValueError("plot_curves needs at least one series")
    out = []
    for i, (label, (xs, ys)) in enumerate(series.items()):
        x, y = _as_array(xs, label), _as_array(ys, label)
        if x.shape != y.shape:
            raise ValueError(f"series {label!r}: {x.size} x values but {y.size} y values")
        out.append((label, x, y, {"color": f"C{i % 10}", "linewidth": 1.5}))  # C0..C9: the Tableau 10 colours
    return out


def curves_figure(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
                  xlabel: str = "training images", ylabel: str = "loss", log_y: bool = True,
                  size: tuple[int, int] = (800, 500)) -> Figure:
    """:func:`plot_curves`' figure, unsaved."""
    _check_size(size)
    return _figure(_curves(series), title, xlabel, ylabel, log_y, size)


def plot_curves(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
                xlabel: str = "training images", ylabel: str = "loss", log_y: bool = True,
                size: tuple[int, int] = (800, 500)) -> Path:
    """Draw ``{label: (xs, ys)}`` as lines, one Tableau colour each, with axes, grid and legend; return the path."""
    return _save(curves_figure(series, title, xlabel, ylabel, log_y, size), path)


def loss_figure(nimg: Sequence[float], loss: Sequence[float], smoothing: float = 0.9, title: str = "training loss",
                xlabel: str = "training images", ylabel: str = "loss", log_y: bool = True,
                size: tuple[int, int] = (800, 500)) -> Figure:
    """:func:`plot_loss_curve`'s figure, unsaved."""
    _check_size(size)
    x, y = _as_array(nimg, "loss"), _as_array(loss, "loss")
    if x.shape != y.shape:
        raise ValueError(f"{x.size} image counts but {y.size} loss values")
    smoothed = ema(np.where(y > 0, y, np.nan) if log_y else y, smoothing)
    series = [("raw", x, y, {"color": "C0", "alpha": 0.35, "linewidth": 1.0}),
              (f"EMA {smoothing:g}", x, smoothed, {"color": "C0", "linewidth": 2.0})]
    return _figure(series, title, xlabel, ylabel, log_y, size)


def plot_loss_curve(path: str | Path, nimg: Sequence[float], loss: Sequence[float], smoothing: float = 0.9,
                    title: str = "training loss", xlabel: str = "training images", ylabel: str = "loss",
                    log_y: bool = True, size: tuple[int, int] = (800, 500)) -> Path:
    """The raw loss (light) under its bias-corrected EMA (bold); ``smoothing`` as TensorBoard's slider, 0 = none."""
    return _save(loss_figure(nimg, loss, smoothing, title, xlabel, ylabel, log_y, size), path)
