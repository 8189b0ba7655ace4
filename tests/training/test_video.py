"""A video run's batches: image groups replace a fixed share of the clips, and context frames leave the loss."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from diffusekit.config import Config
from diffusekit.data import ClipArrays, ImageArrays
from diffusekit.training.video import VideoBatches


def _config(**video) -> Config:
    config = Config()
    return dataclasses.replace(config, video=dataclasses.replace(config.video, frames=4, **video))


def _pool() -> ImageArrays:
    # image i of class i % 3 holds the value i in every pixel, so each drawn image names itself and its class
    images = np.arange(30, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2)
    return ImageArrays(images, np.arange(30) % 3, 3, ("a", "b", "c"))


def _clips(batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    clips = ClipArrays(np.full((batch, 4, 2, 2, 1), 200, np.uint8), np.arange(batch) % 3, 3, ("a", "b", "c"))
    return clips.tensors()


def test_image_groups_replace_the_first_rows_with_images_of_the_replaced_clips_class():
    x0, labels = _clips()
    batches = VideoBatches(_config(image_fraction=0.25), _pool(), conditional=True, null_label=3,
                           frame_conditioning=False)
    out, out_labels, cond, mask = batches(x0, labels, torch.Generator().manual_seed(0))
    assert mask is None and set(cond) == {"independent"}
    assert cond["independent"].tolist() == [True, True] + [False] * 6  # round(0.25 * 8) groups
    torch.testing.assert_close(out[2:], x0[2:])  # the clips stay
    assert out_labels.tolist() == labels.tolist()
    for row in range(2):
        values = ((out[row, 0, :, 0, 0] + 1) * 127.5).round().long()  # the pool index of each frame
        assert bool((values % 3 == labels[row]).all())  # F images of the clip's class, drawn independently
        assert bool((out[row] == out[row, :, :, :1, :1]).all())  # each frame is one whole pool image


def test_without_labels_image_groups_take_the_null_class_and_the_unmasked_ablation_sends_no_flag():
    x0, labels = _clips()
    batches = VideoBatches(_config(image_fraction=0.5, mask_images=False), _pool(), conditional=False,
                           null_label=3, frame_conditioning=False)
    out, out_labels, cond, _ = batches(x0, labels, torch.Generator().manual_seed(0))
    assert cond == {}  # the groups go in as if they were clips
    assert out_labels.tolist() == [3] * 4 + labels[4:].tolist()
    assert not torch.equal(out[:4], x0[:4])


def test_context_frames_are_a_prefix_of_each_clip_and_leave_the_loss():
    x0 = torch.randn(64, 1, 4, 2, 2)
    labels = torch.zeros(64, dtype=torch.long)
    batches = VideoBatches(_config(context_frames=3, p_context=0.5), None, conditional=False, null_label=0,
                           frame_conditioning=True)
    out, _, cond, mask = batches(x0, labels, torch.Generator().manual_seed(1))
    given = cond["context_mask"]
    k = given.sum(1)
    assert given.shape == (64, 4) and int(k.max()) <= 3
    assert bool((given == (torch.arange(4)[None] < k[:, None])).all())  # the first k frames
    assert 10 < int((k > 0).sum()) < 54  # about half the clips get context (p_context 0.5)
    assert set(k[k > 0].tolist()) == {1, 2, 3}
    torch.testing.assert_close(cond["context"], x0 * given[:, None, :, None, None])
    assert mask.shape == (64, 1, 4, 1, 1) and torch.equal(mask[:, 0, :, 0, 0], ~given)
    torch.testing.assert_close(out, x0)


def test_the_draws_repeat_with_the_generator():
    x0, labels = _clips()
    config = _config(image_fraction=0.25, context_frames=2, p_context=0.5)
    batches = VideoBatches(config, _pool(), conditional=True, null_label=3, frame_conditioning=True)
    first = batches(x0, labels, torch.Generator().manual_seed(5))
    second = batches(x0, labels, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first[0], second[0])
    for name in first[2]:
        assert torch.equal(first[2][name], second[2][name])
    assert not bool(first[2]["context_mask"][:2].any())  # image groups are never given context


@pytest.mark.parametrize("fraction", [0.0, 0.999])
def test_share_of_image_groups_rounds(fraction):
    x0, labels = _clips()
    batches = VideoBatches(_config(image_fraction=fraction), _pool(), conditional=True, null_label=3,
                           frame_conditioning=False)
    _, _, cond, _ = batches(x0, labels, torch.Generator().manual_seed(0))
    assert int(cond["independent"].sum()) == round(fraction * 8)


# -- a whole video run ----------------------------------------------------------------------------------------------

def _moving_squares(n: int = 24, frames: int = 4, size: int = 8) -> ClipArrays:
    """A bright 3x3 square moving one pixel right per frame from a random start, two classes (its row half)."""
    rng = np.random.default_rng(0)
    clips = np.zeros((n, frames, size, size, 1), np.uint8)
    labels = rng.integers(0, 2, n)
    for i in range(n):
        row = rng.integers(0, 2) + 4 * labels[i]
        col = rng.integers(0, size - 3 - frames + 1)
        for t in range(frames):
            clips[i, t, row:row + 3, col + t:col + t + 3] = 255
    return ClipArrays(clips, labels.astype(np.int64), 2, ("top", "bottom"))


def _video_config(*overrides):
    from diffusekit.config import resolve

    base = ["run.total_images=96", "optim.batch_size=8", "run.checkpoint_every=32", "run.log_every=16",
            "network.kind=video_unet", "network.preset=tiny", "network.options={dropout: 0.1}", "video.frames=4",
            "video.image_fraction=0.25", "video.context_frames=2", "video.p_context=0.5",
            "ema.half_lives={ema: 100}", "eval.loss_every=48", "eval.loss_per_bin=4"]
    return resolve("tiny", overrides=base + list(overrides))


def test_a_video_run_with_image_groups_and_context_resumes_bit_identical(tmp_path):
    from diffusekit.training.make import train

    from .resume_check import assert_resume_is_bit_identical

    config, data = _video_config(), _moving_squares()
    whole = train(config, data, tmp_path / "whole")
    assert whole.info["image_shape"] == [1, 4, 8, 8] and whole.network.is_video
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 40, "ckpt-000000000032")


@pytest.mark.parametrize("overrides, message", [
    (["network.kind=unet", "network.preset=tiny"], "network.kind is unet, an image network"),
    (["video.frames=null"], "draws clips: set video.frames"),
    (["video.context_frames=4"], "video.context_frames must be in 0..3"),
    (["video.image_fraction=1.0"], "video.image_fraction must be in [0, 1)"),
    (["latent.autoencoder=runs/ae"], "latent.autoencoder is not supported for video runs"),
    (["eval.every=100"], "eval.every is not supported for video runs"),
    (["data.name=cahn-hilliard", "data.captions=true"], "the clip dataset 'cahn-hilliard' has no captions"),
    (["data.name=moving-mnist", "data.captions=true", "video.options={digits: 2}"],
     "data.captions on moving-mnist names the clip's digit: set video.options.digits: 1"),
])
def test_video_configs_that_cannot_work_are_refused(overrides, message):
    from diffusekit.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        _video_config(*overrides)


def test_image_settings_without_frames_are_refused():
    from diffusekit.config import ConfigError, resolve

    with pytest.raises(ConfigError, match=re.escape("video.image_fraction is for video runs")):
        resolve("tiny", overrides=["video.image_fraction=0.5"])
