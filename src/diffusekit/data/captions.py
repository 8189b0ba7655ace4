"""Captions for the labelled built-in datasets: text conditioning from the class label (``data.captions``).

``moving-mnist`` (clips of one bouncing digit, whose label is the digit) has captions that describe a moving digit.

Each class gets a few phrasings built from templates. The ``train`` templates are the only captions a
text-conditioned run sees; the ``heldout`` templates are disjoint paraphrases (no template and no caption in
common with ``train``), kept for measuring whether a model generalises to wording it never saw.

:func:`captions_for` returns ``captions[class][j]``, one list of captions per class in label order.
"""

from __future__ import annotations

__all__ = ["CAPTIONED_DATASETS", "SPLITS", "captions_for"]

SPLITS = ("train", "heldout")

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {w}: the number as a word, {d}: the numeral
_MNIST = {
    "train": ("a handwritten {w}", "the digit {d}", "a hand-drawn number {w}", "the number {w} written by hand",
              "an image of the digit {w}"),
    "heldout": ("a scribbled numeral {d}", "someone wrote the figure {w} with a pen",
                "a pencil sketch of the number {d}"),
}
# {n}: the item with its article
_FASHION_ITEMS = ("a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt",
                  "a sneaker", "a bag", "an ankle boot")
_FASHION = {
    "train": ("{n}", "a photo of {n}", "a grayscale picture of {n}", "a product image of {n}",
              "a small black and white photo of {n}"),
    "heldout": ("{n} shown on a plain dark background", "a catalogue snapshot featuring {n}",
                "a low-resolution thumbnail depicting {n}"),
}


_MOVING_MNIST = {
    "train": ("a handwritten {w} moving", "the digit {d} bouncing around", "a video of the number {w}",
              "a moving digit {w}", "the number {w} sliding across the frame"),
    "heldout": ("a clip where a scribbled {d} drifts about", "a pen-drawn figure {w} in motion",
                "the numeral {d} travelling around the screen"),
}


def _moving_mnist(split: str) -> list[list[str]]:
    return [[t.format(w=w, d=d) for t in _MOVING_MNIST[split]] for d, w in enumerate(_DIGIT_WORDS)]


def _mnist(split: str) -> list[list[str]]:
    return [[t.format(w=w, d=d) for t in _MNIST[split]] for d, w in enumerate(_DIGIT_WORDS)]


def _fashion(split: str) -> list[list[str]]:
    return [[t.format(n=n) for t in _FASHION[split]] for n in _FASHION_ITEMS]


_BUILDERS = {"mnist": _mnist, "fashion-mnist": _fashion, "moving-mnist": _moving_mnist}
CAPTIONED_DATASETS = tuple(_BUILDERS)


def captions_for(dataset: str, split: str = "train") -> list[list[str]]:
    """The captions of ``dataset`` per class (``[class][j]``) for ``split`` ("train" or "heldout")."""
    if dataset not in _BUILDERS:
        raise ValueError(f"dataset {dataset!r} has no captions; captions exist for {', '.join(CAPTIONED_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"caption split must be one of {', '.join(SPLITS)}, got {split!r}")
    return _BUILDERS[dataset](split)
