"""The ``diffusekit`` command (also ``python -m diffusekit``), one module per command family:

- :mod:`~diffusekit.cli.train`: ``train``;
- :mod:`~diffusekit.cli.sample`: ``sample``;
- :mod:`~diffusekit.cli.info`: ``presets`` and ``info``;
- :mod:`~diffusekit.cli.evaluation`: ``fid``, ``ref-stats`` and ``eval``;
- :mod:`~diffusekit.cli.ema`: ``ema`` (post-hoc EMA reconstructions and their FID sweep);
- :mod:`~diffusekit.cli.restore`: ``restore`` (inverse problems; its files in :mod:`~diffusekit.cli.restore_io`);
- :mod:`~diffusekit.cli.report`: ``report`` (a run's HTML report);
- :mod:`~diffusekit.cli.tune_grid`: ``tune-grid`` (time grids tuned to a trained model, for ``sample --grid``);
- :mod:`~diffusekit.cli.flags`: what several commands share (guidance flags, ``--option``, threads, progress).

:func:`main` is the error boundary: a :class:`~diffusekit.errors.UserError` is printed as one line and exits with
its status (2, or 1 for a run that diverged or lost a process), and so is a path too long for the file system (2)
or a full disk (1); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys

from ..errors import UserError
from . import ema, evaluation, info, report, restore, sample, train, tune_grid

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusekit", description="Train and sample diffusion and flow-matching "
                                     "models. Durations and intervals count training images.")
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_parser(sub)
    sample.add_parser(sub)
    info.add_parsers(sub)
    evaluation.add_parsers(sub)
    restore.add_parser(sub)
    ema.add_parser(sub)
    report.add_parser(sub)
    tune_grid.add_parser(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except UserError as e:  # anything else is a bug in diffusekit: its traceback is what to report
        print(f"diffusekit {args.command}: error: {e}", file=sys.stderr)
        return e.exit_status
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # a path the user gave that no file system can hold
            name = str(e.filename)
            print(f"diffusekit {args.command}: error: a file name is too long for the file system: "
                  f"{name if len(name) <= 80 else name[:77] + '...'}", file=sys.stderr)
            return 2
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"diffusekit {args.command}: error: no space left on the device writing {e.filename or 'a file'}; "
              "files are replaced atomically, so what was written before is intact: free space and run it again "
              "(train: --resume auto)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"diffusekit {args.command}: interrupted", file=sys.stderr)
        return 130
