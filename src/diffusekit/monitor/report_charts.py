"""The charts of a run report, as PNG bytes: drawn with :mod:`diffusekit.monitor.plot`'s figures (Agg, no pyplot).

Each function takes the records of :class:`~diffusekit.monitor.run_files.RunFiles` and returns the PNG, or None
when the records hold nothing to draw. A log-scale chart whose values are not all positive is drawn on a
linear axis instead: the report shows every run it can rather than failing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from .plot import _plain_log_formatter, curves_figure, loss_figure

__all__ = ["png_bytes", "series", "line_chart", "loss_chart", "fid_chart", "sweep_chart"]

SIZE = (640, 320)  # pixels: two charts side by side fit a laptop screen


def png_bytes(figure) -> bytes:
    """A matplotlib figure as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def series(records: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    """(cur_nimg, value) of the records that hold a number under ``key``."""
    points = [(float(r["cur_nimg"]), float(r[key])) for r in records
              if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
    return [x for x, _ in points], [y for _, y in points]


def _positive(lines: Mapping[str, tuple[list[float], list[float]]]) -> bool:
    return all(y > 0 for _, ys in lines.values() for y in ys if math.isfinite(y))


def _has_finite(lines: Mapping[str, tuple[list[float], list[float]]]) -> bool:
    return any(math.isfinite(y) for _, ys in lines.values() for y in ys)


def line_chart(lines: Mapping[str, tuple[list[float], list[float]]], title: str, ylabel: str,
               log_y: bool = False, xlabel: str = "training images") -> bytes | None:
    """Named (x, y) lines on one chart; None when no line has a finite point."""
    lines = {name: xy for name, xy in lines.items() if xy[0]}
    if not lines or not _has_finite(lines):
        return None
    figure = curves_figure(lines, title=title, xlabel=xlabel, ylabel=ylabel, log_y=log_y and _positive(lines),
                           size=SIZE)
    return png_bytes(figure)


def loss_chart(records: Sequence[Mapping]) -> bytes | None:
    """The training loss, raw and smoothed (TensorBoard's EMA, lighter for short runs), log y where positive."""
    x, y = series(records, "loss")
    if not x or not _has_finite({"loss": (x, y)}):
        return None
    smoothing = 0.9 if len(x) >= 200 else 0.6  # as loss.png: 0.9 would lag far behind a short curve
    return png_bytes(loss_figure(x, y, smoothing=smoothing, log_y=_positive({"loss": (x, y)}), size=SIZE))


def fid_chart(records: Sequence[Mapping], key: str, best: tuple[float, float] | None,
              title: str) -> bytes | None:
    """``key`` (fid or kid) over training, with the best checkpoint's (images, value) marked by a star."""
    x, y = series(records, key)
    lines = {key.upper(): (x, y)}
    if not x or not _has_finite(lines):
        return None
    figure = curves_figure(lines, title=title, ylabel=key.upper(), log_y=_positive(lines), size=SIZE)
    if best is not None:
        axes = figure.axes[0]
        axes.plot([best[0]], [best[1]], marker="*", markersize=16, color="C3", linestyle="none",
                  label=f"best checkpoint ({best[1]:.4g} at {best[0]:,.0f} images)")
        axes.legend(loc="best")
    return png_bytes(figure)


def sweep_chart(rows: Sequence[Mapping], best: Mapping | None) -> bytes | None:
    """FID against the post-hoc EMA width sigma_rel (log x), the chosen width marked by a star."""
    lines = {"FID": ([float(r["sigma_rel"]) for r in rows], [float(r["fid"]) for r in rows])}
    if not rows or not _has_finite(lines) or min(lines["FID"][0]) <= 0:
        return None
    figure = curves_figure(lines, title="FID of the post-hoc EMA sweep", xlabel="sigma_rel (EMA width)",
                           ylabel="FID", log_y=False, size=SIZE)
    axes = figure.axes[0]
    axes.set_xscale("log")
    plain = _plain_log_formatter()  # 0.05, 0.1, 0.2 rather than powers of ten
    axes.xaxis.set_major_formatter(plain())
    axes.xaxis.set_minor_formatter(plain(minor_thresholds=(2, 0.4)))
    for line in axes.get_lines():
        line.set_marker("o")
    if best and isinstance(best.get("sigma_rel"), int | float) and isinstance(best.get("fid"), int | float):
        axes.plot([best["sigma_rel"]], [best["fid"]], marker="*", markersize=16, color="C3", linestyle="none",
                  label=f"best: sigma_rel {best['sigma_rel']:g}, FID {best['fid']:.4g}")
        axes.legend(loc="best")
    return png_bytes(figure)
