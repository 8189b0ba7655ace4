"""`diffusekit eval --metrics nll,elbo`: bits/dim of held-out images on a tiny run (the PF-ODE likelihood through a
stand-in with a known answer, the variational bound for real)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

import diffusekit.likelihood
from diffusekit.cli import main
from diffusekit.data import load
from diffusekit.data.transform import resize_arrays


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("likelihood") / "run"
    assert main(["train", "--preset", "tiny", "--run-dir", str(path), "--images", "32", "--quiet", "--threads", "1",
                 "--set", "run.checkpoint_every=32"]) == 0
    return path


def test_elbo_of_a_run(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--metrics", "elbo", "--nll-n", "5", "--nll-batch-size", "3", "--elbo-samples",
                 "2", "--elbo-nodes", "16", "--quiet", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    elbo = result["elbo"]
    assert json.loads((out / "results.json").read_text())["elbo"] == elbo
    assert elbo["n"] == 5 and elbo["split"] == "test" and elbo["dims"] == 16 * 16 and elbo["cond"] == "label"
    assert elbo["dequantization"] == "uniform" and elbo["samples"] == 2 and elbo["time"] == "quadrature"
    assert elbo["dequantization_bpd"] == pytest.approx(math.log2(127.5), abs=1e-12)
    # rectified flow reaches zero SNR at t = 1: no prior term; the decoder's r = sigma / alpha = 1e-3 at t_min
    assert elbo["prior_bpd"] == 0.0
    assert elbo["reconstruction_bpd"] == pytest.approx((math.log(2 * math.pi * 1e-6) + 1) / (2 * math.log(2)),
                                                       abs=1e-9)
    parts = elbo["prior_bpd"] + elbo["reconstruction_bpd"] + elbo["diffusion_bpd"]
    assert elbo["continuous_bpd"] == pytest.approx(parts, abs=1e-9)
    assert elbo["bpd"] == pytest.approx(parts + math.log2(127.5), abs=1e-9)
    assert 0 < elbo["bpd_stderr"] < elbo["bpd"] and elbo["mc_stderr_bpd"] > 0
    # seeded dequantisation and noise: the same command repeats exactly
    assert main(["eval", str(run), "--metrics", "elbo", "--nll-n", "5", "--nll-batch-size", "3", "--elbo-samples",
                 "2", "--elbo-nodes", "16", "--quiet", "--json", "--out", str(tmp_path / "again")]) == 0
    assert json.loads(capsys.readouterr().out)["elbo"]["bpd"] == elbo["bpd"]


def test_nll_calls_ode_nll_on_dequantised_test_images(run, tmp_path, capsys, monkeypatch):
    """A stand-in ode_nll returning the uniform density on the dequantised cube, D log(512 / 255) nats: exactly
    8 bits/dim, whatever the model; it also records what it was given."""
    calls = []

    def ode_nll(denoise, schedule, x, *, rtol, atol, divergence, probes, probe, generator, cond, **options):
        calls.append(dict(x=x, rtol=rtol, atol=atol, divergence=divergence, probes=probes, probe=probe, cond=cond,
                          **options))
        dims = x[0].numel()
        nll = torch.full((len(x),), dims * math.log(512 / 255), dtype=torch.float64)
        return SimpleNamespace(nll=nll, prior=nll + 1.0, delta=torch.ones(len(x), dtype=torch.float64), nfe=17)

    monkeypatch.setattr(diffusekit.likelihood, "ode_nll", ode_nll, raising=False)
    assert main(["eval", str(run), "--metrics", "nll", "--nll-n", "4", "--nll-batch-size", "3", "--nll-rtol", "1e-3",
                 "--nll-atol", "1e-4", "--nll-divergence", "hutchinson", "--nll-probes", "2", "--nll-t-min", "1e-4",
                 "--nll-cond", "null", "--quiet", "--json", "--out", str(tmp_path / "nll")]) == 0
    nll = json.loads(capsys.readouterr().out)["nll"]
    assert nll["bpd"] == pytest.approx(8.0, abs=1e-12) and nll["bpd_stderr"] == 0.0
    assert nll["ode_bpd"] == pytest.approx(-1 / (256 * math.log(2))) and nll["nfe_mean"] == 17
    assert nll["cond"] == "null" and nll["divergence"] == "hutchinson" and nll["probes"] == 2
    assert [len(c["x"]) for c in calls] == [3, 1]
    first = calls[0]
    assert (first["rtol"], first["atol"], first["divergence"], first["probes"], first["t_min"]) == \
        (1e-3, 1e-4, "hutchinson", 2, 1e-4)
    assert bool((first["cond"]["labels"] == 10).all())  # the null label of 10 classes
    # the images it saw: the first test digits at 16x16, each dequantised inside its own cell
    test = load("mnist", "test")
    pixels = torch.from_numpy(resize_arrays(test, 16, None, "resize").images[:3].copy()).permute(0, 3, 1, 2)
    centre = pixels.double() / 127.5 - 1
    assert bool(((first["x"].double() - centre).abs() <= 0.5 / 127.5 + 1e-6).all())


@pytest.mark.parametrize("args, message", [
    (["--metrics", "elbo", "--elbo-nodes", "12"], "--metrics elbo: nodes must be a positive multiple of 8"),
    (["--metrics", "nll,bpd"], "--metrics: unknown bpd; choose from fid, kid, precision_recall, memorization, nll, "
                               "elbo"),
])
def test_errors_name_the_problem(run, args, message, capsys):
    assert main(["eval", str(run), *args, "--nll-n", "2", "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_likelihood_beside_sample_metrics(run, tmp_path, capsys):
    assert main(["eval", str(run), "--metrics", "memorization,elbo", "--memorization-space", "pixel", "--n", "4",
                 "--nll-n", "2", "--elbo-samples", "2", "--elbo-nodes", "8", "--quiet", "--json", "--out",
                 str(tmp_path / "both")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["memorization"]["pixel"]["n"] == 4 and result["elbo"]["n"] == 2
