"""Progress bars for training, sampling and feature extraction: tqdm, with whole lines in log files.

On a terminal the bar is tqdm's own, redrawn in place (``\\r``) at most every ``mininterval`` seconds. When the
stream is not a terminal (a log file, CI), every redraw is instead a whole line ending in a newline, at most every
``log_interval`` seconds (default 10 s): time-based rather than every 10 %, so a run of days still reports every
few seconds of wall time while a log gets at most 360 lines an hour. :meth:`ProgressBar.close` always prints the
final state. tqdm measures the rate from ``initial``, so a resumed run's ETA counts only this session's speed.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

__all__ = ["ProgressBar"]


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar(tqdm):
    """A tqdm bar over ``total`` units from ``initial``; :meth:`update` after each step, :meth:`close` at the end.

    ``tty`` forces terminal (``True``) or log (``False``) behaviour; by default it is the stream's ``isatty()``.
    ``disable=True`` prints nothing (``--quiet``). Other keyword arguments go to :class:`tqdm.tqdm`.
    """

    def __init__(self, total: int, initial: int = 0, unit: str = "img", desc: str = "", disable: bool = False,
                 file: IO[str] | None = None, mininterval: float = 0.5, log_interval: float = 10.0,
                 tty: bool | None = None, **kwargs: Any):
        if total <= 0:
            raise ValueError(f"total must be > 0, got {total}")
        file = sys.stderr if file is None else file
        self.tty = _is_tty(file) if tty is None else tty
        if not self.tty:  # one line per log_interval; tqdm's monitor thread must not force redraws more often
            mininterval = max(mininterval, log_interval)
            kwargs.setdefault("maxinterval", mininterval)
            kwargs.setdefault("leave", False)  # close() prints the final line itself: no '\r' to clear it
        super().__init__(total=total, initial=initial, unit=unit, unit_scale=True, desc=desc or None,
                         disable=disable, file=file, mininterval=mininterval, **kwargs)

    def status_printer(self, file: IO[str]):
        """tqdm's in-place printer on a terminal; in a log, each non-empty state as a line of its own."""
        if self.tty:
            return tqdm.status_printer(file)

        def print_line(line: str) -> None:
            if line:
                file.write(line + "\n")
                file.flush()

        return print_line

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        if not self.tty and msg == "":  # tqdm clearing its line: a log has none to clear
            return False
        return super().display(msg, pos)

    def moveto(self, n: int) -> None:
        if self.tty:  # nested bars: cursor movement, which a log cannot do
            super().moveto(n)

    def clear(self, nolock: bool = False) -> None:
        if self.tty:
            super().clear(nolock)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = False, **kwargs: Any) -> None:
        """As tqdm's, but shown at the next redraw (``refresh=False``), so a log gets no extra lines; tensors and
        NumPy scalars are shown as numbers."""
        values = {**(ordered_dict or {}), **kwargs}
        values = {k: v.item() if hasattr(v, "item") else v for k, v in values.items()}
        super().set_postfix(values, refresh=refresh)

    def write(self, message: str) -> None:  # tqdm's is a classmethod printing to stdout; this prints to the bar's file
        """Print ``message`` on its own line, to the bar's stream; on a terminal the bar is redrawn below it."""
        if self.disable:
            return
        if self.tty:
            tqdm.write(message, file=self.fp)
        else:
            self.fp.write(message + "\n")
            self.fp.flush()

    def close(self) -> None:
        """Print the final state (always) and end the line; calling it again does nothing."""
        if not getattr(self, "tty", True) and not self.disable:  # no tty: __init__ refused its arguments
            self.refresh()
        super().close()
