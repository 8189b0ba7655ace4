"""Video metrics against hand-computed values: clip layouts, pooled Frechet distances, centroids, motion, flicker and
identity agreement (a stub classifier for the arithmetic, a small MNIST classifier on real digits)."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from diffusekit.data.builtin import ImageArrays, load
from diffusekit.metrics.classifier import classify, train_classifier
from diffusekit.metrics.clips import as_uint8_clips
from diffusekit.metrics.motion import digit_centroids, digit_crops, identity_agreement, motion_smoothness
from diffusekit.metrics.video import (
    clip_frame_features,
    flicker,
    flicker_ratio,
    frame_fid,
    frame_kid,
    fvd_proxy,
    pooled_clip_features,
    video_report,
)

from ..assets import require_mnist


class StandInExtractor:
    """uint8 NCHW -> [mean of all pixels, top-left pixel of channel 0]."""

    dim = 2

    def __call__(self, batch):
        return torch.stack([batch.double().mean((1, 2, 3)), batch[:, 0, 0, 0].double()], 1)


class LevelClassifier(nn.Module):
    """Class k for a crop whose brightest pixel is 255 * k / 9 (crops in [-1, 1])."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # classify() reads the device and dtype from a parameter

    def forward(self, x):
        level = torch.round((x.amax((1, 2, 3)) + 1) / 2 * 9).long()
        return nn.functional.one_hot(level, 10).float() * self.scale


def _bouncing(start: float, velocity: float, frames: int, limit: float) -> np.ndarray:
    """Positions in [0, limit] at constant speed, reflected at both walls (a triangle wave)."""
    x = np.mod(start + velocity * np.arange(frames), 2 * limit)
    return np.where(x > limit, 2 * limit - x, x)


def _paste(patch: np.ndarray, tops: np.ndarray, canvas: int) -> np.ndarray:
    """uint8 [F, canvas, canvas, 1] with ``patch`` [h, w] pasted at the rounded (row, col) tops [F, 2]."""
    frames = np.zeros((len(tops), canvas, canvas, 1), np.uint8)
    for f, (r, c) in enumerate(np.rint(tops).astype(int)):
        frames[f, r:r + patch.shape[0], c:c + patch.shape[1], 0] = patch
    return frames


# -- clips ------------------------------------------------------------------------------------------------------------
def test_as_uint8_clips_reads_both_layouts():
    values = torch.tensor([-1.0, -0.5, 0.0, 1.0, 0.999]).reshape(1, 1, 5, 1, 1)  # [N, C, F, H, W]
    out = as_uint8_clips(values)
    assert out.dtype == np.uint8 and out.shape == (1, 5, 1, 1, 1)
    assert out.ravel().tolist() == [0, 64, 128, 255, 255]  # (x + 1) * 127.5 rounded: 63.75 -> 64, 127.5 -> 128
    rgb = np.arange(2 * 3 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 3, 4, 5, 3)
    assert np.array_equal(as_uint8_clips(rgb), rgb)
    floats = torch.from_numpy(rgb).permute(0, 4, 1, 2, 3).double() / 127.5 - 1
    assert np.array_equal(as_uint8_clips(floats), rgb)


@pytest.mark.parametrize(("clips", "message"), [
    (np.zeros((2, 3, 4, 4), np.uint8), "5-d"),
    (np.zeros((2, 3, 4, 4, 2), np.uint8), "1 or 3 channels"),
    (np.zeros((2, 1, 4, 4, 1), np.uint8), "at least 2 frames"),
    (torch.full((1, 1, 2, 4, 4), 255.0), "in \\[-1, 1\\]"),
    (np.zeros((1, 2, 4, 4, 1), np.int32), "uint8"),
    ([[1]], "numpy array or a torch tensor"),
])
def test_as_uint8_clips_rejects_bad_input(clips, message):
    with pytest.raises((ValueError, TypeError), match=message):
        as_uint8_clips(clips)


# -- Inception-based ---------------------------------------------------------------------------------------------------
def test_clip_frame_features_keep_clip_and_frame_order():
    clips = np.zeros((2, 3, 4, 4, 1), np.uint8)
    for n in range(2):
        for f in range(3):
            clips[n, f] = 10 * n + f
    clips[1, 2, 0, 0, 0] = 100
    features = clip_frame_features(StandInExtractor(), clips, batch_size=4)  # batches cut across clips
    assert features.shape == (2, 3, 2)
    expected_top_left = [[0, 1, 2], [10, 11, 100]]
    expected_mean = [[0, 1, 2], [10, 11, (15 * 12 + 100) / 16]]
    assert np.allclose(features[..., 1], expected_top_left) and np.allclose(features[..., 0], expected_mean)


def test_frechet_metrics_of_a_constant_shift_are_its_squared_length():
    # Adding s to every frame feature moves the frame mean and the clips' time mean by s and leaves every
    # covariance, time standard deviation and frame difference alone: both distances are |s|^2.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4, 3)) * [1.0, 2.0, 0.5]
    shift = np.array([0.3, -1.0, 2.0])
    assert frame_fid(a, a + shift) == pytest.approx(shift @ shift, rel=1e-9)
    assert fvd_proxy(a, a + shift) == pytest.approx(shift @ shift, rel=1e-9)
    few = a[:3]  # fewer clips (3) than pooled dimensions (9): the route through the features themselves
    assert fvd_proxy(few, few + shift) == pytest.approx(shift @ shift, rel=1e-9)


def test_fvd_proxy_is_the_frechet_distance_of_hand_pooled_features():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 5, 2))
    b = rng.normal(size=(300, 5, 2)) * [1.5, 0.7] + [0.2, 0.0]
    b[:, 1:] += 0.5 * b[:, :-1]  # correlated in time

    def pooled(x):
        mean = sum(x[:, t] for t in range(5)) / 5
        std = np.sqrt(sum((x[:, t] - mean) ** 2 for t in range(5)) / 5)
        step = sum(np.abs(x[:, t + 1] - x[:, t]) for t in range(4)) / 4
        return np.concatenate([mean, std, step], 1)

    assert np.allclose(pooled_clip_features(a), pooled(a))
    pa, pb = pooled(a), pooled(b)
    s1, s2 = np.cov(pa, rowvar=False), np.cov(pb, rowvar=False)
    diff = pa.mean(0) - pb.mean(0)
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert fvd_proxy(a, b) == pytest.approx(expected, rel=1e-8)
    assert fvd_proxy(a[:, :, :1], b[:, :, :1], differences=False) == pytest.approx(
        frame_fid(pa[:, None, [0, 2]], pb[:, None, [0, 2]]), rel=1e-9)  # 2-d (mean, std) of the first feature


def test_only_the_difference_block_sees_frame_order():
    rng = np.random.default_rng(2)
    a = np.cumsum(rng.normal(size=(40, 6, 3)), axis=1)  # smooth random walks
    shuffled = a[:, [3, 0, 5, 1, 4, 2]]
    assert fvd_proxy(a, a[:, ::-1]) == pytest.approx(0, abs=1e-9)  # reversal keeps every statistic
    assert fvd_proxy(a, shuffled, differences=False) == pytest.approx(0, abs=1e-9)
    assert fvd_proxy(a, shuffled) > 1.0
    assert frame_fid(a, shuffled) == pytest.approx(0, abs=1e-9)


def test_frame_kid_pools_frames_and_shapes_are_checked():
    a = np.random.default_rng(3).normal(size=(4, 3, 2))
    result = frame_kid(a, a + 5, subset_size=100)  # all 4 x 3 frames pooled: one subset of 12
    assert result["kid_subset_size"] == 12 and result["kid_subsets"] == 1 and result["kid"] > 0
    with pytest.raises(ValueError, match="feature sizes differ"):
        frame_fid(a, a[..., :1])
    with pytest.raises(ValueError, match=r"\[N, F, dim\]"):
        fvd_proxy(a[0], a[0])
    with pytest.raises(ValueError, match="at least 2 frames"):
        pooled_clip_features(a[:, :1])


def test_clip_frame_features_with_the_real_inception(inception_weights_installed):
    from diffusekit.metrics.inception import get_extractor

    extractor = get_extractor("inception")
    clips = np.random.default_rng(4).integers(0, 256, (2, 2, 32, 32, 1), dtype=np.uint8)
    features = clip_frame_features(extractor, clips)
    assert features.shape == (2, 2, 2048)
    frame = torch.from_numpy(clips[1, 0]).permute(2, 0, 1)[None]
    assert np.allclose(features[1, 0], extractor(frame)[0].numpy(), atol=1e-5)


# -- centroids and motion ----------------------------------------------------------------------------------------------
def test_centroid_of_a_known_blob_and_empty_frames():
    clips = np.zeros((1, 3, 12, 12, 3), np.uint8)
    clips[0, 0, 2, 3] = 100
    clips[0, 0, 2, 5] = 100
    clips[0, 0, 6, 3] = 200
    clips[0, 0, 9, 9] = 3  # faint haze, ignored with background=5
    clips[0, 1, 4, 7] = [30, 60, 90]  # RGB: the channels' mean weighs
    centroids = digit_centroids(clips, background=5)
    assert centroids[0, 0].tolist() == [4.0, 3.5]  # rows (2 + 2 + 6 * 2) / 4, cols (3 + 5 + 3 * 2) / 4
    assert centroids[0, 1].tolist() == [4.0, 7.0]
    assert np.isnan(centroids[0, 2]).all()
    with_haze = digit_centroids(clips)[0, 0]
    assert with_haze.tolist() == pytest.approx([(1600 + 27) / 403, (1400 + 27) / 403])


def test_constant_velocity_with_a_bounce():
    # cols 6, 7.5, 9, then 10.5 reflected at the wall 10 -> 9.5, 8, 6.5: steps 1.5, 1.5, 0.5, -1.5, -1.5.
    # Steps 2 and 3 touch the bounce (sign flip), so the col axis keeps steps 0, 1, 4; rows move at 1 px/frame.
    cols = _bouncing(6, 1.5, 6, 10)
    assert cols.tolist() == [6, 7.5, 9, 9.5, 8, 6.5]
    track = np.stack([np.arange(6.0), cols], -1)[None]
    result = motion_smoothness(track)
    assert result["speed_cv"] == 0 and result["acceleration"] == 0
    assert result["kept_fraction"] == pytest.approx(8 / 10)
    assert result["speed"] == pytest.approx((4 * np.sqrt(1 + 1.5 ** 2) + np.sqrt(1 + 0.5 ** 2)) / 5)
    # a bounce at exactly half a step leaves a step of 0 between +v and -v: set aside, neighbours kept
    half = np.stack([np.zeros(5), [7.0, 8.0, 9.0, 9.0, 8.0]], -1)[None]  # wall at 9.5: 9 -> 10 reflects to 9
    assert motion_smoothness(half)["kept_fraction"] == pytest.approx(7 / 8)  # rows (still) all kept, col 3 of 4
    assert motion_smoothness(half)["acceleration"] == 0


def test_accelerating_track():
    a = 0.4
    t = np.arange(5.0)
    track = np.stack([2 * t, 0.5 * a * t ** 2], -1)[None]  # col steps a * (t + 1/2): 0.2, 0.6, 1.0, 1.4
    result = motion_smoothness(track)
    assert result["acceleration"] == pytest.approx(a)
    assert result["speed_cv"] == pytest.approx((np.sqrt(0.2) / 0.8 + 0) / 2)  # col: std 0.447 / mean 0.8; rows 0
    assert result["speed"] == pytest.approx(np.mean(np.sqrt(4 + np.array([0.2, 0.6, 1.0, 1.4]) ** 2)))
    assert result["kept_fraction"] == 1


def test_ground_truth_positions_give_walls_and_centroid_error():
    frames = 8
    truth = np.stack([_bouncing(3, 2, frames, 20), _bouncing(15, 3, frames, 20)], -1)  # integer tracks
    blob = np.zeros((8, 8), np.uint8)
    blob[2:5, 1:6] = 200  # centre of mass (3, 3) within the box
    clips = _paste(blob, truth, 28)[None]
    result = motion_smoothness(clips, positions=truth[None, :, None])  # a dataset's [N, F, D, 2] layout
    assert result["centroid_error"] == pytest.approx(0, abs=1e-12)
    assert result["speed_cv"] == 0 and result["acceleration"] == 0
    # one centroid off by e: the clip's mean offset moves by e / F; errors e (1 - 1/F) once and e / F F - 1 times
    e = 0.5
    centroids = digit_centroids(clips)
    centroids[0, 2, 0] += e
    noisy = motion_smoothness(centroids, positions=truth[None])
    assert noisy["centroid_error"] == pytest.approx(2 * e * (frames - 1) / frames ** 2)
    with pytest.raises(ValueError, match="one digit per clip"):
        motion_smoothness(clips, positions=np.zeros((1, frames, 2, 2)))
    with pytest.raises(ValueError, match="frames"):
        motion_smoothness(clips, positions=truth[None, :5])


# -- flicker ---------------------------------------------------------------------------------------------------------
def test_flicker_is_the_mean_absolute_frame_difference():
    moving = np.array([[[0, 255], [0, 0]], [[255, 255], [0, 51]]], np.uint8)[None, :, :, :, None]
    still = np.full((1, 2, 2, 2, 1), 77, np.uint8)
    assert flicker(moving) == pytest.approx((255 + 51) / 4 / 255)
    both = np.concatenate([moving, still])
    assert flicker(both) == pytest.approx((255 + 51) / 8 / 255)
    assert flicker_ratio(both, moving) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no frame-to-frame change"):
        flicker_ratio(moving, still)


# -- identity --------------------------------------------------------------------------------------------------------
def test_digit_crops_centre_on_the_centroid_and_pad_with_zeros():
    clips = np.zeros((1, 2, 40, 40, 1), np.uint8)
    clips[0, 0, 10:14, 20:24] = 255  # centroid (11.5, 21.5): the window starts at (-2, 8)
    clips[0, 1, 0:4, 0:4] = 255  # at the corner: the window starts at (-12, -12), zero outside the frame
    crops, has_ink = digit_crops(clips, 28)
    assert has_ink.all() and crops.shape == (2, 1, 28, 28)
    expected = -torch.ones(28, 28)
    expected[12:16, 12:16] = 1  # the blob in the middle (rows 12..15 of 0..27 are centred on 13.5)
    assert torch.equal(crops[0, 0], expected) and torch.equal(crops[1, 0], expected)
    small, _ = digit_crops(clips, 14)  # resized 14 -> 28: the 4x4 blob becomes about 8x8, still centred
    assert small.shape == (2, 1, 28, 28) and torch.allclose(small[0], small[0].flip(1, 2))


def test_identity_agreement_arithmetic_with_a_stub_classifier():
    levels = [[3, 3, 3, 5], [7, 7, 7, 7], [2, 2, None, 2]]
    clips = np.zeros((3, 4, 32, 32, 1), np.uint8)
    for n, row in enumerate(levels):
        for f, level in enumerate(row):
            if level is not None:
                top = (3 * f) % 26  # moving, and at the border in frame 0
                clips[n, f, top:top + 5, top:top + 5] = round(255 * level / 9)
    result = identity_agreement(clips, LevelClassifier(), 28, requested=[3, 7, 1])
    assert result["agreement"] == pytest.approx((3 / 4 + 1 + 3 / 4) / 3)
    assert result["consistent_clips"] == pytest.approx(1 / 3)
    assert result["empty_frames"] == 1
    assert result["requested_accuracy"] == pytest.approx((3 + 4 + 0) / 12)
    assert result["majority_accuracy"] == pytest.approx(2 / 3)
    json.dumps(result)
    with pytest.raises(ValueError, match="one per clip"):
        identity_agreement(clips, LevelClassifier(), 28, requested=[1, 2])


@pytest.fixture(scope="module")
def mnist_and_classifier():
    require_mnist()
    train, test = load("mnist", "train"), load("mnist", "test")
    small = ImageArrays(train.images[:4000], train.labels[:4000], train.num_classes, train.class_names)
    held_out = ImageArrays(test.images[:500], test.labels[:500], test.num_classes, test.class_names)
    model, _ = train_classifier(small, held_out, epochs=1, batch_size=64, log=None, width=8, hidden=32)
    return test, model


def test_identity_agreement_on_moving_mnist_digits(mnist_and_classifier):
    # Clips of real test digits bouncing in a 64x64 frame at whole-pixel positions: every frame holds the same
    # 28x28 digit, so its crop is the same and the agreement is exactly 1; the fraction of frames classified as the
    # digit's label equals the classifier's accuracy on those digits in MNIST's own framing (which also centres
    # the digit's centre of mass) up to a few 1-px shifts.
    test, model = mnist_and_classifier
    rng = np.random.default_rng(0)
    count, frames = 60, 6
    indices = rng.choice(len(test.images), count, replace=False)
    clips, tracks = [], []
    for i in indices:
        start, velocity = rng.uniform(0, 36, 2), rng.uniform(-4, 4, 2)
        track = np.stack([_bouncing(start[k], velocity[k], frames, 36) for k in range(2)], -1)
        clips.append(_paste(test.images[i, :, :, 0], track, 64))
        tracks.append(np.rint(track))
    clips = np.stack(clips)
    labels = test.labels[indices]
    digits = torch.from_numpy(test.images[indices]).permute(0, 3, 1, 2).float() / 127.5 - 1
    accuracy = (classify(model, digits).numpy() == labels).mean()
    result = identity_agreement(clips, model, 28, requested=labels)
    assert result["agreement"] == 1 and result["consistent_clips"] == 1 and result["empty_frames"] == 0
    assert abs(result["requested_accuracy"] - accuracy) <= 0.05
    assert accuracy > 0.8
    motion = motion_smoothness(clips, positions=np.stack(tracks))
    assert motion["centroid_error"] == pytest.approx(0, abs=1e-9)


# -- report ----------------------------------------------------------------------------------------------------------
def test_video_report_gathers_what_applies():
    rng = np.random.default_rng(5)
    clips = np.zeros((4, 5, 32, 32, 1), np.uint8)
    for n in range(4):
        for f in range(5):
            clips[n, f, 2 + 3 * f:7 + 3 * f, 4 + 2 * f:9 + 2 * f] = round(255 * (n + 2) / 9)
    noisy = np.clip(clips.astype(int) + rng.integers(0, 3, clips.shape), 0, 255).astype(np.uint8)
    floats = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # the same clips as [N, C, F, H, W]
    plain = video_report(floats, clips)
    assert set(plain) == {"clips", "flicker"} and plain["flicker"]["ratio"] == pytest.approx(1)
    full = video_report(clips, clips, extractor=StandInExtractor(), classifier=LevelClassifier(), digit_size=28,
                        requested=[2, 3, 4, 0])
    json.dumps(full)
    assert full["frame_fid"] == pytest.approx(0, abs=1e-9) and full["fvd_proxy"] == pytest.approx(0, abs=1e-9)
    assert full["motion"]["generated"]["acceleration"] == 0
    assert full["motion"]["generated"]["speed"] == pytest.approx(np.sqrt(13))  # (3, 2) px per frame
    assert full["identity"]["generated"]["requested_accuracy"] == pytest.approx(15 / 20)
    assert full["identity"]["reference"]["agreement"] == 1
    assert video_report(noisy, clips)["flicker"]["ratio"] > 1
