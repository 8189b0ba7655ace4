"""`diffusekit tune-grid` and `diffusekit sample --grid` end to end on the tiny preset."""

import json

import numpy as np
import pytest

from diffusekit import schedules
from diffusekit.cli import main
from diffusekit.generate import load_model
from diffusekit.sampling import timesteps
from diffusekit.sampling.grid_files import TunedGrid, load_grids, save_grids

from .assets import require_mnist

require_mnist()  # the tiny preset trains on MNIST


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tune") / "run"
    assert main(["train", "--preset", "tiny", "--quiet", "--threads", "1", "--run-dir", str(run_dir),
                 "--images", "64"]) == 0
    return run_dir


def test_tune_grid_writes_monotone_grids_from_the_runs_start(run, tmp_path, capsys):
    out = tmp_path / "grids.json"
    assert main(["tune-grid", str(run), "--nfe", "3,4", "--n", "6", "--max-evals", "8", "--reference-steps", "10",
                 "--threads", "1", "--quiet", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    grids = load_grids(out)
    assert [g.nfe for g in grids] == [3, 4] and [g["nfe"] for g in summary["grids"]] == [3, 4]
    for g in grids:
        ts = g.ts()
        assert ts[0] == 1.0 and ts[-1] == 0.0 and bool((ts[1:] < ts[:-1]).all())  # the run's uniform grid starts at 1
        assert g.sampler == "multistep" and g.batch["n"] == 6 and g.batch["seed"] == 7777
        assert g.error["fit_rmse"] <= min(g.error["starts_fit_rmse"].values())
    assert main(["sample", str(run), "--grid", str(out), "--steps", "4", "--n", "2", "--quiet", "--threads", "1",
                 "--out", str(tmp_path / "s.npz")]) == 0
    meta = json.loads(str(np.load(tmp_path / "s.npz")["meta"]))
    assert meta["steps"] == 4 and meta["grid"]["times"] == grids[1].times


def test_a_saved_uniform_grid_samples_as_the_uniform_spacing(run, tmp_path):
    """A grid file holding the run's own uniform grid gives the run's own samples, bit for bit."""
    model = load_model(run)
    s = model.config.sample
    schedule = model.denoiser.schedule
    grid = TunedGrid.create(timesteps(schedule, 5, "uniform"), schedule, s.sampler, options=dict(s.options))
    save_grids([grid], tmp_path / "uniform.json")
    common = ["sample", str(run), "--n", "3", "--quiet", "--threads", "1", "--seed", "2"]
    assert main([*common, "--grid", str(tmp_path / "uniform.json"), "--out", str(tmp_path / "a.npz")]) == 0
    assert main([*common, "--steps", "5", "--spacing", "uniform", "--out", str(tmp_path / "b.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])


def _one_line_error(capsys, argv, message, command="sample"):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert err.startswith(f"diffusekit {command}: error: ") and len(err.strip().splitlines()) == 1


def test_grid_errors(run, tmp_path, capsys):
    flow, cosine = schedules.get("rectified_flow"), schedules.get("cosine")
    save_grids([TunedGrid.create(timesteps(flow, 4, "karras"), flow, "multistep")], tmp_path / "four.json")
    save_grids([TunedGrid.create(timesteps(cosine, 4, "karras"), cosine, "multistep")], tmp_path / "cosine.json")
    (tmp_path / "broken.json").write_text('{"format": "diffusekit-grids", "version": 1, "grids": [{"sampler": 1}]}')
    common = ["sample", str(run), "--n", "2", "--quiet", "--out", str(tmp_path / "x.npz")]
    _one_line_error(capsys, [*common, "--grid", str(tmp_path / "four.json"), "--steps", "7"],
                    "no grid for 7 steps in the file (it holds: multistep 4 steps)")
    _one_line_error(capsys, [*common, "--grid", str(tmp_path / "cosine.json")], "tuned for another schedule")
    _one_line_error(capsys, [*common, "--grid", str(tmp_path / "broken.json")], "missing nfe, steps, times, logsnr")
    _one_line_error(capsys, [*common, "--grid", str(tmp_path / "four.json"), "--spacing", "karras"],
                    "--grid gives the times")
    _one_line_error(capsys, [*common, "--grid", str(tmp_path / "missing.json")], "no such file")
    tune = ["tune-grid", str(run), "--n", "2", "--quiet", "--out", str(tmp_path / "g.json")]
    _one_line_error(capsys, [*tune, "--nfe", "4", "--sampler", "ddpm"], "is stochastic", "tune-grid")
    _one_line_error(capsys, [*tune, "--nfe", "4,x"], "--nfe must be comma-separated integers", "tune-grid")
    _one_line_error(capsys, [*tune, "--nfe", "1"], "cannot make exactly 1 evaluations", "tune-grid")
    _one_line_error(capsys, [*tune, "--nfe", "4", "--guidance-schedule", "increasing"], "constant weight",
                    "tune-grid")
