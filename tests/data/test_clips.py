import numpy as np
import pytest

from diffusekit.data import CLIP_DATASETS, ClipArrays, load_clips
from diffusekit.data.clips import clip_windows
from diffusekit.errors import UsageError


def _two_clips():
    clips = np.zeros((2, 3, 2, 4, 1), np.uint8)  # [N, F, H, W, C]
    clips[0, 1, 0, 3, 0] = 255
    clips[1, 2, 1, 0, 0] = 51
    return ClipArrays(clips, np.array([4, 7]), 10, tuple("0123456789"), {"id": np.array([10, 11])})


def test_clip_arrays_tensors_are_channels_first_and_scaled_like_images():
    data = _two_clips()
    assert len(data) == 2 and data.frames == 3 and data.item_shape == (1, 3, 2, 4)
    x, y = data.tensors([1, 0])
    assert x.shape == (2, 1, 3, 2, 4) and y.tolist() == [7, 4]
    assert float(x[1, 0, 1, 0, 3]) == 1.0 and float(x[0, 0, 2, 1, 0]) == pytest.approx(51 / 127.5 - 1)
    assert float(x[0, 0, 0, 0, 0]) == -1.0 and int((x > -1).sum()) == 2  # the two set pixels, nothing else


def test_frames_as_images_subset_and_channels():
    data = _two_clips()
    images = data.frames_as_images()
    assert images.images.shape == (6, 2, 4, 1) and images.labels.tolist() == [4, 4, 4, 7, 7, 7]
    assert images.images[1, 0, 3, 0] == 255 and images.images[5, 1, 0, 0] == 51
    assert len(data.frames_as_images(limit=4)) == 4
    picked = data.subset([1])
    assert picked.labels.tolist() == [7] and picked.extras["id"].tolist() == [11] and picked.clips[0, 2, 1, 0, 0] == 51
    rgb = data.with_channels(3)
    assert rgb.clips.shape == (2, 3, 2, 4, 3) and rgb.clips[1, 2, 1, 0].tolist() == [51, 51, 51]
    with pytest.raises(ValueError, match="extras\\['id'\\] has 1 rows for 2 clips"):
        ClipArrays(data.clips, data.labels, 0, (), {"id": np.zeros(1)})


def test_clip_windows():
    assert clip_windows(10, 3).tolist() == [0, 3, 6]  # span 3, non-overlapping: 6..8 is the last that fits
    assert clip_windows(10, 3, frame_step=2).tolist() == [0, 5]  # span 5
    assert clip_windows(10, 3, frame_step=2, stride=1).tolist() == [0, 1, 2, 3, 4, 5]
    assert clip_windows(2, 3).tolist() == []
    with pytest.raises(UsageError, match="frames must be at least 1, got 0"):
        clip_windows(10, 0)
    with pytest.raises(UsageError, match="stride must be at least 1"):
        clip_windows(10, 2, stride=0)


def test_load_clips_names_its_choices(tmp_path):
    with pytest.raises(UsageError, match="unknown clip dataset 'kth'.*moving-mnist, cahn-hilliard"):
        load_clips("kth", frames=4)
    with pytest.raises(UsageError, match="resolution is needed"):
        load_clips(tmp_path, frames=4)
    with pytest.raises(UsageError, match="only the 'train' split"):
        load_clips(tmp_path, "test", frames=4, resolution=8)
    assert set(CLIP_DATASETS) == {"moving-mnist", "cahn-hilliard"}


@pytest.mark.usefixtures("mnist_installed")
def test_load_clips_passes_size_and_channels_to_a_builtin():
    data = load_clips("moving-mnist", "test", frames=3, resolution=20, channels=3, count=4, digit_size=14,
                      speed=1.0)
    assert data.clips.shape == (4, 3, 20, 20, 3)
    assert np.array_equal(data.clips[..., 0], data.clips[..., 2])
