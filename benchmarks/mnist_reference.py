"""The two disjoint slices of MNIST's test split that the FID benchmarks score against.

Sampling settings are chosen by FID against ``val`` = test[1000:2000] and reported against ``test`` =
test[0:1000] (the slice of every earlier figure), so a reported FID is never one the settings were tuned on.
Both lie in the first half of the test split: its first 5,000 digits come from NIST's SD-3 writers and the
last 5,000 from SD-1's, which are harder to read (LeCun, Cortes & Burges, "The MNIST database",
yann.lecun.com/exdb/mnist), so a slice from the second half would differ from the reported one by more than
the choice of digits.
"""

from __future__ import annotations

from diffusekit.metrics.features import dataset_reference_stats

SLICE_STARTS = {"val": 1000, "test": 0}  # where each slice starts in MNIST's test split
MAX_COUNT = 1000  # the two slices are disjoint up to this many digits each


def reference_slice(split: str, count: int) -> tuple[int, int]:
    """(start, stop) in MNIST's test split of the first ``count`` digits of slice ``split``."""
    if split not in SLICE_STARTS:
        raise ValueError(f"unknown reference slice {split!r}; choose from {', '.join(SLICE_STARTS)}")
    if not 2 <= count <= MAX_COUNT:
        raise ValueError(f"the reference count must be in 2..{MAX_COUNT} (above it the validation and test "
                         f"slices overlap), got {count}")
    start = SLICE_STARTS[split]
    return start, start + count


def slice_label(split: str, count: int) -> str:
    """How rows name the slice, e.g. ``test[1000:2000]``."""
    start, stop = reference_slice(split, count)
    return f"test[{start}:{stop}]"


def reference_stats(extractor, split: str, count: int, log=None):
    """Inception statistics (features kept, cached) of slice ``split``."""
    start, stop = reference_slice(split, count)
    return dataset_reference_stats(extractor, "mnist", "test", stop - start, start=start, log=log)
