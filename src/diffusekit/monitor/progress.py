"""A dependency-free progress bar for training loops that also behaves in log files.

One line looks like::

    train:  42%|############------------------| 420k/1.00M [0:34<0:47, 12.3k img/s, loss=0.0312]

On a terminal the line is redrawn in place (``\\r``) at most every ``min_interval`` seconds. When the stream
is not a terminal (a log file, CI), a full line is printed at most every ``log_interval`` seconds (default
``max(min_interval, 10 s)``): time-based rather than every 10 %, so a run of days still reports every few
seconds of wall time while a log gets at most 360 lines an hour. :meth:`ProgressBar.close` always prints
the final state.

The rate counts only what this session did: a resumed run starts at ``initial`` but its speed is measured
from where it resumed, so the ETA is not skewed by images done before the restart. It is an exponential
moving average (weight ``smoothing``) of the rates measured over successive ``min_interval`` windows.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["ProgressBar", "format_count", "format_duration"]

_PARTIAL = " ▏▎▍▌▋▊▉"  # eighths of a block, for a smooth bar on Unicode terminals


def format_count(x: float) -> str:
    """Compact count: 950, 1.23k, 45.6k, 789k, 1.00M, 2.5G; three significant digits once scaled."""
    if x == int(x) and abs(x) < 1000:
        return str(int(x))
    for suffix in ("", "k", "M", "G", "T"):
        if abs(x) < 999.5 or suffix == "T":
            return f"{x:#.3g}".rstrip(".") + suffix
        x /= 1000
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _format_postfix_value(value: Any) -> str:
    if hasattr(value, "item"):  # tensors and NumPy scalars
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """Progress of ``total`` units from ``initial``; :meth:`update` after each step, :meth:`close` at the end.

    ``clock`` is injectable for tests. ``tty`` forces terminal (``True``) or log (``False``) behaviour;
    ``ascii`` forces a ``#``/``-`` bar (the default picks Unicode blocks only on a UTF-8 stream).
    """

    def __init__(self, total: int, initial: int = 0, unit: str = "img", stream: IO[str] | None = None,
                 min_interval: float = 0.5, width: int = 30, clock: Callable[[], float] = time.monotonic,
                 disable: bool = False, desc: str = "", log_interval: float | None = None,
                 smoothing: float = 0.3, tty: bool | None = None, ascii: bool | None = None):
        if total <= 0:
            raise ValueError(f"total must be > 0, got {total}")
        self.total, self.n, self.initial, self.unit, self.desc = total, initial, initial, unit, desc
        self.stream = sys.stderr if stream is None else stream
        self.min_interval, self.width, self.clock, self.disable = min_interval, width, clock, disable
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.log_interval = max(min_interval, 10.0) if log_interval is None else log_interval
        encoding = (getattr(self.stream, "encoding", None) or "").lower().replace("-", "")
        self.ascii = encoding != "utf8" if ascii is None else ascii
        self.smoothing = smoothing
        self.postfix: dict[str, Any] = {}
        self.rate: float | None = None  # smoothed units per second, None until the first window
        self.start = self._last_sample = self._last_draw = clock()
        self._last_sample_n = initial
        self._drawn_width = 0
        self.closed = False

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Add ``n`` units done; keyword arguments update the postfix (``loss=0.0312``)."""
        self.n += n
        self.postfix.update(postfix)
        now = self.clock()
        self._sample_rate(now)
        interval = self.min_interval if self.tty else self.log_interval
        if now - self._last_draw >= interval:
            self._draw(now)

    def set_postfix(self, **postfix: Any) -> None:
        """Replace the postfix; shown at the next redraw."""
        self.postfix = dict(postfix)

    def _sample_rate(self, now: float, force: bool = False) -> None:
        """Fold the rate over the window since the last sample into the EMA, once windows are long enough."""
        dt = now - self._last_sample
        if dt <= 0 or (dt < self.min_interval and not force):
            return
        rate = (self.n - self._last_sample_n) / dt
        self.rate = rate if self.rate is None else self.smoothing * rate + (1 - self.smoothing) * self.rate
        self._last_sample, self._last_sample_n = now, self.n

    def _session_rate(self, now: float) -> float | None:
        """The smoothed rate, or before the first window the plain rate of this session so far."""
        if self.rate is not None:
            return self.rate
        elapsed = now - self.start
        return (self.n - self.initial) / elapsed if elapsed > 0 else None

    def _bar(self, fraction: float) -> str:
        if self.ascii:
            filled = int(fraction * self.width)
            return "#" * filled + "-" * (self.width - filled)
        eighths = int(fraction * self.width * 8)
        full, part = divmod(eighths, 8)
        bar = "█" * full + (_PARTIAL[part] if full < self.width else "")
        return bar.ljust(self.width)

    def format(self, now: float | None = None) -> str:
        """The current line, without ``\\r`` or newline."""
        now = self.clock() if now is None else now
        fraction = min(max(self.n / self.total, 0.0), 1.0)
        rate = self._session_rate(now)
        remaining = max(self.total - self.n, 0)
        eta = remaining / rate if rate else (0.0 if remaining == 0 else math.inf)
        speed = f"{format_count(rate)} {self.unit}/s" if rate is not None else f"? {self.unit}/s"
        fields = [f"{format_duration(now - self.start)}<{format_duration(eta)}", speed]
        fields += [f"{k}={_format_postfix_value(v)}" for k, v in self.postfix.items()]
        prefix = f"{self.desc}: " if self.desc else ""
        return (f"{prefix}{100 * fraction:3.0f}%|{self._bar(fraction)}| "
                f"{format_count(self.n)}/{format_count(self.total)} [{', '.join(fields)}]")

    def _draw(self, now: float) -> None:
        self._last_draw = now
        if self.disable:
            return
        line = self.format(now)
        if self.tty:  # pad with spaces to wipe the end of a longer previous line
            self.stream.write("\r" + line + " " * max(self._drawn_width - len(line), 0))
            self._drawn_width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def write(self, message: str) -> None:
        """Print ``message`` on its own line without breaking the bar (it is redrawn below on a terminal)."""
        if self.disable:
            return
        if self.tty and self._drawn_width:
            self.stream.write("\r" + " " * self._drawn_width + "\r" + message + "\n")
            self._drawn_width = 0
            self._draw(self.clock())
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Draw the final state (always) and end the line; calling it again does nothing."""
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        self._sample_rate(now, force=self.rate is None)
        self._draw(now)
        if self.tty and not self.disable:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
