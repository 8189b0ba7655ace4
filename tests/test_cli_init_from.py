"""`diffusekit train --init-from`: a tiny MNIST run fine-tuned on a folder of another 3 classes, end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusekit.cli import main
from diffusekit.config import Config, from_dict, read_file

from .assets import require_mnist

require_mnist()  # the tiny preset trains on MNIST

TRAIN = ["train", "--preset", "tiny", "--quiet", "--threads", "1", "--set", "run.checkpoint_every=32"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny MNIST run (10 classes, 1x16x16) trained for 32 images."""
    run = tmp_path_factory.mktemp("init") / "mnist"
    assert main([*TRAIN, "--run-dir", str(run), "--images", "32"]) == 0
    return run


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of 20x20 grey images (a dataset of another kind and class count than MNIST)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for label in ("circles", "squares", "stars"):
        (root / label).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def _fine_tune(folder, run, *extra):
    return main([*TRAIN, "--run-dir", str(run), "--data", str(folder), "--set", "data.limit=null",
                 "--set", "data.channels=1", "--images", "32", *extra])


def test_fine_tuning_reports_once_records_its_source_and_resumes_from_its_own_checkpoints(source, folder, tmp_path,
                                                                                         capsys):
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    run = tmp_path / "fine"
    assert _fine_tune(folder, run, "--init-from", str(source), "--init-weights", "model") == 0
    err = capsys.readouterr().err
    assert err.count("initialised from") == 1
    assert "142 of 143 tensors copied; optimizer state fresh" in err
    assert "map_class.table.weight [11, 8] -> [4, 8]" in err
    report = json.loads((run / "init_from.json").read_text())
    assert report["source"] == str(source / "checkpoints" / "ckpt-000000000032") and report["weights"] == "model"
    assert report["mismatched"] == [{"name": "map_class.table.weight", "source": [11, 8], "target": [4, 8]}]
    assert report["missing"] == [] and report["unexpected"] == []
    config = from_dict(Config, read_file(run / "config.yaml"))
    assert (config.run.init_from, config.run.init_weights, config.run.init_optimizer) == (str(source), "model", False)
    # the same command again continues the run from its own checkpoint: one line, no second initialisation
    assert _fine_tune(folder, run, "--init-from", str(source), "--init-weights", "model", "--images", "64") == 0
    err = capsys.readouterr().err
    assert "it continues from its own (ckpt-000000000032); run.init_from" in err and "not applied again" in err
    assert "initialised from" not in err and "resumed from" in err
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before  # the source is never written


@pytest.mark.parametrize("extra, expected", [
    (["--init-from", "{tmp}/nowhere"], "no such run directory or checkpoint"),
    (["--init-from", "{folder}"], "is neither a run directory (config.yaml, checkpoints/) nor a checkpoint"),
    (["--init-from", "{source}", "--init-optimizer"],
     "needs every parameter to match the source's: map_class.table.weight is [11, 8] in the source, [4, 8] here"),
    (["--init-from", "{source}", "--resume", "{source}/checkpoints/ckpt-000000000032"],
     "--resume CHECKPOINT continues a run, --init-from (run.init_from) starts a new one"),
    (["--init-weights", "ema"], "set run.init_from (--init-from) too"),
], ids=["missing", "not-a-run", "optimizer-mismatch", "resume-and-init", "weights-without-source"])
def test_refusals_are_one_line_and_write_nothing(source, folder, tmp_path, capsys, extra, expected):
    run = tmp_path / "run"
    extra = [e.format(tmp=tmp_path, folder=folder, source=source) for e in extra]
    assert _fine_tune(folder, run, *extra) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not run.exists()
