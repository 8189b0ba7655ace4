"""The inverse-problem benchmark end to end on a tiny model: 2 digits, 2 steps, every method and the baselines."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusekit.cli import main as cli_main
from diffusekit.inverse import METHODS
from diffusekit.inverse.masks import box_mask

from .assets import require_mnist

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "inverse_images.py"
_spec = importlib.util.spec_from_file_location("benchmark_inverse_images", PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_mnist()
    run_dir = tmp_path_factory.mktemp("inverse") / "run"
    assert cli_main(["train", "--preset", "tiny", "--quiet", "--threads", "1", "--set", "run.checkpoint_every=32",
                     "--set", "run.log_every=32", "--set", "run.sample_every=64", "--images", "32",
                     "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_the_mean_fill_baseline_fills_the_missing_pixels_with_the_observed_mean():
    mask = box_mask(4, 4)
    y = torch.arange(16.0).view(1, 1, 4, 4) * mask
    filled = bench.baseline("inpaint-box", bench.operator_for("inpaint-box", 4, 4, 0.0), y)
    observed = [v for v, m in zip(range(16), mask.flatten().tolist(), strict=True) if m]
    expected = torch.where(mask, torch.arange(16.0).view(4, 4), sum(observed) / len(observed))
    torch.testing.assert_close(filled[0, 0], expected)


def test_tune_restore_and_ccdf_on_a_tiny_model(run, tmp_path, capsys):
    output = tmp_path / "inverse.json"
    common = ["--run", str(run), "--n", "2", "--steps", "2", "--no-fid", "--no-classifier", "--threads", "1",
              "--resamples", "1", "--jump-length", "1", "--particles", "2", "--output", str(output)]
    assert bench.main(["tune", *common, "--n-validation", "2", "--tune-grid", "0.1,1", "--tasks", "sr4"]) == 0
    tuning = json.loads(output.read_text())["tuning"]
    assert tuning["images"] == "mnist test[6000:6002]"  # apart from the restored test[0:2]
    chosen = tuning["chosen"]["sr4"]
    assert set(chosen) == {"dps", "mcg", "reconstruction"} and set(chosen.values()) <= {0.1, 1.0}
    assert bench.main(["restore", *common]) == 0
    data = json.loads(output.read_text())
    assert data["restore"]["settings"]["sr4"]["dps"]["scale"] == chosen["dps"]  # the tuned value is used
    assert "scale" not in data["restore"]["settings"]["inpaint-box"]["dps"]  # untuned: the method's default
    rows = data["restore"]["rows"]
    done = {(r["task"], r["method"]) for r in rows if "skipped" not in r}
    for task in bench.TASKS:
        assert (task, "bicubic" if task == "sr4" else "mean-fill") in done
        assert {(task, m) for m in METHODS} <= {(r["task"], r["method"]) for r in rows}
    for r in rows:
        if r["kind"] == "method" and "skipped" not in r:
            assert np.isfinite(r["psnr"]) and r["nfe"] >= 1 and r["s_per_image"] > 0
    assert {"inpaint-box.png", "inpaint-half.png", "sr4.png"} <= {p.name for p in (tmp_path / "inverse").iterdir()}
    assert bench.main(["ccdf", *common, "--t0", "0.5"]) == 0
    data = json.loads(output.read_text())
    assert "restore" in data  # the other section is kept
    kinds = [r["kind"] for r in data["ccdf"]["rows"]]
    assert kinds == ["baseline", "full", "ccdf", "equal-nfe"]
    ccdf, equal = data["ccdf"]["rows"][2:]
    assert equal["steps"] == max(1, round(ccdf["nfe"]))
    assert "| sr4 | bicubic |" in capsys.readouterr().out
