"""Non-finite losses and gradients: the step is skipped, counted and logged; a streak of them stops the run
with an error naming the step, the last good checkpoint intact and the offending batch saved."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusekit.config import resolve
from diffusekit.data import ImageArrays
from diffusekit.models.checkpoint import latest_valid, load_checkpoint
from diffusekit.training.loop import NonFiniteError, Trainer

from ..assets import require_mnist
from .resume_check import weights


def _data(n=32, size=8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return ImageArrays(images, rng.integers(0, 2, n).astype(np.int64), 2, ("a", "b"))


def _trainer(tmp_path, *overrides):
    config = resolve("tiny", overrides=["run.total_images=256", "optim.batch_size=16", "run.checkpoint_every=64",
                                        "run.log_every=32", "eval.loss_every=null", "optim.lr=1e-3", *overrides])
    return Trainer(config, _data(), tmp_path)


def _poison(trainer, steps: set[int], what: str = "output"):
    """NaNs injected into the network output (-> the loss) or into one gradient at the given step numbers."""
    count = {"step": 0}
    original = trainer.step

    def step():
        count["step"] += 1
        return original()

    if what == "output":
        def hook(module, args, output):
            return output * float("nan") if count["step"] in steps else output

        trainer.network.register_forward_hook(hook)
    else:
        first = next(trainer.network.parameters())
        first.register_hook(lambda grad: grad * float("inf") if count["step"] in steps else grad)
    trainer.step = step
    return count


class Log:
    def __init__(self):
        self.messages, self.records = [], []

    def log(self, message):
        self.messages.append(message)

    def on_log(self, trainer, record):
        self.records.append(record)


@pytest.mark.parametrize("what", ["output", "gradient"])
def test_a_nonfinite_step_is_skipped_counted_and_logged(tmp_path, what):
    trainer = _trainer(tmp_path)
    _poison(trainer, {3, 4}, what)
    log = Log()
    snapshots = []
    original = trainer.step

    def step():
        before = weights(trainer)
        loss = original()
        snapshots.append((before, weights(trainer), trainer.last_step_skipped))
        return loss

    trainer.step = step
    trainer.run(until_images=96, hooks=log)
    skipped = [i + 1 for i, (_, _, s) in enumerate(snapshots) if s]
    assert skipped == [3, 4]
    for before, after, was_skipped in snapshots:  # a skipped step changes no weight and no EMA; others do
        same = all(torch.equal(before[k], after[k]) for k in before)
        assert same == was_skipped
    assert trainer.nonfinite_total == 2 and trainer.nonfinite_streak == 0
    assert sum("non-finite loss or gradient at image 48" in m for m in log.messages) == 1
    assert "2 in a row, 2 in all" in log.messages[1]
    # records (2 steps each): the interval of steps 3 and 4 has no loss, the others a finite one
    assert [r["skipped_steps"] for r in log.records] == [0, 2, 2]
    assert ["loss" in r for r in log.records] == [True, False, True]
    assert all(np.isfinite(r["loss"]) for r in log.records if "loss" in r)
    assert all(torch.isfinite(v).all() for v in weights(trainer).values())


def test_the_counts_survive_a_resume(tmp_path):
    trainer = _trainer(tmp_path)
    _poison(trainer, {2})
    trainer.run(until_images=64)  # checkpoint at 64
    resumed = _trainer(tmp_path)
    assert resumed.resume()
    assert (resumed.nonfinite_total, resumed.nonfinite_streak) == (1, 0)


def test_a_streak_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, "optim.nonfinite_limit=3")
    _poison(trainer, set(range(6, 100)))  # steps 6, 7, 8 -> the third in a row is step 8 (image 128)
    trainer.run(until_images=64)
    good = latest_valid(trainer.checkpoint_dir)
    assert good.name == "ckpt-000000000064"
    with pytest.raises(NonFiniteError, match=r"3 consecutive non-finite steps .* at step 8 \(image 128"):
        trainer.run()
    assert latest_valid(trainer.checkpoint_dir) == good  # nothing written after the last good step
    assert [p.name for p in trainer.checkpoint_dir.iterdir()] == ["ckpt-000000000064"]
    load_checkpoint(good)  # and it still verifies
    dump = load_file(tmp_path / "nonfinite-000000000128.safetensors")
    assert dump["x0"].shape == (16, 1, 8, 8) and "cond.labels" in dump


def test_no_dump_when_disabled(tmp_path):
    trainer = _trainer(tmp_path, "optim.nonfinite_limit=2", "run.dump_bad_batch=false")
    _poison(trainer, {1, 2})
    with pytest.raises(NonFiniteError, match="at step 2"):
        trainer.run()
    assert not list(tmp_path.glob("nonfinite-*"))


def test_cli_exits_1_with_the_message(tmp_path, monkeypatch, capsys):
    require_mnist()  # the tiny preset trains on MNIST
    from diffusekit.cli import main

    original_init = Trainer.__init__

    def init(self, *args, **kwargs):  # NaN network outputs once the first checkpoint (64 images) is written
        original_init(self, *args, **kwargs)
        self.network.register_forward_hook(lambda m, a, out: out * float("nan") if self.cur_nimg >= 64 else out)

    monkeypatch.setattr(Trainer, "__init__", init)
    run = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--quiet", "--threads", "1", "--run-dir", str(run), "--images", "256",
                 "--set", "run.checkpoint_every=64", "--set", "optim.nonfinite_limit=2", "--set", "data.limit=256"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: 2 consecutive non-finite steps" in err and "Traceback" not in err
    assert latest_valid(run / "checkpoints").name == "ckpt-000000000064"
