"""Watching a run from its directory: metrics log (JSONL), TensorBoard event files, a progress bar, loss plots.

``metrics.jsonl`` is the record of a run; TensorBoard files and plots are views of the same values.
"""

from __future__ import annotations

from .metrics import MetricsLog, read_metrics
from .plot import plot_curves, plot_loss_curve
from .progress import ProgressBar
from .tensorboard import TensorBoardWriter, read_scalars

__all__ = ["MetricsLog", "read_metrics", "TensorBoardWriter", "read_scalars", "ProgressBar", "plot_curves",
           "plot_loss_curve"]
