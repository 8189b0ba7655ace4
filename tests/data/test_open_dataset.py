import numpy as np
import pytest
from PIL import Image

from diffusekit.data import open_dataset


def test_builtin_by_name_padded_to_32():
    data = open_dataset("mnist", "test", resolution=32, channels=3, mode="pad")
    assert data.images.shape == (10_000, 32, 32, 3) and data.images[:, :2].max() == 0 and data.num_classes == 10
    assert open_dataset("mnist", "test").images.shape == (10_000, 28, 28, 1)


def test_folder_by_path(tmp_path):
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(tmp_path / "a.png")
    data = open_dataset(str(tmp_path), resolution=16, workers=1)
    assert data.images.shape == (1, 16, 16, 3) and data.images.min() == data.images.max() == 90
    with pytest.raises(ValueError, match="resolution is needed to load the image folder"):
        open_dataset(tmp_path)
    with pytest.raises(ValueError, match="has no held-out split: set data.val_fraction"):
        open_dataset(tmp_path, "test", resolution=16)
    with pytest.raises(ValueError, match="mode 'pad' is for built-in datasets"):
        open_dataset(tmp_path, resolution=16, mode="pad")


def test_unknown_spec_lists_the_builtins(tmp_path):
    with pytest.raises(ValueError, match=r"neither a built-in dataset \(mnist, fashion-mnist, digits, tiles, emoji\) "
                                         r"nor an existing folder of images \(a folder path is also accepted\)"):
        open_dataset(str(tmp_path / "cifar10"))
