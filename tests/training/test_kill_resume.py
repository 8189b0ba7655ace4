"""Runs killed with SIGKILL at random moments (up to 12 times and at least 3; two kills are aimed inside a
checkpoint write, at least one must land there), stopped by SIGTERM (the preemption path) or by a double SIGINT,
or resumed past a damaged newest checkpoint, all with ``--resume auto``, end bit-identical (CPU) to a run that
was never interrupted: the final model and EMA weights, and ``diffusekit sample --seed``.

Each run is a real ``diffusekit train`` process on the tiny preset. The processes start through a wrapper
that slows each checkpoint file's fsync, so that a kill can be aimed inside a checkpoint write; the
wrapper changes no arithmetic."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusekit.cli import main
from diffusekit.models.checkpoint import latest_valid, load_checkpoint

from ..assets import require_mnist

pytestmark = pytest.mark.slow
require_mnist()  # the tiny preset trains on MNIST

WRAPPER = """
import os, sys, time
import diffusekit.models.checkpoint as checkpoint
delay, fsync = float(os.environ.get("DIFFUSEKIT_TEST_FSYNC_DELAY", "0")), checkpoint.fsync_file
def slow_fsync(path):
    time.sleep(delay)
    fsync(path)
checkpoint.fsync_file = slow_fsync
from diffusekit.cli import main
sys.exit(main(sys.argv[1:]))
"""
IMAGES = 768
TRAIN = ["train", "--preset", "tiny", "--quiet", "--threads", "1", "--images", str(IMAGES), "--set",
         "run.checkpoint_every=64", "--set", "run.keep_checkpoints=2", "--set", "run.log_every=32",
         "--set", "run.sample_every=256"]
FINAL = f"ckpt-{IMAGES:012d}"


def start(run_dir: Path, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "DIFFUSEKIT_TEST_FSYNC_DELAY": str(delay), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *TRAIN, "--run-dir", str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll until ``condition()``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("the training process made no progress")


def training_started(run_dir: Path):
    return lambda: (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size > 0


def writing_checkpoint(run_dir: Path):
    return lambda: any((run_dir / "checkpoints").glob(".tmp-ckpt-*"))


def final_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "checkpoints" / FINAL / "weights.safetensors")


def samples(run_dir: Path, tmp_path: Path) -> np.ndarray:
    out = tmp_path / f"{run_dir.name}-samples.npz"
    assert main(["sample", str(run_dir), "--n", "20", "--seed", "7", "--threads", "1", "--quiet",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        return f["images"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, err = finish(start(run_dir))
    assert code == 0, err
    return run_dir


def assert_identical(run_dir: Path, reference: Path, tmp_path: Path) -> None:
    a, b = final_weights(reference), final_weights(run_dir)
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert np.array_equal(samples(reference, tmp_path), samples(run_dir, tmp_path))


def test_sigkill_at_random_moments_then_resume_is_bit_identical(reference, tmp_path):
    rng = random.Random(20261123)
    run_dir = tmp_path / "run"
    kills, mid_write = 0, 0
    for cycle in range(12):
        process = start(run_dir, delay=0.15)
        if cycle in (0, 2):  # aim inside a checkpoint write: its temporary directory exists
            hit = wait_for(writing_checkpoint(run_dir), process)
            mid_write += hit
        else:
            hit = wait_for(training_started(run_dir), process)
            time.sleep(rng.uniform(0.0, 2.0))
            hit = hit and process.poll() is None
        if not hit:  # the run finished before the moment came
            code, err = finish(process)
            assert code == 0, err
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    else:
        code, err = finish(start(run_dir))
        assert code == 0, err
    print(f"\n{kills} SIGKILLs ({mid_write} inside checkpoint writes), each followed by --resume auto")
    assert kills >= 3 and mid_write >= 1, (kills, mid_write)
    assert latest_valid(run_dir / "checkpoints").name == FINAL
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # partial writes cleaned on resume
    assert_identical(run_dir, reference, tmp_path)


def test_damaged_newest_checkpoint_is_named_and_the_previous_one_used(reference, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    assert wait_for(lambda: latest_valid(run_dir / "checkpoints") is not None
                    and latest_valid(run_dir / "checkpoints").name >= "ckpt-000000000192", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    newest = latest_valid(run_dir / "checkpoints")
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:100])  # truncated
    code, err = finish(start(run_dir))
    assert code == 0, err
    assert f"skipping damaged checkpoint: {newest / 'state.pt'} does not match its checksum" in err
    assert_identical(run_dir, reference, tmp_path)


def test_sigterm_checkpoints_after_the_step_and_resume_is_bit_identical(reference, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    assert wait_for(training_started(run_dir), process)
    process.send_signal(signal.SIGTERM)
    code, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    newest = latest_valid(run_dir / "checkpoints")
    nimg = int(newest.name.split("-")[1])
    assert f"SIGTERM: stopped after the step at {nimg:,} images and wrote a checkpoint" in err
    assert f"stopped by SIGTERM at {nimg:,} images" in err and "Traceback" not in err
    code, err = finish(start(run_dir))
    assert code == 0, err
    assert_identical(run_dir, reference, tmp_path)


def test_a_second_sigint_exits_at_once_without_damage(reference, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, delay=0.15)
    # the second signal lands inside a write, after the first checkpoint is done
    assert wait_for(lambda: latest_valid(run_dir / "checkpoints") is not None and writing_checkpoint(run_dir)(),
                    process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    code, err = finish(process)
    assert code == 130, err
    assert "interrupted at" in err and "Traceback" not in err
    checkpoints = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("ckpt-")]
    assert checkpoints and not list((run_dir / "checkpoints").glob(".tmp-*"))
    for path in checkpoints:  # every checkpoint left behind verifies
        load_checkpoint(path)
    code, err = finish(start(run_dir))
    assert code == 0, err
    assert_identical(run_dir, reference, tmp_path)
