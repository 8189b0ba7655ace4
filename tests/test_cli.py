"""The command line end to end on the tiny preset (a few seconds of training on 2,048 MNIST digits at 16x16)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusekit.cli import main
from diffusekit.config import PRESETS, Config, from_dict, read_file
from diffusekit.monitor import read_metrics, read_scalars

from .assets import require_mnist

require_mnist()  # the tiny preset trains on MNIST

TRAIN = ["train", "--preset", "tiny", "--quiet", "--threads", "1", "--set", "run.checkpoint_every=64",
         "--set", "run.log_every=32", "--set", "run.sample_every=128"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained to 128 images, then continued to 192 with `--resume auto`."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main([*TRAIN, "--run-dir", str(run_dir), "--images", "128"]) == 0
    assert main([*TRAIN, "--run-dir", str(run_dir), "--images", "192"]) == 0
    return run_dir


def test_run_directory_contents(run):
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "environment.json", "metrics.jsonl", "tensorboard",
                                              "samples", "samples.png", "loss.png", "checkpoints"}
    config = from_dict(Config, read_file(run / "config.yaml"))
    assert config.run.total_images == 192 and config.data.resolution == 16
    sessions = json.loads((run / "environment.json").read_text())["sessions"]
    assert [s["start_nimg"] for s in sessions] == [0, 128]
    assert {"torch", "python", "git", "device", "command"} <= set(sessions[0])
    assert [s["world_size"] for s in sessions] == [1, 1]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["cur_nimg"] for r in records] == [32, 64, 96, 128, 160, 192]  # no duplicates after the resume
    assert all(r["loss"] > 0 and r["img_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in records)
    tags = {tag for tag, _, _ in read_scalars(run / "tensorboard")}
    assert {"train/loss", "train/lr", "train/img_per_s"} <= tags
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "ckpt-000000000064", "ckpt-000000000128", "ckpt-000000000192"]
    grid = Image.open(run / "samples" / "grid-000000000192.png")
    assert grid.size == (2 + 2 * 18, 2 + 10 * 18)  # 10 class rows x 2 columns of 16 px, 2 px padding
    assert Image.open(run / "loss.png").size == (800, 500)


def test_resume_never_refuses_and_changes_nothing(run, capsys):
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main([*TRAIN, "--run-dir", str(run), "--resume", "never"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_resume_with_a_different_recipe_is_refused(run, capsys):
    before = (run / "config.yaml").read_text()
    assert main([*TRAIN, "--run-dir", str(run), "--images", "256", "--set", "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "different recipe" in err and "optim.lr: 0.002 -> 0.1" in err
    assert (run / "config.yaml").read_text() == before


def test_sample_is_reproducible_in_every_format(run, tmp_path):
    common = ["sample", str(run), "--n", "12", "--steps", "3", "--quiet", "--threads", "1"]
    for name, extra in (("a", []), ("again", []), ("b", ["--batch-size", "5"])):
        assert main([*common, "--seed", "4", *extra, "--out", str(tmp_path / f"{name}.npz")]) == 0
    a, again, b = (np.load(tmp_path / f"{name}.npz") for name in ("a", "again", "b"))
    assert a["images"].shape == (12, 1, 16, 16) and a["images"].dtype == np.float32
    np.testing.assert_array_equal(a["images"], again["images"])  # same seed, same output
    # per-sample seeds: another batch size gives the same images up to float32 rounding of batched convolutions
    np.testing.assert_allclose(a["images"], b["images"], atol=1e-5)
    assert a["labels"].tolist() == [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert json.loads(str(a["meta"]))["steps"] == 3
    assert main([*common, "--seed", "5", "--out", str(tmp_path / "c.npz")]) == 0
    assert not np.array_equal(np.load(tmp_path / "c.npz")["images"], a["images"])
    assert main([*common, "--class", "3", "--guidance", "2", "--out", str(tmp_path / "three.npz")]) == 0
    assert set(np.load(tmp_path / "three.npz")["labels"].tolist()) == {3}
    assert main([*common, "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").mode == "L"
    assert main([*common, "--ema", "model", "--out", str(tmp_path / "pngs")]) == 0
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 12
    # the network in NHWC order and bf16: the same images up to bf16's rounding, the settings in the metadata
    fast_flags = ["--channels-last", "--precision", "bf16"]
    assert main([*common, "--seed", "4", *fast_flags, "--out", str(tmp_path / "f.npz")]) == 0
    fast = np.load(tmp_path / "f.npz")
    assert json.loads(str(fast["meta"]))["execution"] == {"precision": "bf16", "channels_last": True, "compile": False}
    assert json.loads(str(a["meta"]))["execution"]["precision"] == "fp32"
    error = np.abs(fast["images"] - a["images"])
    assert 0 < error.mean() < 0.05, error.mean()  # bf16 ran (not float32's ~1e-7) and stays close


def test_sample_guidance_flags_and_autoguidance(run, tmp_path, capsys):
    common = ["sample", str(run), "--n", "10", "--steps", "3", "--quiet", "--threads", "1"]

    def images(name, *extra):
        assert main([*common, *extra, "--out", str(tmp_path / f"{name}.npz")]) == 0
        data = np.load(tmp_path / f"{name}.npz")
        return data["images"], json.loads(str(data["meta"]))

    plain, _ = images("plain", "--guidance", "1")
    cfg, _ = images("cfg", "--guidance", "3")
    shaped, meta = images("shaped", "--guidance", "3", "--guidance-rescale", "0.7", "--guidance-schedule",
                          "increasing", "--guidance-interval", "0.2", "20", "--threshold", "dynamic")
    assert meta["guidance_settings"] == {"scale": 3.0, "rescale": 0.7, "weight_schedule": "increasing",
                                         "interval": [0.2, 20.0], "threshold": "dynamic"}
    assert not np.array_equal(shaped, cfg) and not np.array_equal(cfg, plain)
    scaled, meta = images("scaled", "--guidance", "3", "--eps-scale", "0.99")
    assert meta["guidance_settings"] == {"scale": 3.0, "eps_scale": 0.99}
    assert np.isfinite(scaled).all() and not np.array_equal(scaled, cfg)
    # autoguidance by the model itself is no guidance at all: D + (w - 1)(D - D) = D exactly
    same, meta = images("self", "--guidance", "3", "--autoguide", str(run))
    np.testing.assert_array_equal(same, plain)
    assert meta["guidance_settings"]["autoguide"] == str(run)
    early, _ = images("early", "--guidance", "2", "--autoguide", str(run / "checkpoints" / "ckpt-000000000064"),
                      "--autoguide-ema", "model")
    assert np.isfinite(early).all() and not np.array_equal(early, plain)
    other = tmp_path / "other"
    assert main(["train", "--preset", "tiny", "--run-dir", str(other), "--images", "16", "--quiet",
                 "--set", "data.resolution=8", "--set", "run.checkpoint_every=16"]) == 0
    assert main([*common, "--guidance", "2", "--autoguide", str(other), "--out", str(tmp_path / "x.npz")]) == 2
    assert "draws (1, 8, 8) images" in capsys.readouterr().err


def test_cascade_stage_trains_and_samples_from_low_resolution_inputs(run, tmp_path, capsys):
    stage2 = tmp_path / "stage2"
    assert main(["train", "--preset", "tiny", "--run-dir", str(stage2), "--images", "32", "--quiet",
                 "--set", "cascade.low_resolution=8", "--set", "run.checkpoint_every=32",
                 "--set", "run.sample_every=32"]) == 0
    assert (stage2 / "samples.png").exists()  # training grids upsample real training digits
    low = tmp_path / "low.npz"
    np.savez(low, images=np.random.default_rng(0).uniform(-1, 1, (6, 1, 8, 8)).astype(np.float32),
             labels=np.array([3, 3, 1, 0, 9, 2]))
    common = ["sample", str(stage2), "--n", "6", "--steps", "2", "--quiet", "--threads", "1"]
    assert main([*common, "--low-res", str(low), "--out", str(tmp_path / "hi.npz")]) == 0
    hi = np.load(tmp_path / "hi.npz")
    assert hi["images"].shape == (6, 1, 16, 16) and hi["labels"].tolist() == [3, 3, 1, 0, 9, 2]
    assert main([*common, "--out", str(tmp_path / "x.npz")]) == 2
    assert "conditioned on 8x8 images: give them with --low-res" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--quiet", "--low-res", str(low),
                 "--out", str(tmp_path / "y.npz")]) == 2
    assert "is not a cascade stage" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--guidance-interval", "3", "1"], "0 <= lo < hi"),
    (["--guidance-rescale", "2"], "rescale phi must be in [0, 1]"),
    (["--eps-scale", "0"], "eps_scale (epsilon scaling's lambda) must be > 0"),
    (["--class", "ten"], "not a class; classes: 0, 1"),
    (["--class", "10"], "out of range"),
    (["--ema", "slow"], "no EMA named 'slow'"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--out", "x.jpg"], "write a .png grid"),
    (["--spacing", "wobbly"], "wobbly"),
    (["--option", "order=9"], "multistep order must be an integer in 1..6, got 9"),
    (["--option", "nope=1"], "unknown option(s) nope"),
    (["--low-res", "missing.npz"], "is not a cascade stage"),
])
def test_sample_errors(run, tmp_path, capsys, args, message):
    """A user error: exit 2 and one line naming the problem, never a traceback."""
    argv = ["sample", str(run), "--n", "2", "--steps", "2", "--quiet", "--out", str(tmp_path / "x.npz"), *args]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("diffusekit sample: error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--guidance-schedule", "wavy"], "invalid choice: 'wavy'"),
    (["--n", "0"], "argument --n: must be >= 1, got 0"),
    (["--batch-size", "-3"], "argument --batch-size: must be >= 1, got -3"),
    (["--threads", "x"], "argument --threads: expected an integer, got 'x'"),
])
def test_sample_flag_values_refused_by_the_parser(run, tmp_path, capsys, args, message):
    argv = ["sample", str(run), "--n", "2", "--steps", "2", "--quiet", "--out", str(tmp_path / "x.npz"), *args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_internal_error_is_a_traceback_with_exit_1(run, tmp_path, monkeypatch):
    """A ValueError from inside a command is a bug, not a user error: it is not dressed up as a one-line message
    (the console script exits 1 with the traceback)."""
    import diffusekit.cli.sample as cli_sample

    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(cli_sample, "generate", broken)
    argv = ["sample", str(run), "--n", "2", "--steps", "2", "--quiet", "--out", str(tmp_path / "x.npz")]
    with pytest.raises(ValueError, match="an internal inconsistency"):
        main(argv)
    script = ("import sys, diffusekit.cli.sample as s\n"
              "def broken(*a, **k): raise ValueError('an internal inconsistency')\n"
              "s.generate = broken\n"
              "from diffusekit.cli import main\n"
              "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: an internal inconsistency" in done.stderr
    assert "error: an internal" not in done.stderr


def test_train_errors(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "x"), "--set", "optim.lrr=1"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(tmp_path / "x"), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'; choose one of tiny, mnist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written for a bad config


def test_presets_and_info(run, capsys):
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in PRESETS)
    assert main(["presets", "--show", "tiny"]) == 0
    assert "total_images: 256" in capsys.readouterr().out
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [c["cur_nimg"] for c in info["checkpoints"]] == [64, 128, 192]
    assert all(c["status"] == "ok" for c in info["checkpoints"]) and info["sessions"] == 2
    assert main(["info", str(run.parent / "nothing")]) == 2


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "diffusekit", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--resume" in out and "--set" in out


def test_train_on_an_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{i}.png")
    run_dir = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--quiet", "--threads", "1", "--run-dir", str(run_dir), "--data",
            str(tmp_path / "data"), "--images", "32", "--set", "data.resolution=8", "--set", "data.limit=null",
            "--set", "network.options.attn_resolutions=[4]"]
    assert main(argv) == 0
    assert main(["sample", str(run_dir), "--n", "4", "--steps", "2", "--class", "dogs", "--quiet",
                 "--out", str(tmp_path / "dogs.npz"), "--out", str(tmp_path / "dogs.png")]) == 0
    samples = np.load(tmp_path / "dogs.npz")
    assert samples["images"].shape == (4, 3, 8, 8) and set(samples["labels"].tolist()) == {1}
    assert Image.open(tmp_path / "dogs.png").mode == "RGB"
    # a corrupt file and a stray text file: skipped with a warning, or an error before any work with --strict
    (tmp_path / "data" / "dogs" / "broken.png").write_bytes(b"\x89PNG cut")
    (tmp_path / "data" / "cats" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 2 of 14 files: 1 unreadable"):
        assert main([*argv, "--run-dir", str(tmp_path / "run2")]) == 0
    assert main([*argv, "--run-dir", str(tmp_path / "run3"), "--strict"]) == 2
    assert not (tmp_path / "run3").exists()


def test_class_major_png_shows_a_row_per_class(run, tmp_path):
    assert main(["sample", str(run), "--n", "40", "--steps", "2", "--quiet", "--columns", "3",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (2 + 3 * 18, 2 + 10 * 18)  # 10 rows of the first 3 per class


def test_a_folder_that_is_not_a_run_is_never_written_to(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    for extra in ([], ["--overwrite"]):
        assert main([*TRAIN, "--run-dir", str(folder), "--images", "32", *extra]) == 2
        assert "not a diffusekit run directory" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"]
    assert (folder / "holiday.jpg").read_bytes() == b"precious"


def test_overwrite_starts_the_run_over(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--run-dir", str(run), "--images", "64"]) == 0
    assert main([*TRAIN, "--run-dir", str(run), "--images", "64", "--seed", "3"]) == 2  # another recipe: refused
    assert main([*TRAIN, "--run-dir", str(run), "--images", "64", "--seed", "3", "--overwrite"]) == 0
    assert "--overwrite: removed the earlier run" in capsys.readouterr().err
    assert from_dict(Config, read_file(run / "config.yaml")).run.seed == 3
    assert len(json.loads((run / "environment.json").read_text())["sessions"]) == 1
    assert [r["cur_nimg"] for r in read_metrics(run / "metrics.jsonl")] == [32, 64]


@pytest.mark.parametrize("extra, expected", [
    (["--set", "data.conditional=false", "--set", "sample.guidance=3"],
     "sample.guidance is 3.0, but classifier-free guidance needs a conditional model"),
    (["--set", "data.resolution=30", "--set", "network.options.attn_resolutions=[]",
      "--set", "network.options.channel_mult=[1,2,2]"], "use a resolution that is a multiple of 4 (e.g. 28 or 32)"),
    (["--set", "network.kind=dit", "--set", "data.resolution=15"], "use a resolution that is a multiple of 2"),
    (["--batch-size", "16", "--set", "optim.accumulation=2"], "not divisible by 3 processes x optim.accumulation 2"),
], ids=["guidance-unconditional", "unet-resolution", "dit-resolution", "batch-world-accumulation"])
def test_impossible_combinations_are_refused_before_any_work(tmp_path, capsys, monkeypatch, extra, expected):
    if "processes" in expected:
        monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun would set it (the check comes before joining a group)
    run_dir = tmp_path / "run"
    assert main([*TRAIN, "--run-dir", str(run_dir), "--images", "32", *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_guidance_on_an_unconditional_checkpoint_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*TRAIN, "--run-dir", str(run_dir), "--images", "32", "--set", "data.conditional=false"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--n", "2", "--guidance", "3", "--out", str(tmp_path / "x.png")]) == 2
    assert "--guidance: classifier-free guidance needs a class- or text-conditional model" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--n", "2", "--guidance", "3", "--metrics", "fid"]) == 2
    assert "--guidance 3.0: classifier-free guidance needs a conditional model" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_refused(run, tmp_path, capsys):
    from diffusekit.models.checkpoint import load_checkpoint, save_checkpoint

    cur_nimg, model, emas, state = load_checkpoint(run / "checkpoints" / "ckpt-000000000192")
    first = next(iter(model))
    model[first] = model[first][..., :1].clone()  # one tensor of the wrong shape
    emas = {name: {**ema, first: model[first]} for name, ema in emas.items()}
    broken = save_checkpoint(tmp_path, cur_nimg, model, emas, state)
    assert main(["sample", str(broken), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "weights do not fit the network its config describes" in err and "Traceback" not in err
