"""torch.distributed on the CPU (gloo, 2 processes under torchrun), end to end through the command line.

- 2 processes end with the same weights as 1 process after 16 steps of the same global batch and data order,
  within float tolerance: the largest weight difference stays below 5e-5 (about 4e-6 is measured; weights are
  O(1)). Only the sums of the gradient all-reduce and the batch split differ, and Adam amplifies them a little.
- with plain SGD instead of Adam (which is invariant to the gradient's scale), the update of 2 processes is
  that of 1 process to a relative 1e-3: the gradients are averaged over processes, not summed;
- checkpoints written by 2 processes resume on 1, and the other way round, with the same tolerance; the same
  with FSDP (``run.parallel: fsdp``), whose checkpoints hold whole tensors like every other;
- ``diffusekit eval`` over 2 processes draws bit-identical samples and the same FID / KID as over 1;
- a process killed mid-run ends the whole job with a non-zero status within a bounded time, and
  ``--resume auto`` continues the run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from diffusekit.models.checkpoint import latest_valid

from .assets import require_mnist

pytestmark = pytest.mark.slow
require_mnist()  # the tiny preset trains on MNIST

TOLERANCE = 5e-5
TRAIN = ["train", "--preset", "tiny", "--quiet", "--threads", "1", "--set", "run.checkpoint_every=128",
         "--set", "run.log_every=64"]


def diffusekit(*args: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "diffusekit", *args]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "diffusekit", "--", *args]  # "--": torchrun would read --n as its own --nnodes...
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def train(run: Path, images: int, nproc: int = 1, *extra: str) -> None:
    done = diffusekit(*TRAIN, "--run-dir", str(run), "--images", str(images), *extra, nproc=nproc)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(run: Path, nimg: int) -> dict:
    return load_file(run / "checkpoints" / f"ckpt-{nimg:012d}" / "weights.safetensors")


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    train(run, 256)
    return run


def test_two_processes_match_one_and_checkpoints_cross_world_sizes(one_process, tmp_path):
    reference = weights(one_process, 256)
    two = tmp_path / "two"
    train(two, 128, nproc=2)
    assert largest_difference(weights(two, 128), weights(one_process, 128)) < TOLERANCE
    two_then_one = tmp_path / "two-then-one"
    shutil.copytree(two, two_then_one)
    train(two, 256, nproc=2)  # 2 -> 2
    train(two_then_one, 256)  # 2 -> 1
    one_then_two = tmp_path / "one-then-two"
    shutil.copytree(one_process, one_then_two)
    shutil.rmtree(one_then_two / "checkpoints" / "ckpt-000000000256")
    train(one_then_two, 256, nproc=2)  # 1 -> 2
    for run in (two, two_then_one, one_then_two):
        difference = largest_difference(weights(run, 256), reference)
        assert difference < TOLERANCE, (run.name, difference)
        assert difference > 0 or run is two_then_one  # really another sum order (no silent single process)
    environment = json.loads((two / "environment.json").read_text())["sessions"]
    assert [s["world_size"] for s in environment] == [2, 2]
    sessions = json.loads((two_then_one / "environment.json").read_text())["sessions"]
    assert [s["world_size"] for s in sessions] == [2, 1]


def test_fsdp_matches_one_process_and_its_checkpoints_resume_either_way(one_process, tmp_path):
    fsdp = ("--set", "run.parallel=fsdp")
    sharded = tmp_path / "fsdp"
    train(sharded, 128, 2, *fsdp)
    assert largest_difference(weights(sharded, 128), weights(one_process, 128)) < TOLERANCE
    train(sharded, 256)  # FSDP -> 1 process
    one_then_fsdp = tmp_path / "one-then-fsdp"
    shutil.copytree(one_process, one_then_fsdp)
    shutil.rmtree(one_then_fsdp / "checkpoints" / "ckpt-000000000256")
    train(one_then_fsdp, 256, 2, *fsdp)  # 1 process -> FSDP
    for run in (sharded, one_then_fsdp):
        assert largest_difference(weights(run, 256), weights(one_process, 256)) < TOLERANCE, run.name


# `diffusekit train` with plain SGD in place of the configured Adam (the config offers no SGD), writing the
# initial weights to $DIFFUSEKIT_TEST_INITIAL_WEIGHTS: every other part of the step (the batch split, DDP's
# gradient reduction, the learning rate) is the trainer's own.
SGD_WRAPPER = """
import os, sys
import torch
from safetensors.torch import save_file
import diffusekit.training.loop as loop

loop.make_optimizer = lambda parameters, name, lr, **kernel: torch.optim.SGD(parameters, lr=lr)
construct = loop.Trainer.__init__

def construct_and_save_initial_weights(self, *args, **kwargs):
    construct(self, *args, **kwargs)
    if self.dist.rank == 0:
        save_file({k: v.detach().clone() for k, v in self.network.state_dict().items()},
                  os.environ["DIFFUSEKIT_TEST_INITIAL_WEIGHTS"])

loop.Trainer.__init__ = construct_and_save_initial_weights
from diffusekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_gradients_are_averaged_over_processes_not_summed(tmp_path):
    """SGD's update is lr times the gradient, so it shows what Adam (invariant to the gradient's scale) hides:
    2 processes must make the update of 1 process on the whole batch. Summing instead of averaging over
    processes doubles it, a relative difference of 1 (0.98 measured over these 2 steps, with the update doubled
    on purpose); the measured difference is 1e-6 (float32 sums in another order). Gradient clipping is off:
    clipping both to the same norm would hide the factor 2 as well."""
    wrapper = tmp_path / "sgd_train.py"
    wrapper.write_text(SGD_WRAPPER)
    updates = {}
    for nproc in (1, 2):
        run, initial = tmp_path / f"sgd-{nproc}", tmp_path / f"initial-{nproc}.safetensors"
        launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      f"--nproc-per-node={nproc}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFUSEKIT_TEST_INITIAL_WEIGHTS": str(initial)}
        done = subprocess.run([*launch, str(wrapper), *TRAIN, "--run-dir", str(run), "--images", "32", "--set",
                               "run.checkpoint_every=32", "--set", "optim.grad_clip=null"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        start, end = load_file(initial), weights(run, 32)  # 2 SGD steps of 16 images
        updates[nproc] = {k: end[f"model.{k}"] - start[k] for k in start}
    one, two = updates[1], updates[2]
    assert one.keys() == two.keys()
    scale = max(float(u.abs().max()) for u in one.values())
    relative = max(float((two[k] - one[k]).abs().max()) for k in one) / scale
    assert scale > 1e-5 and relative < 1e-3, (scale, relative)


@pytest.mark.usefixtures("inception_weights_installed")
def test_evaluation_over_two_processes_equals_one(one_process, tmp_path):
    args = ["eval", str(one_process), "--n", "40", "--batch-size", "8", "--metrics", "fid,kid",
            "--extractor", "inception-fast", "--ref-n", "40", "--quiet", "--threads", "1"]
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"eval-{nproc}"
        done = diffusekit(*args, "--out", str(out), nproc=nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = json.loads((out / "results.json").read_text())
    assert results[2]["processes"] == 2
    assert results[2]["fid"] == pytest.approx(results[1]["fid"], rel=1e-6)
    assert results[2]["kid"] == pytest.approx(results[1]["kid"], rel=1e-5, abs=1e-9)
    grids = [np.asarray(Image.open(tmp_path / f"eval-{n}" / "samples.png")) for n in (1, 2)]
    assert np.array_equal(grids[0], grids[1])  # the samples themselves are bit-identical


def test_a_killed_process_ends_the_job_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "diffusekit", *TRAIN, "--run-dir", str(run), "--images", "100000", "--nproc",
               "2", "--set", "run.checkpoint_every=64"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while latest_valid(run / "checkpoints") is None:  # training is under way
            assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()[-3000:]
            time.sleep(0.2)
        agent = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        workers = subprocess.run(["pgrep", "-P", agent[0]], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        killed = time.monotonic()
        os.kill(int(workers[1]), signal.SIGKILL)
        _, err = job.communicate(timeout=120)
        ended = time.monotonic() - killed
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    assert ended < 120
    newest = latest_valid(run / "checkpoints")
    nimg = int(newest.name.split("-")[1])
    done = diffusekit(*TRAIN, "--run-dir", str(run), "--images", str(nimg + 64), "--set", "run.checkpoint_every=64")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {newest}" in done.stderr
    assert latest_valid(run / "checkpoints").name == f"ckpt-{nimg + 64:012d}"
