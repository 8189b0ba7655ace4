"""Video from the command line: a tiny moving-MNIST run, its clips in every format, prediction, and the refusals."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusekit.cli import main

from .assets import require_mnist, require_text_encoder

require_mnist()  # moving MNIST is made from MNIST digits

# 4-frame 16x16 clips of one 8-px digit, a tiny space-time U-Net, prediction from up to 2 given frames
TRAIN = ["train", "--preset", "moving-mnist", "--quiet", "--threads", "1", "--images", "32",
         "--set", "data.resolution=16", "--set", "video.frames=4", "--set", "video.context_frames=2",
         "--set", "video.options={digits: 1, count: 64, digit_size: 8, speed: [1.0, 2.0]}",
         "--set", "network.preset=tiny", "--set", "optim.batch_size=8", "--set", "run.checkpoint_every=32",
         "--set", "run.sample_every=32",
         "--set", "run.log_every=16", "--set", "eval.loss_every=null"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("video") / "run"
    assert main([*TRAIN, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("image") / "run"
    assert main(["train", "--preset", "tiny", "--quiet", "--threads", "1", "--images", "16", "--run-dir",
                 str(run_dir), "--set", "run.checkpoint_every=16", "--set", "run.sample_every=null"]) == 0
    return run_dir


def _sample(run, *args):
    return main(["sample", str(run), "--steps", "2", "--quiet", "--threads", "1", *map(str, args)])


def test_the_run_writes_a_grid_of_frames_and_an_animation(run):
    grid = np.asarray(Image.open(run / "samples.png"))
    # a row of 4 frames per class (10 classes), 16 px each with 2 px padding
    assert grid.shape[:2] == (10 * 18 + 2, 4 * 18 + 2)
    animation = Image.open(run / "samples.gif")
    assert animation.n_frames == 4


def test_clips_in_every_format_are_the_same_samples(run, tmp_path):
    outs = [tmp_path / name for name in ("c.npz", "c.png", "c.gif", "c.mp4", "clips")]
    assert _sample(run, "--n", 3, "--class", 7, *[a for o in outs for a in ("--out", o)]) == 0
    with np.load(outs[0]) as f:
        clips, labels = f["images"], f["labels"]
        meta = json.loads(str(f["meta"]))
    assert clips.shape == (3, 1, 4, 16, 16) and labels.tolist() == [7, 7, 7] and meta["frames"] == 4
    pixels = np.rint((np.clip(clips, -1, 1) + 1) * 127.5).astype(np.uint8)
    grid = np.asarray(Image.open(outs[1]))
    assert np.array_equal(grid[2:18, 2 + 18:18 + 18], pixels[0, 0, 1])  # clip 0, frame 1
    gif = Image.open(outs[2])
    assert gif.n_frames == 4
    gif.seek(3)
    assert np.array_equal(np.asarray(gif.convert("L"))[2:18, 20:36], pixels[1, 0, 3])  # clip 1 at column 1
    assert outs[3].stat().st_size > 0
    assert sorted(p.name for p in outs[4].iterdir()) == ["000000.gif", "000001.gif", "000002.gif"]
    # the same seed gives the same clips
    assert _sample(run, "--n", 3, "--class", 7, "--out", tmp_path / "again.npz") == 0
    with np.load(tmp_path / "again.npz") as f:
        assert np.array_equal(f["images"], clips)


def test_prediction_keeps_the_given_frames_and_extends_the_clip(run, tmp_path):
    assert _sample(run, "--n", 2, "--out", tmp_path / "given.npz") == 0
    assert _sample(run, "--n", 2, "--context", tmp_path / "given.npz", "--context-frames", 2, "--frames", 9,
                   "--out", tmp_path / "more.npz", "--out", tmp_path / "more.gif") == 0
    with np.load(tmp_path / "given.npz") as f, np.load(tmp_path / "more.npz") as g:
        given, more = f["images"], g["images"]
    assert more.shape == (2, 1, 9, 16, 16)
    assert np.array_equal(more[:, :, :2], given[:, :, :2])  # the context frames, unchanged
    # one GIF clip continued twice: 2 given frames, windows of 4 add 2 each
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "one.gif", save_all=True,
                                                          append_images=[Image.new("L", (16, 16), 255)])
    assert _sample(run, "--n", 2, "--context", tmp_path / "one.gif", "--context-frames", 2, "--frames", 6,
                   "--out", tmp_path / "cont.npz") == 0
    with np.load(tmp_path / "cont.npz") as f:
        cont = f["images"]
    assert cont.shape == (2, 1, 6, 16, 16)
    assert np.array_equal(cont[:, 0, 0], np.full((2, 16, 16), -1.0))  # black, then white: the GIF's two frames
    assert np.array_equal(cont[:, 0, 1], np.ones((2, 16, 16)))
    # history guidance: the same given frames, other made frames, recorded in the file
    assert _sample(run, "--n", 2, "--context", tmp_path / "given.npz", "--context-frames", 2, "--frames", 9,
                   "--history-guidance", 2, "--out", tmp_path / "guided.npz") == 0
    with np.load(tmp_path / "guided.npz", allow_pickle=False) as f:
        guided = f["images"]
    assert np.array_equal(guided[:, :, :2], given[:, :, :2]) and not np.allclose(guided[:, :, 2:], more[:, :, 2:])


def _error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("args, message", [
    (["--context-frames", "2"], "--context and --context-frames go together"),
    (["--context", "CLIP", "--context-frames", "4"], "context_frames must be in 1..3"),
    (["--context", "SHORT", "--context-frames", "2"], "fewer than --context-frames 2"),
    (["--context", "BIG", "--context-frames", "1"], "its frames are 1x8x8, the model's 1x16x16"),
    (["--reject"], "--reject is for image models"),
    (["--history-guidance", "2"], "--history-guidance guides towards given frames"),
    (["--context", "CLIP", "--context-frames", "2", "--history-guidance", "0.5"], "--history-guidance must be >= 1"),
])
def test_video_sampling_errors(run, tmp_path, capsys, args, message):
    Image.new("L", (16, 16)).save(tmp_path / "short.gif")  # one frame
    np.savez(tmp_path / "big.npz", images=np.zeros((1, 1, 4, 8, 8), np.float32))
    np.savez(tmp_path / "clip.npz", images=np.zeros((1, 1, 4, 16, 16), np.float32))
    files = {"CLIP": tmp_path / "clip.npz", "SHORT": tmp_path / "short.gif", "BIG": tmp_path / "big.npz"}
    args = [str(files.get(a, a)) for a in args]
    err = _error(capsys, _sample(run, "--n", 1, "--out", tmp_path / "x.npz", *args))
    assert message in err


@pytest.mark.parametrize("args", [["--frames", "8"], ["--out", "x.gif"]])
def test_an_image_model_refuses_video_sampling_naming_both(image_run, tmp_path, capsys, args):
    args = [str(tmp_path / a) if a.endswith(".gif") else a for a in args]
    err = _error(capsys, _sample(image_run, "--n", 1, "--out", tmp_path / "x.npz", *args))
    assert "is for video models" in err and "an image model (1x16x16 images)" in err


def test_image_commands_refuse_a_video_model_naming_both(run, tmp_path, capsys):
    code = main(["restore", str(run), "--task", "inpaint", "--mask", "half", "--input", "mnist:test:2",
                 "--method", "replacement", "--out", str(tmp_path / "r.npz")])
    err = _error(capsys, code)
    assert "diffusekit restore makes images" in err and "a video model (clips of 4 frames of 1x16x16)" in err
    err = _error(capsys, main(["eval", str(run), "--n", "10", "--metrics", "fid"]))
    assert "diffusekit eval makes images" in err


def test_a_video_model_without_frame_conditioning_refuses_context(tmp_path, capsys):
    run_dir = tmp_path / "plain"
    argv = [a if a != "video.context_frames=2" else "video.context_frames=0" for a in TRAIN]
    argv[argv.index("--images") + 1] = "8"
    assert main([*argv, "--run-dir", str(run_dir), "--set", "run.sample_every=null"]) == 0
    capsys.readouterr()
    np.savez(tmp_path / "clip.npz", images=np.zeros((1, 1, 4, 16, 16), np.float32))
    err = _error(capsys, _sample(run_dir, "--n", 1, "--out", tmp_path / "x.npz", "--context", tmp_path / "clip.npz",
                                 "--context-frames", 1))
    assert "was not trained for prediction" in err


def test_train_on_a_folder_of_videos_skipping_a_short_one(tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, frames in (("a.gif", 6), ("b.gif", 5), ("short.gif", 2)):
        pictures = [Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)) for _ in range(frames)]
        pictures[0].save(folder / name, save_all=True, append_images=pictures[1:])
    images = tmp_path / "images"  # the image groups' own pictures
    images.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(images / f"{i}.png")
    run_dir = tmp_path / "run"
    argv = ["train", "--preset", "moving-mnist", "--quiet", "--threads", "1", "--images", "8", "--data", str(folder),
            "--run-dir", str(run_dir), "--set", "data.resolution=8", "--set", "data.channels=1",
            "--set", "video.frames=4", "--set", "video.context_frames=2", "--set", "video.options={}",
            "--set", "video.image_fraction=0.5", "--set", f"video.image_data={images}",
            "--set", "network.preset=tiny", "--set", "optim.batch_size=4", "--set", "run.checkpoint_every=8",
            "--set", "run.sample_every=null", "--set", "eval.loss_every=null", "--set", "sample.guidance=1"]
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 videos: 1 too short \(under 4 frames: short.gif\)"):
        assert main(argv) == 0
    assert "(2 clips (1, 4, 8, 8), 0 classes)" in capsys.readouterr().err  # one clip from each long GIF
    assert _sample(run_dir, "--n", 2, "--out", tmp_path / "x.gif") == 0
    assert Image.open(tmp_path / "x.gif").n_frames == 4


def test_a_text_conditioned_clip_run_is_sampled_from_prompts(tmp_path, capsys):
    require_text_encoder()
    run_dir = tmp_path / "text"
    argv = [*TRAIN, "--run-dir", str(run_dir), "--set", "data.captions=true", "--set", "video.image_fraction=0.5",
            "--set", "video.image_data=mnist", "--set", "run.sample_every=null"]
    argv[argv.index("--images") + 1] = "16"
    assert main(argv) == 0
    out = tmp_path / "clips.npz"
    prompts = ["a handwritten three moving", "the digit 7 bouncing around"]
    assert _sample(run_dir, "--n", 4, "--out", out, "--prompt", prompts[0], "--prompt", prompts[1]) == 0
    with np.load(out) as data:
        assert data["images"].shape == (4, 1, 4, 16, 16) and data["labels"].tolist() == [0, 0, 1, 1]
        assert json.loads(str(data["meta"]))["prompts"] == prompts
    capsys.readouterr()
    err = _error(capsys, _sample(run_dir, "--n", 1, "--out", tmp_path / "x.npz"))
    assert "is text-conditioned (data.captions): give what to draw with --prompt" in err
    err = _error(capsys, _sample(run_dir, "--n", 1, "--out", tmp_path / "y.npz", "--prompt", " "))
    assert "--prompt: empty prompt" in err


def test_captioned_clips_refuse_image_groups_without_their_classes(tmp_path, capsys):
    images = tmp_path / "images"  # unlabelled pictures cannot take a digit's caption
    images.mkdir()
    for i in range(3):
        Image.new("L", (16, 16), 40 * i).save(images / f"{i}.png")
    argv = [*TRAIN, "--run-dir", str(tmp_path / "run"), "--set", "data.captions=true",
            "--set", "video.image_fraction=0.5", "--set", f"video.image_data={images}"]
    err = _error(capsys, main(argv))
    assert "an image group takes the caption of the clip it replaces" in err and "has 0" in err
