"""The inverse-problem benchmark runs end to end at tiny sizes and writes every result its report reads."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "inverse_mixture.py"
_spec = importlib.util.spec_from_file_location("benchmark_inverse_mixture", PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)

METRICS = {"swd", "mean_error", "residual", "nonfinite", "nfe", "seconds"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("inverse") / "inverse.json"
    assert bench.main(["--quick", "--n", "24", "--n64", "16", "--smc-n", "16", "--output", str(out)]) == 0
    return json.loads(out.read_text()), out


def test_every_problem_method_and_curve_is_written(report):
    data, out = report
    assert (out.with_suffix("") / "curves.png").is_file()
    assert data["meta"]["threads"] == 1 and data["meta"]["quick"] is True
    problems = data["measured"]["problems"]
    assert list(problems) == list(bench.PROBLEMS)
    for result in problems.values():
        assert {"floor_swd", "prior_swd", "floor_mean_error", "prior_mean_error", "residual_exact"} <= \
            set(result["references"]["test"])
        assert list(result["test"]["ddpm"]) == list(bench.METHOD_ORDER)
        assert list(result["test"]["dpmpp_2m"]) == [m for m in bench.METHOD_ORDER if m != "smc"]
        for rows in result["test"].values():
            for r in rows.values():
                assert METRICS <= set(r) and "options" in r
        assert set(result["chosen"]["ddpm"]) == set(bench.METHOD_ORDER)
        assert {"dps", "mcg", "reconstruction", "repaint", "ccdf"} <= set(result["validation"]["ddpm"])
        assert set(result["nfe_curve"]["methods"]) == set(bench.METHOD_ORDER) - {"smc"}
        assert {(p["particles"], p["steps"]) for p in result["smc_curve"]["points"]} == {(1, 5), (4, 5), (1, 10),
                                                                                        (4, 10)}


def test_counted_evaluations_and_exact_consistency(report):
    data, _ = report
    steps = data["meta"]["steps"]
    for name, result in data["measured"]["problems"].items():
        test = result["test"]["ddpm"]
        # one denoiser call per sample and step; SMC: one per particle and step
        assert test["replacement"]["nfe"] == steps and test["dps"]["nfe"] == steps
        assert test["smc"]["nfe"] == steps * test["smc"]["options"]["particles"]
        for p in result["smc_curve"]["points"]:
            assert p["nfe"] == p["particles"] * p["steps"]
        # replacement ends on y itself: a noiseless measurement holds to float32 rounding
        if result["sigma_y"] == 0:
            assert test["replacement"]["residual"] < 1e-5, name
            assert result["references"]["test"]["residual_exact"] < 1e-6, name
        assert result["references"]["test"]["floor_swd"] < result["references"]["test"]["prior_swd"]
