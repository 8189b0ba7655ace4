"""``diffusekit report``: a run's report as one self-contained HTML file, once or every N seconds (``--watch``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError, UserError
from ..monitor.report import MAX_GRIDS, write_report
from .flags import positive_int

__all__ = ["add_parser", "cmd_report", "watch"]

_sleep = time.sleep  # looked up at each call, so that a test can stand in for the clock


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def _check_out(out: Path) -> None:
    """Checked before any work: the report's path names a file whose folders can exist."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'report.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out}: the report is an .html file")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {out}: {parent} is a file, not a directory")


def watch(regenerate: Callable[[], Path], every_s: float, sleep: Callable[[float], None] = time.sleep,
          iterations: int | None = None, warn: Callable[[Exception], None] | None = None) -> int:
    """Call ``regenerate`` and then ``sleep(every_s)``, ``iterations`` times (None: until Ctrl-C). Ctrl-C ends it
    cleanly: a report being written is left whole (its temporary file is removed). A failure of the first call is
    raised (bad input); a later UserError or OSError (the run started over, a disk briefly full) goes to ``warn``
    and the loop goes on. Returns the reports written."""
    written = attempts = 0
    try:
        while iterations is None or attempts < iterations:
            attempts += 1
            try:
                regenerate()
                written += 1
            except (UserError, OSError) as e:
                if attempts == 1 or warn is None:
                    raise
                warn(e)
            sleep(every_s)
    except KeyboardInterrupt:
        pass
    return written


def cmd_report(args) -> int:
    out = Path(args.out) if args.out else Path(args.run) / "report.html"
    if args.out:
        _check_out(out)
    if args.watch is None:
        path = write_report(args.run, out, max_grids=args.max_grids)
        print(f"wrote {path}", file=sys.stderr)
        return 0
    print(f"writing {out} every {args.watch:g} s (the page reloads itself); Ctrl-C stops", file=sys.stderr)
    written = watch(lambda: write_report(args.run, out, refresh_s=args.watch, max_grids=args.max_grids),
                    args.watch, sleep=_sleep,
                    warn=lambda e: print(f"diffusekit report: {e}; trying again in {args.watch:g} s", file=sys.stderr))
    print(f"stopped after {written} report(s); {out} is complete", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="write a run's report: one HTML file with its curves, samples and metrics",
                       description="Write one self-contained HTML file (no network access needed) with the run's "
                                   "training loss, per-noise-level losses, FID/KID, sample grids, memorization "
                                   "check, post-hoc EMA sweep, throughput, memory, config and environment.")
    r.add_argument("run", metavar="RUN_DIR", help="a run directory of `diffusekit train`")
    r.add_argument("--out", metavar="FILE.html", help="where to write it (default RUN_DIR/report.html)")
    r.add_argument("--watch", type=_positive_seconds, metavar="SECONDS",
                   help="rewrite the report every SECONDS until Ctrl-C (atomically; the page reloads itself)")
    r.add_argument("--max-grids", type=positive_int, default=MAX_GRIDS,
                   help=f"sample grids embedded at most, evenly spaced (default {MAX_GRIDS})")
    r.set_defaults(func=cmd_report)
