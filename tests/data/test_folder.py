import io

import numpy as np
import pytest
from PIL import Image

from diffusekit.data.folder import image_folder, load_image_folder, read_image


def _save(path, array, mode=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path, **kwargs)
    return path


def _solid(color, size=(16, 16)):
    return np.broadcast_to(np.array(color, np.uint8), (size[1], size[0], len(color)))


def test_unlabelled_folder_of_every_format(tmp_path):
    for ext in ("png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "PNG"):
        _save(tmp_path / f"im.{ext}", _solid((0, 200, 0)), "RGB", **({"quality": 100} if ext == "jpg" else {}))
    (tmp_path / "notes.txt").write_text("not an image")
    _save(tmp_path / ".hidden.png", _solid((9, 9, 9)))
    with pytest.warns(UserWarning, match=r"skipped 1 of 10 files: 1 not images \(notes\.txt\)"):
        data = image_folder(tmp_path, 8, workers=2)
    assert data.images.shape == (9, 8, 8, 3) and data.num_classes == 0 and not data.labels.any()
    assert np.abs(data.images.astype(int) - (0, 200, 0)).max() <= 6  # lossy jpg / webp


def test_class_subfolders_recursive_and_sorted(tmp_path):
    _save(tmp_path / "dogs" / "b.png", _solid((255, 255, 255)))
    _save(tmp_path / "dogs" / "deep" / "a.png", _solid((255, 255, 255)))
    _save(tmp_path / "cats" / "x.png", _solid((0, 0, 0)))
    (tmp_path / ".cache").mkdir()
    data = image_folder(tmp_path, 4, channels=1, workers=1)
    assert data.class_names == ("cats", "dogs") and data.num_classes == 2 and data.labels.tolist() == [0, 1, 1]
    assert data.images.shape == (3, 4, 4, 1) and data.images[:, 0, 0, 0].tolist() == [0, 255, 255]


def test_transparency_on_white_and_center_crop(tmp_path):
    wide = np.zeros((20, 60, 4), np.uint8)  # red | green | blue thirds, the middle one opaque
    wide[:, :20], wide[:, 20:40], wide[:, 40:] = (255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255)
    wide[:5, 20:40, 3] = 0
    image = read_image(_save(tmp_path / "wide.png", wide, "RGBA"), 10)  # 60x20 -> 30x10, crop the middle 10x10
    assert image.shape == (10, 10, 3) and image[5:, 0].tolist() == [[0, 255, 0]] * 5
    assert image[:2, 0].tolist() == [[255, 255, 255]] * 2  # transparent -> white
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.save(tmp_path / "p.gif", transparency=1)
    assert read_image(tmp_path / "p.gif", 8).max(axis=(0, 1)).tolist() == [255, 255, 255]


def test_exif_orientation_and_16_bit(tmp_path):
    left_dark = np.full((10, 10, 3), 255, np.uint8)
    left_dark[:, :5] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: the left side goes on top
    image = read_image(_save(tmp_path / "rotated.png", left_dark, "RGB", exif=exif), 10)
    assert image[:5].max() == 0 and image[5:].min() == 255
    deep = Image.fromarray(np.full((4, 4), 257 * 100, np.uint16))
    deep.save(tmp_path / "deep.png")
    assert read_image(tmp_path / "deep.png", 4, channels=1).ravel().tolist() == [100] * 16


def test_filters_shrink_and_enlarge_a_constant_exactly(tmp_path):
    blocks = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, np.ones((8, 8), np.uint8))  # 32x32
    path = _save(tmp_path / "blocks.png", blocks)
    assert read_image(path, 4, channels=1)[..., 0].tolist() == (np.arange(16).reshape(4, 4) * 16).tolist()  # BOX
    assert read_image(_save(tmp_path / "flat.png", _solid((7, 8, 9), (3, 5))), 12).reshape(-1, 3).tolist() == [
        [7, 8, 9]] * 144  # BICUBIC, enlarged


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        image_folder(tmp_path / "nowhere", 8)
    with pytest.raises(ValueError, match="no usable images in .* \\(looked for .bmp"):
        image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="is not a directory"):
        image_folder(_save(tmp_path / "a.png", _solid((1, 2, 3))), 8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"also images outside them: a\.png"):
        image_folder(tmp_path, 8)
    (tmp_path / "a.png").unlink()
    with pytest.raises(ValueError, match="no usable images in"):
        image_folder(tmp_path, 8)


def _truncated(path, fmt):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, fmt)
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    return path


def _bad_folder(root):
    """A labelled folder with one of each kind of bad file, and 3 good images in 2 classes."""
    _save(root / "cats" / "good1.png", _solid((10, 20, 30)))
    _save(root / "cats" / "good2.jpg", _solid((10, 20, 30)), quality=100)
    _save(root / "dogs" / "good.png", _solid((200, 200, 200)))
    _truncated(root / "cats" / "cut.png", "PNG")
    _truncated(root / "dogs" / "cut.jpg", "JPEG")
    (root / "dogs" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    _save(root / "dogs" / "tiny.png", _solid((1, 1, 1), (2, 2)))
    _save(root / "dogs" / "strip.png", _solid((1, 1, 1), (40, 1)))
    (root / "dogs" / "notes.txt").write_text("labels")
    (root / "dogs" / ".DS_Store").write_bytes(b"hidden, ignored")
    (root / "README.md").write_text("about")
    (root / "birds").mkdir()  # an empty class
    (root / "fish").mkdir()  # a class whose only image is corrupt
    (root / "fish" / "nemo.png").write_bytes(b"not a png")
    return root


def test_bad_files_are_skipped_by_category_with_one_warning(tmp_path):
    root = _bad_folder(tmp_path)
    with pytest.warns(UserWarning) as caught:
        data = image_folder(root, 8)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{root}: skipped 9 of 12 files: ")
    assert "5 unreadable (truncated or corrupt: cats/cut.png, dogs/cut.jpg, dogs/empty.jpg and 2 more)" in message
    assert "2 too small (short side < 8 px: dogs/strip.png, dogs/tiny.png)" in message
    assert "2 not images (README.md, dogs/notes.txt)" in message
    assert "2 empty class folders, dropped (birds, fish)" in message
    assert data.class_names == ("cats", "dogs") and data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 8, 8, 3)
    _, report = load_image_folder(root, 8)
    assert report.counts == {"unreadable": 5, "too_small": 2, "not_image": 2, "empty_class": 2}
    assert [p.name for p in report.skipped["unreadable"]] == ["cut.png", "cut.jpg", "empty.jpg", "garbage.png",
                                                              "nemo.png"]


def test_strict_makes_bad_files_an_error_naming_them(tmp_path):
    root = _bad_folder(tmp_path)
    with pytest.raises(ValueError, match=r"skipped 9 of 12 files: 5 unreadable .*Fix or remove these files, or drop "
                                         r"--strict"):
        image_folder(root, 8, strict=True)
    clean = tmp_path / "clean"
    _save(clean / "a.png", _solid((1, 2, 3)))
    assert len(image_folder(clean, 8, strict=True)) == 1  # nothing to skip: no error, no warning


def test_a_folder_of_only_bad_files_is_an_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    _save(tmp_path / "tiny.png", _solid((1, 2, 3), (3, 3)))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no usable images in .*: 1 unreadable .*broken\.png\), 1 too small"):
        image_folder(tmp_path, 8)
    with pytest.warns(UserWarning, match="skipped 2 of 3 files"):
        assert len(image_folder(tmp_path, 8, min_size=3)) == 1  # min_size is configurable


@pytest.mark.parametrize("mode, array, expected", [
    ("L", np.full((10, 10), 77, np.uint8), [77, 77, 77]),
    ("LA", np.dstack([np.full((10, 10), 100, np.uint8), np.full((10, 10), 0, np.uint8)]), [255, 255, 255]),
    ("RGBA", np.dstack([np.full((10, 10, 3), 40, np.uint8), np.full((10, 10), 255, np.uint8)]), [40, 40, 40]),
    ("CMYK", np.dstack([np.zeros((10, 10, 3), np.uint8), np.full((10, 10), 255, np.uint8)]), [0, 0, 0]),
    ("I;16", np.full((10, 10), 257 * 30, np.uint16), [30, 30, 30]),
    ("I", np.full((10, 10), 257 * 60, np.int32), [60, 60, 60]),
    ("F", np.full((10, 10), 12.6, np.float32), [13, 13, 13]),
    ("1", np.ones((10, 10), bool), [255, 255, 255]),
])
def test_unusual_modes_are_converted(tmp_path, mode, array, expected):
    image = Image.fromarray(array, mode) if mode not in ("I;16", "I", "F", "1") else Image.fromarray(array)
    if mode == "I;16":
        image = Image.fromarray(array).convert("I;16") if image.mode != "I;16" else image
    assert image.mode == mode, image.mode
    path = tmp_path / ("im.tif" if mode in ("CMYK", "F", "I") else "im.png")
    image.save(path)
    assert read_image(path, 4).reshape(-1, 3)[0].tolist() == expected
    assert read_image(path, 4, channels=1).shape == (4, 4, 1)


def test_palette_images_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30])
    palette.save(tmp_path / "plain.png")
    assert read_image(tmp_path / "plain.png", 8)[0, 0].tolist() == [10, 20, 30]
    palette.save(tmp_path / "clear.png", transparency=1)
    assert read_image(tmp_path / "clear.png", 8)[0, 0].tolist() == [255, 255, 255]
