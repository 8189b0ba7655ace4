"""Post-hoc EMA in training: the tracked power EMAs, their snapshots (schedule, budget, full disk, resume) and the
reconstruction checked against a power EMA run directly on the same trajectory."""

import errno

import numpy as np
import pytest
import torch
from torch import nn

from diffusekit.cli import main
from diffusekit.config import ConfigError, resolve
from diffusekit.errors import BadFileError, UsageError
from diffusekit.posthoc_ema import gamma_of_sigma_rel
from diffusekit.training import posthoc_snapshots
from diffusekit.training.ema import EMASet, PowerEMA, power_ema_name
from diffusekit.training.loop import Trainer
from diffusekit.training.make import train
from diffusekit.training.posthoc import reconstruct, reconstructed_name
from diffusekit.training.posthoc_snapshots import (
    kept_by_age,
    list_snapshots,
    load_snapshot,
    remove_snapshots_after,
    thin,
    write_snapshot,
)

from .resume_check import assert_resume_is_bit_identical
from .test_loop import _config, _data

BATCH = 8


def _trajectory(steps=400, size=6, seed=0):
    """Noisy gradient descent on a quadratic: the weights after each step, [steps, size]."""
    rng = np.random.default_rng(seed)
    theta, out = rng.normal(size=size) * 3, []
    for _ in range(steps):
        theta = theta - 0.02 * (theta - 1.0) + 0.05 * rng.normal(size=size)
        out.append(theta.copy())
    return np.array(out, dtype=np.float32)


def _track(run_dir, trajectory, sigma_rels=(0.05, 0.10), every=20, direct=()):
    """Follow ``trajectory`` with the set's power EMAs, snapshot them every ``every`` steps into run_dir/posthoc;
    ``direct``: lengths also run as power EMAs directly (the reference). Returns the direct EMAs."""
    model = nn.Linear(trajectory.shape[1], 1, bias=False)
    emas = EMASet(model, {"ema": 100.0}, posthoc_sigma_rels=sigma_rels)
    references = {s: PowerEMA(model, s) for s in direct}
    for step, theta in enumerate(trajectory, start=1):
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(theta)[None])
        for average in (*emas.emas.values(), *references.values()):
            average.update(model, step * BATCH, BATCH)
        if step % every == 0:
            write_snapshot(run_dir / "posthoc", step * BATCH, BATCH,
                           {e.sigma_rel: e.model.state_dict() for e in emas.power})
    return emas, references


def test_power_ema_follows_its_beta():
    model = nn.Linear(1, 1, bias=False)
    ema = PowerEMA(model, 0.10)
    assert ema.gamma == pytest.approx(6.937, abs=1e-3)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model, 8, 8)  # step 1: a copy
    assert float(ema.model.weight) == 2.0
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model, 16, 8)  # step 2: beta = (1/2)^(gamma+1)
    assert float(ema.model.weight) == pytest.approx(2.0 * 0.5 ** (ema.gamma + 1), rel=1e-5)  # lerp's float32
    assert power_ema_name(0.05) == "power_0p050"


def test_reconstruction_of_a_tracked_length_is_that_snapshot(tmp_path):
    emas, _ = _track(tmp_path, _trajectory())
    result = reconstruct(tmp_path, [0.05])
    assert result.cur_nimg == 400 * BATCH
    torch.testing.assert_close(result.states[reconstructed_name(0.05)]["weight"],
                               emas[power_ema_name(0.05)].model.weight, rtol=1e-6, atol=1e-7)


def test_reconstruction_equals_a_power_ema_run_directly_on_the_trajectory(tmp_path):
    """The real check: the mix of snapshots against the target power EMA computed step by step."""
    trajectory = _trajectory()
    _, direct = _track(tmp_path, trajectory, direct=(0.07, 0.15))
    result = reconstruct(tmp_path, [0.07, 0.15])
    spread = float(np.abs(trajectory[-100:] - trajectory[-100:].mean(0)).mean())  # how much the weights move
    for sigma_rel, reference in direct.items():
        got = result.states[reconstructed_name(sigma_rel)]["weight"]
        error = float((got - reference.model.weight).abs().max())
        assert error < 0.02 * spread, (sigma_rel, error, spread)
        assert result.profile_errors[reconstructed_name(sigma_rel)] < 0.05
    # an earlier end: only the snapshots taken by then, against the direct EMA at that step
    _, direct_early = _track(tmp_path / "early", trajectory[:200], direct=(0.07,))
    early = reconstruct(tmp_path, [0.07], at=200 * BATCH)
    assert len(early.snapshots) == 10
    got = early.states[reconstructed_name(0.07)]["weight"]
    assert float((got - direct_early[0.07].model.weight).abs().max()) < 0.02 * spread


def test_bad_requests_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="has no post-hoc EMA snapshots"):
        reconstruct(tmp_path, [0.1])
    _track(tmp_path, _trajectory(60))
    with pytest.raises(UsageError, match=r"--at 80: before the first post-hoc EMA snapshot \(160 images\)"):
        reconstruct(tmp_path, [0.1], at=80)
    with pytest.raises(UsageError, match="after the last post-hoc EMA snapshot"):
        reconstruct(tmp_path, [0.1], at=10_000)
    with pytest.raises(UsageError, match=r"--sigma-rel: 0\.3 is not a relative EMA length"):
        reconstruct(tmp_path, [0.3])


def _snapshots(directory, counts, values=None):
    for n in counts:
        write_snapshot(directory, n, BATCH, {0.1: {"w": torch.full((1000,), float(n))}})


def test_the_age_rule_by_hand():
    """Snapshots 1..8 (interval 1), the 9th coming, room for 5 old ones. base 5 keeps 6 (ages 5..8 keep only even
    counts: 2, 4); base 4: age 8 (count 1) keeps multiples of 4, ages 4..7 (counts 2..5) multiples of 2, ages < 4
    (6, 7, 8) all -> 2, 4, 6, 7, 8."""
    times = list(range(1, 9))
    assert kept_by_age(times, 9, 1, 5) == [2, 4, 5, 6, 7, 8]
    assert kept_by_age(times, 9, 1, 4) == [2, 4, 6, 7, 8]
    assert thin(times, 9, 1, lambda kept: len(kept) + 1 <= 6) == [1, 3, 5]
    assert thin(times, 9, 1, lambda kept: len(kept) + 1 <= 9) == []
    assert thin([4, 8], 9, 1, lambda kept: len(kept) + 1 <= 1) == [4, 8]  # nothing old fits: the oldest go first


def test_the_budget_thins_older_snapshots_and_keeps_the_newest(tmp_path):
    _snapshots(tmp_path, range(8, 65, 8))
    size = (tmp_path / "phema-000000000008.safetensors").stat().st_size
    write_snapshot(tmp_path, 72, BATCH, {0.1: {"w": torch.full((1000,), 72.0)}}, budget_mb=6.5 * size / 1e6,
                   every=8)
    assert [s.cur_nimg for s in list_snapshots(tmp_path)] == [16, 32, 48, 56, 64, 72]  # the case above, x 8 images
    assert float(load_snapshot(list_snapshots(tmp_path)[-1])[0.1]["w"][0]) == 72.0


def test_a_full_disk_leaves_no_partial_snapshot_and_the_earlier_ones_intact(tmp_path, monkeypatch):
    _snapshots(tmp_path, [8, 16])

    def half_then_full(path, payload):  # the disk fills up half-way through the file
        path.write_bytes(payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(posthoc_snapshots, "_write_file", half_then_full)
    with pytest.raises(OSError) as error:
        write_snapshot(tmp_path, 24, BATCH, {0.1: {"w": torch.zeros(1000)}}, budget_mb=1.0)
    assert error.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phema-000000000008.safetensors",
                                                         "phema-000000000016.safetensors"]
    assert float(load_snapshot(list_snapshots(tmp_path)[-1])[0.1]["w"][0]) == 16.0


def test_a_full_disk_stops_training_with_the_one_line_error_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    command = ["train", "--preset", "tiny", "--run-dir", str(run), "--quiet", "--images", "64", "--set",
               "run.checkpoint_every=32", "--set", "ema.posthoc=true", "--set", "ema.posthoc_every=32",
               "--set", "optim.batch_size=16"]
    written = []
    real = posthoc_snapshots._write_file

    def full_on_the_second(path, payload):
        written.append(path)
        if len(written) == 2:
            path.write_bytes(payload[:100])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, payload)

    monkeypatch.setattr(posthoc_snapshots, "_write_file", full_on_the_second)
    assert main(command) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("diffusekit train: error: no space left on the device writing ")
    assert [s.cur_nimg for s in list_snapshots(run / "posthoc")] == [32]
    assert not [p for p in (run / "posthoc").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.setattr(posthoc_snapshots, "_write_file", real)  # space freed
    assert main(command + ["--resume", "auto"]) == 0
    assert [s.cur_nimg for s in list_snapshots(run / "posthoc")] == [32, 64]
    # the snapshots are those of a run that never stopped
    whole = tmp_path / "whole"
    assert main([*command[:4], str(whole), *command[5:]]) == 0
    for a, b in zip(list_snapshots(run / "posthoc"), list_snapshots(whole / "posthoc"), strict=True):
        for sigma_rel, state in load_snapshot(a).items():
            for key, value in state.items():
                assert torch.equal(value, load_snapshot(b)[sigma_rel][key]), key


def test_damaged_snapshot_and_stale_ones_after_a_resume(tmp_path):
    _snapshots(tmp_path, [8, 16, 24])
    (tmp_path / ".tmp-phema-000000000032.safetensors-1").write_bytes(b"partial")
    removed = remove_snapshots_after(tmp_path, 16)
    assert sorted(p.name for p in removed) == [".tmp-phema-000000000032.safetensors-1",
                                              "phema-000000000024.safetensors"]
    (tmp_path / "phema-000000000016.safetensors").write_bytes(b"not a snapshot")
    with pytest.raises(BadFileError, match="is not a post-hoc EMA snapshot"):
        list_snapshots(tmp_path)


def test_config_validation():
    with pytest.raises(ConfigError, match=r"ema.posthoc_sigma_rels\[1\]: 0.4 is not a relative EMA length"):
        resolve("tiny", overrides=["ema.posthoc=true", "ema.posthoc_sigma_rels=[0.05, 0.4]"])
    with pytest.raises(ConfigError, match="repeats a length"):
        resolve("tiny", overrides=["ema.posthoc=true", "ema.posthoc_sigma_rels=[0.05, 0.05]"])
    with pytest.raises(ConfigError, match="ema.posthoc_every must be > 0"):
        resolve("tiny", overrides=["ema.posthoc=true", "ema.posthoc_every=0"])
    with pytest.raises(ConfigError, match="'power_x' is reserved"):
        resolve("tiny", overrides=["ema.half_lives={power_x: 100}"])
    config = resolve("tiny", overrides=["ema.posthoc=true"])
    assert config.ema.posthoc_sigma_rels == [0.05, 0.10]  # EDM2's two by default
    with pytest.raises(ConfigError, match="holds fewer than two snapshots"):
        Trainer(_config("ema.posthoc=true", "ema.posthoc_budget_mb=0.001"), _data(), "unused")


def test_a_resumed_run_with_posthoc_ema_is_bit_identical(tmp_path):
    config = _config("ema.posthoc=true", "ema.posthoc_sigma_rels=[0.05, 0.2]")
    data = _data()
    whole = train(config, data, tmp_path / "whole")
    assert set(whole.emas.emas) == {"fast", "slow", "power_0p050", "power_0p200"}
    assert whole.emas["power_0p200"].gamma == pytest.approx(gamma_of_sigma_rel(0.2))
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 100, "ckpt-000000000064")
