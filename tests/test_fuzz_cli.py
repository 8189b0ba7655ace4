"""Property-based fuzzing of the command line: argument lists generated from the real parser (every subcommand
and flag, so new flags are covered automatically) with junk, edge-case and valid values. Whatever the input,
``diffusekit`` ends with status 0 or 2 (argparse exits 2 too) and, on an error, one line and no traceback.

Heavy work is replaced by stand-ins so that thousands of commands stay fast: training data is a tiny random
set, ``Trainer.run`` returns at once, the feature extractor is a 4-d random projection (with its own cache
directory), and ``--nproc`` does not start torchrun. Everything else (config resolution and validation, run
directories, checkpoint loading, sampling, metrics) is the real code."""

import argparse
import contextlib
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffusekit.cli as cli
import diffusekit.cli.evaluation as cli_evaluation
import diffusekit.cli.report as cli_report
import diffusekit.cli.train as cli_train
import diffusekit.metrics.evaluate as evaluate_module
import diffusekit.metrics.inception as inception
from diffusekit.data import ClipArrays, ImageArrays
from diffusekit.training.loop import Trainer

from .assets import require_mnist

require_mnist()  # the fixture run trains on MNIST

EXAMPLES = 250
PARSER = cli.build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
SKIPPED_FLAGS = {"--help", "--nproc"}  # --nproc would start torchrun; it has its own test


class FakeExtractor(torch.nn.Module):
    """Stands in for Inception: the same interface, a fixed random projection of 8x8 thumbnails."""

    name, dim, preprocess, resolution, comparable, weights_sha1 = "fake", 4, "pytorch", 8, False, "fake"
    config_hash = "fake-extractor"

    def __init__(self):
        super().__init__()
        self.projection = torch.randn(3 * 64, self.dim, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64)

    def describe(self):
        return {"extractor": self.name, "preprocess": self.preprocess, "extractor_resolution": self.resolution,
                "weights_sha1": self.weights_sha1, "comparable_to_published": False, "config_hash": self.config_hash}

    def forward(self, images):
        x = images.double()
        x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
        return torch.nn.functional.interpolate(x, size=(8, 8)).flatten(1) @ self.projection


def tiny_data(data_config):
    """A stand-in for the training data: 16 random images at the configured size and channels."""
    size = data_config.resolution or 16
    channels = data_config.channels or 1
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, size, size, channels), dtype=np.uint8)
    return ImageArrays(images, rng.integers(0, 10, 16).astype(np.int64), 10, tuple("0123456789"))


def tiny_training_data(config):
    """The stand-in for what a run trains on: tiny_data's images, or 4 clips of them for a video config."""
    data = tiny_data(config.data)
    if config.video.frames is None:
        return data
    frames = config.video.frames
    clips = np.stack([data.images[np.arange(i, i + frames) % len(data)] for i in range(4)])
    return ClipArrays(clips, data.labels[:4], data.num_classes, data.class_names)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths of every kind for positional arguments and file flags."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    assert cli.main(["train", "--preset", "tiny", "--quiet", "--threads", "1", "--run-dir", str(run), "--images",
                     "16", "--set", "run.checkpoint_every=16", "--set", "data.limit=64"]) == 0
    (root / "notes.txt").write_text("hello")
    (root / "junk.npz").write_bytes(b"PK not really")
    (root / "folder").mkdir()
    images = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32) * 2 - 1
    np.savez(root / "samples.npz", images=images, labels=np.zeros(4, np.int64))
    return {"run": run, "checkpoint": next((run / "checkpoints").iterdir()), "text": root / "notes.txt",
            "junk": root / "junk.npz", "folder": root / "folder", "samples": root / "samples.npz",
            "missing": root / "missing", "new": root / "new-run", "out": root / "out"}


@pytest.fixture
def light(monkeypatch, tmp_path):
    for module in (cli_evaluation, evaluate_module):  # where load_training_data is looked up
        monkeypatch.setattr(module, "load_training_data", tiny_data)
    monkeypatch.setattr(cli_train, "training_data", tiny_training_data)
    monkeypatch.setattr(Trainer, "run", lambda self, *a, **k: None)
    monkeypatch.setattr(inception, "get_extractor", lambda *a, **k: FakeExtractor())
    monkeypatch.setattr(cli_train, "_torchrun", lambda args: 0)
    monkeypatch.setattr(cli_report, "_sleep", _ctrl_c)  # report --watch: one report, then Ctrl-C
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "cache"))


def _ctrl_c(seconds: float) -> None:
    raise KeyboardInterrupt


def _flags(command: str) -> list[argparse.Action]:
    return [a for a in COMMANDS[command]._actions if a.option_strings and not set(a.option_strings) & SKIPPED_FLAGS]


# positional arguments that lead somewhere (names of `world` paths)
GOOD = {("sample", "source"): ["run", "checkpoint"], ("eval", "source"): ["run", "checkpoint"],
        ("info", "run_dir"): ["run"], ("report", "run"): ["run"], ("fid", "a"): ["samples"], ("fid", "b"): ["samples"],
        ("ref-stats", "dataset"): ["folder", "samples"], ("restore", "source"): ["run", "checkpoint"]}
JUNK = st.sampled_from(["", "-1", "0", "1", "2", "3", "nan", "inf", "-inf", "1e9", "abc", "--", "-", "x=y", "=",
                        "a.b=1", "optim.lr=1e-3", "run.total_images=-5", "network.kind=vit", "data.name=../..",
                        "0.5", "[1, 2]", "{", "ema", "model", "cuda", "cpu", "fid,kid", "memorization", "7", "dogs",
                        "order=3", "mnist", "tiny", "x" * 300, "é", "\t"])


@st.composite
def command_lines(draw, world):
    command = draw(st.sampled_from(sorted(COMMANDS)))
    path_names = st.sampled_from(sorted(world))
    argv = [command]
    for action in COMMANDS[command]._actions:
        if action.option_strings or action.dest == "help" or draw(st.integers(0, 9)) == 0:
            continue
        roll = draw(st.integers(0, 9))
        if roll < 6 and (command, action.dest) in GOOD:  # mostly a value that works, so that commands get far
            argv.append(str(world[draw(st.sampled_from(GOOD[command, action.dest]))]))
        elif roll < 8:
            argv.append(str(world[draw(path_names)]))
        else:
            argv.append(draw(JUNK))
    if command == "train":
        argv += ["--run-dir", str(world["out"] / f"train-{draw(st.integers(0, 3))}")]
    flags = _flags(command)
    for action in draw(st.lists(st.sampled_from(flags), max_size=4)) if flags else []:
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs == 0:
            continue
        count = action.nargs if isinstance(action.nargs, int) else 1
        for _ in range(count if draw(st.integers(0, 9)) > 0 else 0):  # sometimes the value is missing
            if action.choices is not None and draw(st.booleans()):
                argv.append(str(draw(st.sampled_from(list(action.choices)))))
            elif action.type is int and draw(st.booleans()):
                argv.append(str(draw(st.integers(-3, 12))))
            elif draw(st.booleans()):
                argv.append(str(world[draw(path_names)]))
            else:
                argv.append(draw(JUNK))
    if command in ("sample", "eval") and "--n" not in argv and draw(st.booleans()):
        argv += ["--n", str(draw(st.integers(1, 6)))]
    if command == "sample" and "--out" not in argv:
        argv += ["--out", str(world["out"] / draw(st.sampled_from(["s.png", "s.npz", "dir"])))]
    if command == "restore":  # its required flags, mostly with values that work, so that restorations run
        for flag, values in (("--task", ["inpaint", "super-resolution", "deblur"]),
                             ("--method", ["pocs", "dps", "ilvr", "smc", "ccdf", "repaint"]),
                             ("--input", [str(world["samples"])]),
                             ("--out", [str(world["out"] / "r.png"), str(world["out"] / "r.npz")]),
                             ("--steps", ["2"])):
            if flag not in argv and draw(st.integers(0, 9)) > 0:
                argv += [flag, draw(st.sampled_from(values))]
    if draw(st.integers(0, 19)) == 0:
        argv.append(draw(st.sampled_from(["--no-such-flag", "-z", "--n=-1"])))
    return argv


def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: --help exits 0, a parse error 2
            code = e.code
    return code, err.getvalue()


def test_the_grammar_covers_every_command_and_flag():
    assert set(COMMANDS) >= {"train", "sample", "eval", "fid", "ref-stats", "info", "presets", "restore", "report"}
    assert any("--guidance-interval" in a.option_strings for a in _flags("sample"))  # nargs=2 flags too


@pytest.mark.slow
def test_generated_command_lines_end_with_0_or_2_and_one_line(world, light):
    outcomes = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(argv=command_lines(world))
    def check(argv):
        code, err = _run(argv)
        outcomes[code] = outcomes.get(code, 0) + 1
        assert code in (0, 2), (argv, code, err[-2000:])
        assert "Traceback" not in err, (argv, err[-2000:])
        if code == 2:
            errors = [line for line in err.splitlines() if "error:" in line]
            assert len(errors) == 1, (argv, err[-2000:])

    check()
    print(f"\n{sum(outcomes.values())} command lines: {outcomes.get(0, 0)} ran, {outcomes.get(2, 0)} refused")
    assert outcomes.get(0, 0) > 10 and outcomes.get(2, 0) > 10, outcomes  # both outcomes were reached
