"""TensorBoard event files of a run, written by tensorboardX (TensorBoard itself is not needed to write them).

tensorboardX rather than ``torch.utils.tensorboard``: the latter imports the ``tensorboard`` package (the
viewer, with its web server's dependencies) just to write, while tensorboardX needs only protobuf and NumPy.
:func:`read_scalars` reads files back with TensorBoard's own reader, so it needs ``tensorboard`` installed
(a ``dev`` extra of this project: the tests use it).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["TensorBoardWriter", "read_scalars"]

_writer_ids = itertools.count()  # with the pid in the file name: two writers in one second get two files


class TensorBoardWriter:
    """Scalars and images for TensorBoard, in a new ``events.out.tfevents.<time>.<host>.<pid>.<n>`` file under
    ``log_dir``.

    ``purge_step``: on resume, the step of the checkpoint. A ``SessionLog(START)`` event at that step makes
    TensorBoard hide what an earlier, killed run logged at steps >= ``purge_step``. tensorboardX hands events to a
    writer thread, which flushes them to the file every ``flush_secs`` seconds; :meth:`flush` flushes what that
    thread has received (an event logged a moment before may wait for the next periodic flush) and :meth:`close`
    writes everything. A killed run loses about ``flush_secs`` of events.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, flush_secs: float = 10.0):
        from tensorboardX import SummaryWriter  # lazy: ~0.1 s of protobuf imports, needed only once a run writes

        # A diverged run logs NaN on purpose (metrics.jsonl keeps it too); tensorboardX would warn about it on every
        # logged step, breaking the progress bar's line.
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=flush_secs,
                                     filename_suffix=f".{os.getpid()}.{next(_writer_ids)}")
        self.closed = False

    def _check_open(self) -> Any:
        if self.closed:  # tensorboardX would silently start a new file
            raise ValueError(f"TensorBoardWriter for {self.log_dir} is closed")
        return self._writer

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Log ``value`` (a float, 0-d tensor or NumPy scalar; stored as float32) under ``tag`` at ``step``."""
        self._check_open().add_scalar(tag, float(value), int(step), walltime=wall_time)

    def add_scalars(self, values: Mapping[str, float], step: int, wall_time: float | None = None) -> None:
        """Log several tags at one step, each tag its own curve (unlike tensorboardX's ``add_scalars``, which
        writes each to a run of its own)."""
        for tag, value in values.items():
            self.add_scalar(tag, value, step, wall_time)

    def add_image(self, tag: str, image: Any, step: int, dataformats: str = "CHW") -> None:
        """Log an image (uint8 0..255 or float 0..1; tensor or array laid out as ``dataformats``) as a PNG."""
        self._check_open().add_image(tag, image, int(step), dataformats=dataformats)

    def flush(self) -> None:
        if not self.closed:
            self._writer.flush()

    def close(self) -> None:
        if not self.closed:
            self._writer.close()
            self.closed = True

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_scalars(path: str | Path) -> list[tuple[str, int, float]]:
    """``(tag, step, value)`` of every scalar in an event file or a directory of them, tag by tag in step order,
    as TensorBoard shows them: read by its ``EventAccumulator``, with what a resumed run purged left out."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import (  # lazy: tensorboard is a dev dependency
            SCALARS,
            EventAccumulator,
        )
    except ImportError as e:
        raise ImportError(f"reading TensorBoard files needs the tensorboard package (pip install tensorboard): {e}") \
            from None
    accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0})  # 0: keep every event
    accumulator.Reload()
    return [(tag, event.step, event.value) for tag in accumulator.Tags()["scalars"]
            for event in accumulator.Scalars(tag)]
