import numpy as np
import pytest
from PIL import Image

from diffusekit.data.folder import image_folder, read_image


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
    with pytest.raises(ValueError, match="no image files in"):
        image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="is not a directory"):
        image_folder(_save(tmp_path / "a.png", _solid((1, 2, 3))), 8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"also images outside them: a\.png"):
        image_folder(tmp_path, 8)
    (tmp_path / "a.png").unlink()
    with pytest.raises(ValueError, match="class folders without images in .*: empty_class"):
        image_folder(tmp_path, 8)


def test_unreadable_files_raise_or_are_skipped(tmp_path):
    _save(tmp_path / "good.png", _solid((1, 2, 3)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        image_folder(tmp_path, 8)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*broken\.png"):
        data = image_folder(tmp_path, 8, skip_unreadable=True)
    assert data.images.shape == (1, 8, 8, 3) and data.images[0, 0, 0].tolist() == [1, 2, 3]
