"""`diffusekit ema`: reconstructions that `sample` loads, the FID sweep, and its one-line errors."""

import json

import pytest
import torch

from diffusekit.cli import main
from diffusekit.models.checkpoint import load_checkpoint
from diffusekit.training.posthoc_snapshots import list_snapshots, load_snapshot


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("ema") / "run"
    assert main(["train", "--preset", "tiny", "--run-dir", str(path), "--images", "128", "--quiet", "--set",
                 "run.checkpoint_every=64", "--set", "ema.posthoc=true", "--set", "ema.posthoc_every=32"]) == 0
    return path


def test_reconstructions_are_a_checkpoint_that_sample_loads(run, tmp_path, capsys):
    out = tmp_path / "rec"
    assert main(["ema", str(run), "--sigma-rel", "0.1", "0.2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 snapshots up to 128 images" in printed and "phema_0p200" in printed
    (checkpoint,) = out.iterdir()
    assert checkpoint.name == "ckpt-000000000128"
    _, _, emas, _ = load_checkpoint(checkpoint)
    assert {"ema", "power_0p050", "power_0p100", "phema_0p100", "phema_0p200"} <= set(emas)
    # a tracked length at the last snapshot is that snapshot's average
    last = load_snapshot(list_snapshots(run / "posthoc")[-1])[0.1]
    for key, value in last.items():
        torch.testing.assert_close(emas["phema_0p100"][key], value, rtol=1e-6, atol=1e-7)
    assert main(["sample", str(out), "--ema", "phema_0p200", "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--sigma-rel", "0.3"], "--sigma-rel: 0.3 is not a relative EMA length"),
    (["--sigma-rel", "0.1", "--at", "16"], "--at 16: before the first post-hoc EMA snapshot (32 images)"),
    (["--sigma-rel", "0.1", "--at", "160"], "--at 160: after the last post-hoc EMA snapshot (128 images)"),
])
def test_bad_input_is_one_line(run, extra, message, capsys):
    assert main(["ema", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_run_without_snapshots_is_one_line(tmp_path, capsys):
    plain = tmp_path / "plain"
    assert main(["train", "--preset", "tiny", "--run-dir", str(plain), "--images", "32", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["ema", str(plain), "--sweep", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no post-hoc EMA snapshots" in err and "ema.posthoc=true" in err and len(err.splitlines()) == 1


def test_the_sweep_scores_each_length_on_the_same_seeds_and_keeps_the_best(run, capsys):
    command = ["ema", str(run), "--sweep", "0.05", "0.1", "--n", "6", "--extractor", "inception-fast",
               "--resolution", "75", "--quiet", "--json"]
    assert main(command) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["sigma_rel"] for r in summary["rows"]] == [0.05, 0.1]
    assert all(r["n"] == 6 and r["reference"] == "mnist:test[0:6]" and "kid" in r for r in summary["rows"])
    best = min(summary["rows"], key=lambda r: r["fid"])
    assert summary["best"]["sigma_rel"] == best["sigma_rel"]
    assert json.loads((run / "posthoc" / "sweep.json").read_text())["rows"] == summary["rows"]
    _, _, emas, _ = load_checkpoint(summary["best"]["checkpoint"])
    assert best["weights"] in emas
    assert not (run / "posthoc" / ".sweep").exists()
