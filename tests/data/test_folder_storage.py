"""Image folders at scale: the three storages, fits, labels and captions from files, the held-out split."""

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from diffusekit.data import folder_cache
from diffusekit.data.folder import image_folder, load_image_folder
from diffusekit.data.lazy_images import FlippedImages, StreamImages
from diffusekit.errors import BadFileError, UsageError


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)
    return path


def _fraction(key, salt):  # the path hash, computed here from its definition
    return int.from_bytes(hashlib.sha256((salt + key).encode()).digest()[:8], "big") / 2.0 ** 64


def _folder(root, n=12):
    rng = np.random.default_rng(0)
    for i in range(n):
        size = (12 + i % 3, 10 + i % 4)  # non-square, varied
        _save(root / ("a" if i % 2 else "b") / f"{i:02d}.png", rng.integers(0, 256, (*size[::-1], 3)))
    return root


@pytest.fixture(autouse=True)
def _cache_here(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "cache"))


def test_the_three_storages_give_the_same_pixels(tmp_path):
    root = _folder(tmp_path / "f")
    memory = image_folder(root, 8, workers=1, fit="random_crop")
    stream = image_folder(root, 8, workers=1, fit="random_crop", storage="stream")
    cache = image_folder(root, 8, workers=2, fit="random_crop", storage="cache")
    assert memory.images.shape == stream.images.shape == cache.images.shape == (12, 8, 8, 3)
    order = np.array([5, 0, 11, 3, 3])
    assert np.array_equal(stream.images[order], memory.images[order])
    assert np.array_equal(cache.images[order], memory.images[order])
    assert np.array_equal(np.asarray(cache.images), memory.images)
    assert memory.class_names == ("a", "b") and cache.labels.tolist() == memory.labels.tolist()
    x, y = cache.tensors(np.array([1, 2]))  # what the batch stream reads
    assert x.shape == (2, 3, 8, 8) and y.tolist() == memory.labels[[1, 2]].tolist()
    revived = pickle.loads(pickle.dumps(cache.images))  # as a DataLoader worker gets it
    assert np.array_equal(revived[order], memory.images[order])


def test_cache_is_reused_rebuilt_when_stale_and_never_left_half_written(tmp_path, monkeypatch):
    root = _folder(tmp_path / "f", 4)
    first = image_folder(root, 8, workers=1, storage="cache").images
    manifest = first.directory / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    image_folder(root, 8, workers=1, storage="cache")
    assert manifest.stat().st_mtime_ns == stamp  # reused
    _save(root / "a" / "new.png", np.zeros((9, 9, 3)))
    grown = image_folder(root, 8, workers=1, storage="cache")
    assert len(grown) == 5 and json.loads(manifest.read_text())["files"] == 5  # stale: rebuilt in place
    _save(root / "a" / "late.png", np.zeros((9, 9, 3)))
    real = folder_cache.read_image
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(folder_cache, "read_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        image_folder(root, 8, workers=1, storage="cache")
    assert json.loads(manifest.read_text())["files"] == 5  # the old cache untouched, no temporary left
    assert sorted(p.name for p in manifest.parent.parent.iterdir()) == [manifest.parent.name]
    monkeypatch.setattr(folder_cache, "read_image", real)
    assert len(image_folder(root, 8, workers=1, storage="cache")) == 6


def test_fits_filters_and_background(tmp_path):
    wide = np.zeros((2, 4, 3), np.uint8)
    wide[:, 2:] = 255  # left half black, right half white
    path = _save(tmp_path / "f" / "wide.png", wide)
    stretch = image_folder(path.parent, 2, fit="stretch", filter="nearest", min_size=1).images[0]
    assert stretch[..., 0].tolist() == [[0, 255], [0, 255]]
    pad = image_folder(path.parent, 4, fit="pad", filter="nearest", background=(0, 0, 200), min_size=1).images[0]
    assert pad[0].tolist() == [[0, 0, 200]] * 4 and pad[3].tolist() == [[0, 0, 200]] * 4
    assert pad[1, :, 0].tolist() == [0, 0, 255, 255]
    ramp = np.repeat(np.arange(6, dtype=np.uint8)[None, :] * 40, 2, axis=0)  # 6x2, columns 0, 40, ..., 200
    _save(tmp_path / "g" / "ramp.png", ramp)
    left = int(_fraction("ramp.png", "crop-x") * 5)
    crop = image_folder(tmp_path / "g", 2, channels=1, fit="random_crop", min_size=1).images[0, ..., 0]
    assert crop.tolist() == [[40 * left, 40 * left + 40]] * 2
    centre = image_folder(tmp_path / "g", 2, channels=1, min_size=1).images[0, ..., 0]
    assert centre.tolist() == [[80, 120]] * 2
    with pytest.raises(UsageError, match="unknown filter 'sharp'"):
        image_folder(tmp_path / "g", 2, filter="sharp", min_size=1)


def test_transparency_on_the_background_colour(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent
    _save(tmp_path / "f" / "clear.png", rgba, "RGBA")
    assert image_folder(tmp_path / "f", 4, background=(10, 20, 30)).images[0, 0, 0].tolist() == [10, 20, 30]
    grey = image_folder(tmp_path / "f", 4, channels=1, background=(10, 20, 30)).images[0, 0, 0, 0]
    assert grey == round((10 * 299 + 20 * 587 + 30 * 114) / 1000)  # ITU-R 601-2 luma


def test_xflip_doubles_with_mirrored_copies():
    images = np.arange(2 * 2 * 3 * 1, dtype=np.uint8).reshape(2, 2, 3, 1)
    flipped = FlippedImages(images)
    assert flipped.shape == (4, 2, 3, 1)
    assert flipped[np.array([3])][0, :, :, 0].tolist() == [[8, 7, 6], [11, 10, 9]]
    assert np.array_equal(flipped[:2], images) and np.array_equal(np.asarray(flipped)[2:], images[:, :, ::-1])


def test_labels_csv_and_metadata_captions_and_missing_files(tmp_path):
    root = tmp_path / "f"
    for name in ("x/1.png", "x/2.png", "y/3.png", "4.png"):
        _save(root / name, np.full((8, 8, 3), 50))
    (root / "labels.csv").write_text("file_name,label\nx/1.png,10\nx/2.png,9\ny/3.png,10\ngone.png,9\n")
    with pytest.warns(UserWarning, match=r"1 metadata lines naming missing files \(gone\.png\).*1 images without "
                                         r"a label in the label file \(4\.png\)"):
        data = image_folder(root, 4)
    assert data.class_names == ("9", "10") and data.labels.tolist() == [1, 0, 1]  # numeric order
    with pytest.raises(BadFileError, match="missing files"):
        image_folder(root, 4, strict=True)
    (root / "labels.csv").unlink()
    (root / "4.png").rename(root / "y" / "5.png")  # class folders again, y/5.png without a caption
    (root / "metadata.jsonl").write_text('{"file_name": "x/1.png", "text": "a red fox"}\n'
                                         '{"file_name": "x/2.png", "text": "a blue owl"}\n')
    (root / "y" / "3.txt").write_text("a red fox\n")
    with pytest.warns(UserWarning, match=r"1 images without a caption \(y/5\.png\)"):
        data = image_folder(root, 4, captions=True)
    assert data.class_names == ("a blue owl", "a red fox") and data.labels.tolist() == [1, 0, 1]


def test_held_out_split_by_path_hash_is_stable(tmp_path):
    root = tmp_path / "f"
    for i in range(40):
        _save(root / f"{i:02d}.png", np.full((8, 8, 3), i))
    expected = {f"{i:02d}.png" for i in range(40) if _fraction(f"{i:02d}.png", "split") < 0.25}
    train = image_folder(root, 4, val_fraction=0.25)
    test = image_folder(root, 4, val_fraction=0.25, split="test")
    assert {f"{v:02d}.png" for v in test.images[:, 0, 0, 0]} == expected and len(train) + len(test) == 40
    _save(root / "40.png", np.full((8, 8, 3), 40))
    again = image_folder(root, 4, val_fraction=0.25, split="test")
    assert set(test.images[:, 0, 0, 0]) <= set(again.images[:, 0, 0, 0])
    _save(tmp_path / "v" / "99.png", np.full((8, 8, 3), 99))
    assert image_folder(root, 4, val_dir=tmp_path / "v", split="test").images[0, 0, 0, 0] == 99
    with pytest.raises(UsageError, match="has no held-out split: set data.val_fraction"):
        image_folder(root, 4, split="test")


def test_channels_follow_the_images_and_a_mix_is_named(tmp_path):
    root = tmp_path / "f"
    _save(root / "g.png", np.full((8, 8), 7))
    assert image_folder(root, 4, channels=None).images.shape == (1, 4, 4, 1)
    _save(root / "c.png", np.full((8, 8, 3), 7))
    with pytest.raises(UsageError, match=r"mixes 1 grey and 1 colour images \(e\.g\. g\.png is grey, c\.png "
                                         r"colour\): set data.channels"):
        image_folder(root, 4, channels=None)


def test_a_file_that_fails_while_streaming_is_replaced_by_the_next_of_its_label(tmp_path):
    root = tmp_path / "f"
    for i, label in enumerate("abab"):
        _save(root / label / f"{i}.png", np.full((8, 8, 3), 10 * i))
    data, _ = load_image_folder(root, 4, storage="stream")
    assert isinstance(data.images, StreamImages) and data.labels.tolist() == [0, 0, 1, 1]  # a/0 a/2 b/1 b/3
    path = data.images.files[0]
    path.write_bytes(path.read_bytes()[:40])  # truncated after the header check
    with pytest.warns(UserWarning, match="0.png could not be decoded") as caught:
        batch = data.images[np.array([0, 1, 0])]
    assert len(caught) == 1 and batch[:, 0, 0, 0].tolist() == [20, 20, 20]  # a/2 stands in for a/0
    assert data.images.failures == 1 and os.path.getsize(path) == 40
