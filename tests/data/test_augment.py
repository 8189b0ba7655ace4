import math

import numpy as np
import pytest
import torch

from diffusekit.data.augment import AUGMENT_DIM, KINDS, AugmentSettings, augment


def _images(batch=6, channels=3, size=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, channels, size, size, generator=g, dtype=dtype) * 2 - 1)


def _run(images, seed=1, **settings):
    return augment(images, AugmentSettings(**settings), torch.Generator().manual_seed(seed))


def _quarter_turns(labels):
    """k in {0, 1, 2, 3} from the (sin, cos - 1) labels."""
    angle = torch.atan2(labels[:, 1], labels[:, 2] + 1)
    return (torch.round(angle / (math.pi / 2)).long() % 4).tolist()


def _shift(image, tx, ty):
    """out[..., i, j] = image[..., i - ty, j - tx], outside read by symmetric (edge-repeating) reflection."""
    array = image.numpy()
    h, w = array.shape[-2:]
    padded = np.pad(array, ((0, 0), (h, h), (w, w)), mode="symmetric")
    return torch.from_numpy(padded[:, h - ty: 2 * h - ty, w - tx: 2 * w - tx].copy())


def test_p_zero_is_identity_with_zero_labels():
    images = _images()
    out, labels = _run(images, p=0.0)
    assert torch.equal(out, images) and out is not images
    assert labels.shape == (6, AUGMENT_DIM) and not labels.any()


@pytest.mark.parametrize("size", [5, 8])
def test_xflip_is_exact(size):
    images = _images(size=size)
    out, labels = _run(images, p=1.0, kinds=("xflip",))
    assert torch.allclose(out, torch.flip(images, dims=[3]), atol=1e-5)
    assert (labels[:, 0] == 1).all() and not labels[:, 1:].any()


@pytest.mark.parametrize("size", [5, 8, 100])  # 100: not a power of two, where float32 grid math would be off
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rot90_is_exact_counterclockwise(size, dtype):
    images = _images(batch=24, size=size, dtype=dtype)
    out, labels = _run(images, p=1.0, kinds=("rot90",))
    turns = _quarter_turns(labels)
    assert set(turns) == {1, 2, 3}
    for image, result, k in zip(images, out, turns, strict=True):
        assert torch.allclose(result, torch.rot90(image, k, dims=(1, 2)), atol=1e-5)
    # one quarter turn moves the top-right pixel to the top-left (counterclockwise as displayed)
    first = turns.index(1)
    assert torch.allclose(out[first, :, 0, 0], images[first, :, 0, -1], atol=1e-5)
    assert not labels[:, [0, 3, 4, 5]].any()


@pytest.mark.parametrize("size", [7, 8, 100])
def test_translate_is_an_exact_reflected_shift(size):
    images = _images(batch=40, size=size)
    out, labels = _run(images, p=1.0, kinds=("translate",), translate=0.5)
    shifts = torch.round(labels[:, 3:5] * size).long()
    assert torch.allclose(labels[:, 3:5] * size, shifts.double())  # whole pixels
    limit = round(0.5 * size)
    assert shifts.abs().max() <= limit
    if size < 10:  # 80 draws: the whole range [-limit, limit] comes up
        assert set(shifts.flatten().tolist()) == set(range(-limit, limit + 1))
    for image, result, (tx, ty) in zip(images, out, shifts.tolist(), strict=True):
        assert torch.allclose(result, _shift(image, tx, ty), atol=1e-5)


def test_translate_direction_positive_moves_right_and_down():
    dot = -torch.ones(20, 1, 8, 8)
    dot[:, :, 4, 4] = 1.0
    out, labels = _run(dot, p=1.0, kinds=("translate",), translate=0.25)
    shifts = torch.round(labels[:, 3:5] * 8).long().tolist()
    assert {tx for tx, _ in shifts} == {-2, -1, 0, 1, 2}
    for result, (tx, ty) in zip(out, shifts, strict=True):
        assert result[0, 4 + ty, 4 + tx] == 1.0 and (result > 0).sum() == 1


def test_composition_order_flip_then_rotate_then_shift():
    images = _images(batch=30, size=8)
    out, labels = _run(images, p=1.0, kinds=("xflip", "rot90", "translate"), seed=3)
    turns = _quarter_turns(labels)
    shifts = torch.round(labels[:, 3:5] * 8).long().tolist()
    for image, result, k, (tx, ty) in zip(images, out, turns, shifts, strict=True):
        expected = _shift(torch.rot90(torch.flip(image, dims=[2]), k, dims=(1, 2)), tx, ty)
        assert torch.allclose(result, expected, atol=1e-5)


def test_scale_with_zero_std_is_identity():
    images = _images()
    out, labels = _run(images, p=1.0, kinds=("scale",), scale_std=0.0)
    assert torch.equal(out, images)
    assert not labels.any() and not torch.signbit(labels).any()


def test_scale_grows_the_second_moment_by_s_squared():
    size, sigma = 48, 2.5
    y, x = torch.meshgrid(torch.arange(size) - (size - 1) / 2, torch.arange(size) - (size - 1) / 2, indexing="ij")
    radius2 = x**2 + y**2
    blob = (torch.exp(-radius2 / (2 * sigma**2)) * 2 - 1).expand(32, 1, size, size)
    out, labels = _run(blob, p=1.0, kinds=("scale",), scale_std=0.3)
    mass = out + 1  # background -1 -> 0
    moment = (mass * radius2).sum(dim=(1, 2, 3)) / mass.sum(dim=(1, 2, 3))
    expected = 2 * sigma**2 * torch.exp2(2 * labels[:, 5])
    assert labels[:, 5].std() > 0.1 and not labels[:, :5].any()
    assert torch.allclose(moment, expected, rtol=0.1)


def test_same_seed_same_output_and_independent_kinds():
    images = _images(batch=50)
    settings = AugmentSettings(p=0.5)
    first = augment(images, settings, torch.Generator().manual_seed(7))
    second = augment(images, settings, torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    third = augment(images, settings, torch.Generator().manual_seed(8))
    assert not torch.equal(first[1], third[1])
    # turning kinds off leaves the draws of the others alone
    flips_only = augment(images, AugmentSettings(p=0.5, kinds=("xflip",)), torch.Generator().manual_seed(7))
    assert torch.equal(flips_only[1][:, 0], first[1][:, 0]) and not flips_only[1][:, 1:].any()
    # and so does p, for the draws after this call
    g, h = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    augment(images, AugmentSettings(p=0.0), g)
    augment(images, AugmentSettings(p=1.0), h)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=h))


def test_label_statistics_and_untouched_images_are_bit_identical():
    images = _images(batch=4000, channels=1, size=4, dtype=torch.float32)
    out, labels = _run(images, p=0.5)
    for column in (0, 1, 5):  # xflip, rot90 (sin or cos - 1 nonzero), scale
        applied = labels[:, column] != 0 if column != 1 else labels[:, 1:3].ne(0).any(dim=1)
        assert abs(applied.double().mean().item() - 0.5) < 0.04
    untouched = ~labels.ne(0).any(dim=1)
    assert 0.02 < untouched.double().mean() < 0.15  # about 1/16, less the translations that drew (0, 0)
    assert torch.equal(out[untouched], images[untouched])


def test_empty_batch_any_channels_dtype_and_device():
    out, labels = _run(torch.zeros(0, 5, 6, 6), p=1.0)
    assert out.shape == (0, 5, 6, 6) and labels.shape == (0, AUGMENT_DIM)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        images = _images(batch=4, channels=2, dtype=dtype)
        out, labels = _run(images, p=1.0, kinds=("xflip", "rot90"))
        assert out.dtype == dtype and labels.dtype == dtype and out.shape == images.shape
    if torch.cuda.is_available():
        images = _images(batch=8).to("cuda")
        out, labels = _run(images, p=0.7)
        reference = _run(images.cpu(), p=0.7)
        assert out.device == images.device == labels.device
        assert torch.allclose(out.cpu(), reference[0], atol=1e-5) and torch.equal(labels.cpu(), reference[1])


def test_non_square_images_need_no_rotation():
    images = torch.rand(3, 1, 6, 9) * 2 - 1
    out, labels = _run(images, p=1.0, kinds=("xflip", "translate"))
    assert out.shape == images.shape
    with pytest.raises(ValueError, match="square"):
        _run(images, p=1.0)


@pytest.mark.parametrize("bad, name", [
    (dict(p=1.5), "p"), (dict(p=-0.1), "p"), (dict(p=float("nan")), "p"),
    (dict(kinds=("xflip", "cutout")), "cutout"), (dict(kinds="xflip"), "kinds"),
    (dict(translate=0.6), "translate"), (dict(translate=-0.1), "translate"),
    (dict(scale_std=-1.0), "scale_std"), (dict(scale_std=float("inf")), "scale_std"),
])
def test_bad_settings_raise_with_the_name(bad, name):
    with pytest.raises(ValueError, match=name):
        AugmentSettings(**bad)


def test_defaults_and_bad_images():
    settings = AugmentSettings()
    assert settings.p == 0.0 and settings.kinds == KINDS
    with pytest.raises(ValueError):
        augment(torch.zeros(2, 8, 8), settings, None)
    with pytest.raises(ValueError):
        augment(torch.zeros(2, 1, 8, 8, dtype=torch.long), settings, None)
