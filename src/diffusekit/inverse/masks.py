"""Inpainting masks: bool ``[H, W]`` tensors (CPU), True = observed, False = missing.

Pass one to :class:`~diffusekit.inverse.operators.Inpaint`; it broadcasts over the channels.

- :func:`box_mask`: a missing rectangle (by default the centre square of half the side);
- :func:`half_mask`: one half missing (bottom, top, left or right);
- :func:`random_pixel_mask`: a given fraction of the pixels missing, chosen uniformly;
- :func:`stroke_mask`: thick random free-form strokes missing, in the spirit of the free-form masks of Yu et al.,
  "Free-form image inpainting with gated convolution", ICCV 2019 (Algorithm 1): random polylines of a few
  segments with turning directions, drawn with a round brush;
- :func:`load_mask`: an image file, white = missing (the convention of the LaMa and DeepFill mask sets).
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InverseProblemError

__all__ = ["box_mask", "half_mask", "random_pixel_mask", "stroke_mask", "load_mask"]

_SIDES = ("bottom", "top", "left", "right")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _check_size(h, w) -> tuple[int, int]:
    for name, value in (("height", h), ("width", w)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise InverseProblemError(f"the mask {name} must be an integer >= 1, got {value!r}")
    return int(h), int(w)


def box_mask(h: int, w: int, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """``[h, w]`` observed everywhere except the rectangle ``box = (top, left, height, width)``; by default the
    centred ``h // 2 x w // 2`` rectangle (top ``(h - h // 2) // 2``, left ``(w - w // 2) // 2``)."""
    h, w = _check_size(h, w)
    if box is None:
        box = ((h - h // 2) // 2, (w - w // 2) // 2, h // 2, w // 2)
    try:
        top, left, height, width = (int(v) for v in box)
    except (TypeError, ValueError):
        raise InverseProblemError(f"the box must be four integers (top, left, height, width), got {box!r}") from None
    if top < 0 or left < 0 or height < 1 or width < 1 or top + height > h or left + width > w:
        raise InverseProblemError(f"the box (top, left, height, width) = {(top, left, height, width)} does not fit "
                                  f"inside a {h}x{w} image")
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[top:top + height, left:left + width] = False
    return mask


def half_mask(h: int, w: int, missing: str = "bottom") -> torch.Tensor:
    """``[h, w]`` with one half missing: the last ``h // 2`` rows ("bottom"), the first ``h // 2`` ("top"), the
    first ``w // 2`` columns ("left") or the last ``w // 2`` ("right"). For an odd side the middle row or column
    stays observed."""
    h, w = _check_size(h, w)
    if missing not in _SIDES:
        raise InverseProblemError(f"unknown half {missing!r}: use one of {', '.join(_SIDES)}")
    mask = torch.ones(h, w, dtype=torch.bool)
    if missing == "bottom":
        mask[h - h // 2:] = False
    elif missing == "top":
        mask[:h // 2] = False
    elif missing == "left":
        mask[:, :w // 2] = False
    else:
        mask[:, w - w // 2:] = False
    return mask


def random_pixel_mask(h: int, w: int, missing: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[h, w]`` with ``round(missing * h * w)`` pixels missing, a uniformly random subset (drawn with
    ``generator``): the fraction missing is exact up to rounding, not merely in expectation."""
    h, w = _check_size(h, w)
    if not (isinstance(missing, numbers.Real) and 0 <= missing <= 1):
        raise InverseProblemError(f"the fraction of missing pixels must be in [0, 1], got {missing!r}")
    count = round(float(missing) * h * w)
    device = generator.device if generator is not None else "cpu"
    chosen = torch.randperm(h * w, generator=generator, device=device)[:count].cpu()
    mask = torch.ones(h * w, dtype=torch.bool)
    mask[chosen] = False
    return mask.reshape(h, w)


def _segment_distance(ys: torch.Tensor, xs: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Distance from every pixel centre ``(ys, xs)`` to the segment ``start -> end`` (points as ``(y, x)``)."""
    direction = end - start
    length2 = float(direction @ direction)
    py, px = ys - start[0], xs - start[1]
    if length2 == 0:
        return torch.sqrt(py**2 + px**2)
    along = ((py * direction[0] + px * direction[1]) / length2).clamp(0, 1)
    return torch.sqrt((py - along * direction[0]) ** 2 + (px - along * direction[1]) ** 2)


def stroke_mask(h: int, w: int, generator: torch.Generator | None = None, strokes: int = 4,
                width: float | None = None) -> torch.Tensor:
    """``[h, w]`` with ``strokes`` thick random polylines missing, drawn with ``generator`` (reproducible).

    Each stroke starts at a uniformly random pixel centre and runs through 2 to 5 segments; each segment turns by
    up to 90 degrees either way from the last, is ``0.1`` to ``0.3`` of the shorter side long and is clipped to
    the image. A pixel is missing when its centre lies within ``width / 2`` of a stroke (a round brush);
    ``width`` defaults to ``max(2, round(min(h, w) / 12))`` pixels. A stroke always covers its starting pixel,
    so the mask is never full."""
    h, w = _check_size(h, w)
    if isinstance(strokes, bool) or not isinstance(strokes, numbers.Integral) or strokes < 1:
        raise InverseProblemError(f"the number of strokes must be an integer >= 1, got {strokes!r}")
    side = min(h, w)
    if width is None:
        width = max(2, round(side / 12))
    if not (isinstance(width, numbers.Real) and math.isfinite(width) and width > 0):
        raise InverseProblemError(f"the stroke width must be a number of pixels > 0, got {width!r}")
    device = generator.device if generator is not None else "cpu"

    def uniform(n: int) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu()

    ys = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    limit = torch.tensor([h - 1, w - 1], dtype=torch.float64)
    missing = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(int(strokes)):
        start_u, angle_u, count_u = uniform(4).split([2, 1, 1])
        point = (start_u * torch.tensor([h, w], dtype=torch.float64)).floor().minimum(limit)
        angle = float(angle_u) * 2 * math.pi
        segments = 2 + min(int(float(count_u) * 4), 3)
        turns, lengths = uniform(segments), uniform(segments)
        for turn, length in zip(turns.tolist(), lengths.tolist(), strict=True):
            angle += (turn - 0.5) * math.pi
            step = (0.1 + 0.2 * length) * side
            end = (point + step * torch.tensor([math.sin(angle), math.cos(angle)], dtype=torch.float64))
            end = end.clamp(min=torch.zeros(2, dtype=torch.float64), max=limit)
            missing |= _segment_distance(ys, xs, point, end) <= width / 2
            point = end
    return ~missing


def load_mask(path: str | Path, h: int, w: int) -> torch.Tensor:
    """A mask image as ``[h, w]``: white (grey level >= 128) = MISSING, darker = observed, the convention of the
    LaMa / DeepFill mask sets. Colour images are converted to grey first (alpha ignored). A file of another size
    is resized by nearest neighbour at pixel centres (``mode="nearest-exact"``). A missing or unreadable file
    raises :class:`~diffusekit.errors.InverseProblemError`."""
    h, w = _check_size(h, w)
    path = Path(path)
    if not path.is_file():
        raise InverseProblemError(f"mask file {path} does not exist: give an image with white = missing")
    try:
        with Image.open(path) as image:
            image.load()
            grey = np.asarray(image.convert("L"))
    except _DECODE_ERRORS as error:
        raise InverseProblemError(f"mask file {path} is not a readable image ({error})") from None
    observed = torch.from_numpy(grey < 128)
    if observed.shape != (h, w):
        resized = F.interpolate(observed[None, None].to(torch.uint8), size=(h, w), mode="nearest-exact")
        observed = resized[0, 0].bool()
    return observed
