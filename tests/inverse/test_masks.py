"""Mask builders: exact layouts, reproducible random masks, mask files written with Pillow."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusekit.errors import InverseProblemError
from diffusekit.inverse.masks import box_mask, half_mask, load_mask, random_pixel_mask, stroke_mask
from diffusekit.inverse.operators import Inpaint


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _observed(rows):
    """A mask from strings, '.' = observed, '#' = missing."""
    return torch.tensor([[c == "." for c in row] for row in rows])


def test_every_builder_gives_a_bool_h_by_w_mask():
    for mask in (box_mask(6, 9), half_mask(6, 9), random_pixel_mask(6, 9, generator=_gen(0)),
                 stroke_mask(6, 9, generator=_gen(0))):
        assert mask.shape == (6, 9) and mask.dtype == torch.bool


def test_box_mask_default_is_the_centre_square_of_half_the_side():
    assert torch.equal(box_mask(6, 6), _observed([
        "......",
        ".###..",
        ".###..",
        ".###..",
        "......",
        "......",
    ]))
    assert torch.equal(box_mask(5, 5), _observed([".....", ".##..", ".##..", ".....", "....."]))
    mask = box_mask(8, 8)
    expected = torch.ones(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = False
    assert torch.equal(mask, expected)
    assert torch.equal(box_mask(4, 6, box=(1, 0, 2, 3)), _observed(["......", "###...", "###...", "......"]))


def test_half_masks():
    assert torch.equal(half_mask(4, 3), _observed(["...", "...", "###", "###"]))
    assert torch.equal(half_mask(4, 3, "top"), _observed(["###", "###", "...", "..."]))
    assert torch.equal(half_mask(2, 4, "left"), _observed(["##..", "##.."]))
    assert torch.equal(half_mask(2, 4, "right"), _observed(["..##", "..##"]))
    assert torch.equal(half_mask(3, 1, "bottom"), _observed([".", ".", "#"]))  # odd: the middle row observed


def test_random_pixel_mask_fraction_and_reproducibility():
    for missing in (0.0, 0.25, 0.5, 0.9):
        mask = random_pixel_mask(32, 24, missing, generator=_gen(1))
        assert (~mask).sum().item() == round(missing * 32 * 24)
    assert torch.equal(random_pixel_mask(16, 16, 0.5, _gen(3)), random_pixel_mask(16, 16, 0.5, _gen(3)))
    assert not torch.equal(random_pixel_mask(16, 16, 0.5, _gen(3)), random_pixel_mask(16, 16, 0.5, _gen(4)))
    # every pixel equally likely to be missing: over many draws each is missing about half the time
    counts = sum((~random_pixel_mask(4, 4, 0.5, _gen(seed))).int() for seed in range(2000))
    assert ((counts - 1000).abs() < 120).all()  # standard deviation ~22


def test_stroke_mask_is_reproducible_and_partial():
    a = stroke_mask(32, 40, generator=_gen(5))
    assert torch.equal(a, stroke_mask(32, 40, generator=_gen(5)))
    assert not torch.equal(a, stroke_mask(32, 40, generator=_gen(6)))
    for seed in range(20):
        mask = stroke_mask(16, 16, generator=_gen(seed), strokes=1, width=1)
        assert 0 < (~mask).sum() < 16 * 16
    thick = stroke_mask(64, 64, generator=_gen(1), strokes=4, width=9)
    thin = stroke_mask(64, 64, generator=_gen(1), strokes=4, width=3)
    assert ((~thin) & thick).sum() == 0  # same strokes: a thicker brush covers everything a thinner one does
    assert (~thick).sum() > (~thin).sum()


def _write(path, array):
    Image.fromarray(array).save(path)
    return path


def test_load_mask_round_trip_white_is_missing(tmp_path):
    missing = np.random.default_rng(0).random((5, 7)) < 0.4
    grey = np.where(missing, 255, 0).astype(np.uint8)
    assert torch.equal(load_mask(_write(tmp_path / "m.png", grey), 5, 7), torch.from_numpy(~missing))
    # colour files and grey levels: threshold at 128
    rgb = np.stack([np.where(missing, 200, 100).astype(np.uint8)] * 3, axis=-1)
    assert torch.equal(load_mask(_write(tmp_path / "rgb.png", rgb), 5, 7), torch.from_numpy(~missing))
    levels = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    assert torch.equal(load_mask(_write(tmp_path / "levels.png", levels), 1, 4), torch.tensor([[1, 1, 0, 0]]).bool())


def test_load_mask_resizes_by_nearest(tmp_path):
    missing = np.random.default_rng(1).random((4, 3)) < 0.5
    path = _write(tmp_path / "small.png", np.where(missing, 255, 0).astype(np.uint8))
    expected = torch.from_numpy(~missing).repeat_interleave(2, 0).repeat_interleave(3, 1)
    assert torch.equal(load_mask(path, 8, 9), expected)
    big = np.random.default_rng(2).random((8, 6)) < 0.5
    path = _write(tmp_path / "big.png", np.where(big, 255, 0).astype(np.uint8))
    # halving: each output pixel takes the input pixel at its centre, (2i + 1, 2j + 1)
    assert torch.equal(load_mask(path, 4, 3), torch.from_numpy(~big[1::2, 1::2]))


def test_load_mask_errors(tmp_path):
    with pytest.raises(InverseProblemError, match="nope.png does not exist"):
        load_mask(tmp_path / "nope.png", 4, 4)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InverseProblemError, match="junk.png is not a readable image"):
        load_mask(tmp_path / "junk.png", 4, 4)


def test_builder_errors_name_the_values():
    with pytest.raises(InverseProblemError, match=r"\(5, 0, 4, 4\) does not fit inside a 8x8 image"):
        box_mask(8, 8, box=(5, 0, 4, 4))
    with pytest.raises(InverseProblemError, match="unknown half 'middle'"):
        half_mask(4, 4, "middle")
    with pytest.raises(InverseProblemError, match=r"in \[0, 1\], got 1.5"):
        random_pixel_mask(4, 4, 1.5)
    with pytest.raises(InverseProblemError, match="height must be an integer >= 1, got 0"):
        stroke_mask(0, 4)
    with pytest.raises(InverseProblemError, match="strokes must be an integer >= 1, got 0"):
        stroke_mask(4, 4, strokes=0)


def test_masks_drive_inpaint_over_channels():
    mask = box_mask(8, 8)
    x = torch.randn(2, 3, 8, 8)
    y = Inpaint(mask).forward(x)
    assert torch.equal(y[:, :, 2:6, 2:6], torch.zeros(2, 3, 4, 4))
    assert torch.equal(y[:, :, :2], x[:, :, :2])
