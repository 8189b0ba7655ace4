import warnings

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from diffusekit.data import load_clips, video_folder
from diffusekit.errors import BadFileError, UsageError


def _pattern(frames, size=16):
    """Distinct RGB frames drawn from four levels per channel (a GIF palette holds them exactly)."""
    rng = np.random.default_rng(frames)
    return (rng.integers(0, 4, (frames, size, size, 3)) * 85).astype(np.uint8)


def _write_frame_folder(folder, frames):
    folder.mkdir(parents=True)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{k:03d}.png")


def test_gif_and_frame_folder_round_trip(tmp_path):
    gif, frames = _pattern(12), _pattern(7)
    iio.imwrite(tmp_path / "a.gif", gif, duration=40, loop=0)
    _write_frame_folder(tmp_path / "b", frames)
    data = video_folder(tmp_path, frames=4, resolution=16)
    assert len(data) == 3 + 1 and data.item_shape == (3, 4, 16, 16) and data.num_classes == 0
    assert data.clip_video.tolist() == [0, 0, 0, 1] and data.clip_start.tolist() == [0, 4, 8, 0]
    assert np.array_equal(data.clip(1), gif[4:8]) and np.array_equal(data.clip(3), frames[:4])
    x, y = data.tensors([3, 2, 0])
    assert x.shape == (3, 3, 4, 16, 16) and y.tolist() == [0, 0, 0]
    expected = np.stack([frames[:4], gif[8:12], gif[0:4]]).transpose(0, 4, 1, 2, 3) / 127.5 - 1
    assert np.allclose(x.numpy(), expected, atol=1e-6)
    overlapping = video_folder(tmp_path, frames=4, resolution=8, channels=1, stride=2)
    assert overlapping.clip_start.tolist() == [0, 2, 4, 6, 8, 0, 2] and overlapping.clip(0).shape == (4, 8, 8, 1)


def test_mp4_frames_come_back_close(tmp_path):
    levels = np.arange(12) * 20
    video = np.broadcast_to(levels[:, None, None, None], (12, 32, 32, 3)).astype(np.uint8)
    iio.imwrite(tmp_path / "grey.mp4", video, fps=10, codec="libx264")
    data = video_folder(tmp_path, frames=4, resolution=16, channels=1)
    assert len(data) == 3 and data.videos[0].length == 12
    clip = data.clip(2).astype(np.float64)
    assert np.abs(clip.mean(axis=(1, 2, 3)) - levels[8:12]).max() < 4  # lossy, but each frame near its level


def test_classes_are_top_level_folders(tmp_path):
    (tmp_path / "cats").mkdir()
    iio.imwrite(tmp_path / "cats" / "a.gif", _pattern(5))
    _write_frame_folder(tmp_path / "dogs" / "run", _pattern(8))
    data = video_folder(tmp_path, frames=4, resolution=16)
    assert data.class_names == ("cats", "dogs") and data.labels.tolist() == [0, 1, 1]
    iio.imwrite(tmp_path / "loose.gif", _pattern(5))
    with pytest.raises(BadFileError, match="class folders .* and also videos outside them: loose.gif"):
        video_folder(tmp_path, frames=4, resolution=16)


def test_bad_and_short_videos_are_counted_in_one_warning(tmp_path):
    iio.imwrite(tmp_path / "good.gif", _pattern(6))
    iio.imwrite(tmp_path / "short.gif", _pattern(2))
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 50)
    (tmp_path / "notes.txt").write_text("hello")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = video_folder(tmp_path, frames=4, resolution=16)
    assert len(data) == 1 and len(caught) == 1
    assert str(caught[0].message).endswith(
        "skipped 3 of 4 videos: 1 unreadable (corrupt or not decodable: broken.mp4), "
        "1 too short (under 4 frames: short.gif), 1 not videos (notes.txt)")
    with pytest.raises(BadFileError, match="skipped 3 of 4 videos.*drop strict"):
        video_folder(tmp_path, frames=4, resolution=16, strict=True)
    with pytest.raises(BadFileError, match="no usable clip of 9 frames .*too short"):
        video_folder(tmp_path, frames=9, resolution=16)


def test_folder_problems_name_themselves(tmp_path):
    folder = tmp_path / "v"
    _write_frame_folder(folder, _pattern(3))
    Image.fromarray(_pattern(1, size=8)[0]).save(folder / "frame_999.png")
    with pytest.raises(BadFileError, match=r"frames of different sizes in the frame folder .*v: 16x16 .*8x8"):
        video_folder(tmp_path, frames=2, resolution=8)
    with pytest.raises(UsageError, match="frames must be at least 1"):
        video_folder(tmp_path, frames=0, resolution=8)
    with pytest.raises(UsageError, match="min_frames \\(2\\) cannot be below the clip length frames=3"):
        video_folder(tmp_path, frames=3, resolution=8, min_frames=2)
    with pytest.raises(BadFileError, match="no usable clip"):
        video_folder(tmp_path / "v", frames=1, resolution=8)  # a frame folder given as the top folder: no videos in it


def test_load_clips_opens_a_folder(tmp_path):
    iio.imwrite(tmp_path / "a.gif", _pattern(8))
    data = load_clips(tmp_path, frames=8, resolution=16, channels=1)
    assert data.item_shape == (1, 8, 16, 16) and len(data) == 1


def test_captions_from_metadata_and_text_files_number_the_videos(tmp_path):
    for name, frames in (("a.gif", 4), ("b.gif", 8), ("c.gif", 4), ("d.gif", 4)):
        iio.imwrite(tmp_path / name, _pattern(frames), duration=40, loop=0)
    _write_frame_folder(tmp_path / "walk", _pattern(4))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.gif", "text": "a red ball"}\n'
                                             '{"file_name": "walk", "text": "a person walking"}\n')
    (tmp_path / "a.txt").write_text("ignored: metadata.jsonl wins")
    (tmp_path / "b.txt").write_text("a red ball\n")
    (tmp_path / "c.txt").write_text("a blue cube")
    with pytest.warns(UserWarning, match=r"skipped 1 of 5 videos: 1 without a caption \(d.gif\)"):
        data = video_folder(tmp_path, frames=4, resolution=8, captions=True)
    assert data.class_names == ("a blue cube", "a person walking", "a red ball")  # sorted; no caption file is stray
    assert [v.path.name for v in data.videos] == ["a.gif", "b.gif", "c.gif", "walk"]
    assert data.labels.tolist() == [2, 2, 2, 0, 1]  # b.gif gives two clips of its caption
    plain = video_folder(tmp_path, frames=4, resolution=8)
    assert plain.num_classes == 0 and len(plain.videos) == 5 and not plain.report.counts


def test_a_folder_without_any_caption_says_how_to_give_them(tmp_path):
    iio.imwrite(tmp_path / "a.gif", _pattern(4), duration=40, loop=0)
    with pytest.raises(BadFileError, match="has no captions: give a metadata.jsonl"):
        video_folder(tmp_path, frames=4, resolution=8, captions=True)
