import numpy as np
import pytest
import torch

from diffusekit.config import ConfigError, resolve
from diffusekit.data import ImageArrays
from diffusekit.generate import load_model
from diffusekit.models.checkpoint import latest_valid
from diffusekit.training.loop import Trainer
from diffusekit.training.make import train

from .resume_check import assert_resume_is_bit_identical


def _data(n=24, size=8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return ImageArrays(images, rng.integers(0, 2, n).astype(np.int64), 2, ("a", "b"))


def _config(*overrides):
    base = ["run.total_images=192", "optim.batch_size=16", "optim.accumulation=2", "run.checkpoint_every=64",
            "optim.lr=1e-3", "objective.time_mode=importance", "objective.time_options={bins: 4, warmup: 2}",
            "ema.half_lives={fast: 100, slow: 1000}", "network.options={dropout: 0.1}", "run.log_every=32"]
    return resolve("tiny", overrides=base + list(overrides))


@pytest.mark.parametrize("network, extra", [
    ("unet", ()), ("dit", ()),
    # the augmentation and the cascade's noise augmentation draw from the trainer's generator
    ("unet", ("data.augment=0.5",)), ("dit", ("cascade.low_resolution=4",)),
    ("unet", ("objective.input_perturbation=0.1",)),
    ("unet", ("run.channels_last=true", "run.precision=bf16")),
], ids=["unet", "dit", "unet-augment", "dit-cascade", "unet-input-perturbation", "unet-channels-last-bf16"])
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, network, extra):
    config = _config(f"network.kind={network}", "network.options={dropout: 0.1}" if network == "unet"
                     else "network.options={}", *extra)
    data = _data()
    whole = train(config, data, tmp_path / "whole")
    assert whole.cur_nimg == 192
    # stopped at 100 images, the last checkpoint at 64: 36 images are redone
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 100, "ckpt-000000000064")


def test_a_compiled_run_trains_the_eager_function_and_resumes_bit_identical(tmp_path):
    """torch.compile (inductor) fuses kernels, so compiled and eager runs part by float rounding; within the compiled
    mode a resumed run equals an uninterrupted one. The tiny DiT keeps the graph, and so the compilation, small;
    the later compiled trainers are served by inductor's cache."""
    overrides = ("network.kind=dit", "network.options={}", "run.total_images=96", "optim.accumulation=1")
    data = _data()
    config = _config(*overrides, "run.compile=true")
    eager = Trainer(_config(*overrides), data, tmp_path / "eager")
    whole = Trainer(config, data, tmp_path / "whole")
    assert float(whole.step()) == pytest.approx(float(eager.step()), rel=1e-4)
    whole.run()  # the rest of the uninterrupted compiled run
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 80, "ckpt-000000000064")


def test_loss_decreases_and_checkpoints_are_pruned(tmp_path):
    losses = []


    class Hooks:
        def on_log(self, trainer, record):
            losses.append(record["loss"])

    trainer = train(_config("run.total_images=640", "run.keep_checkpoints=2", "objective.time_mode=stratified"),
                    _data(), tmp_path, hooks=Hooks())
    assert len(losses) == 20
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    names = sorted(p.name for p in trainer.checkpoint_dir.iterdir())
    assert names == ["ckpt-000000000576", "ckpt-000000000640"]


def test_bad_config():
    with pytest.raises(ConfigError, match="multiple of optim.accumulation"):
        _config("optim.batch_size=10", "optim.accumulation=4")
    with pytest.raises(ConfigError, match="p_uncond"):
        _config("objective.p_uncond=1.0")
    with pytest.raises(ConfigError, match="objective.input_perturbation"):
        _config("objective.input_perturbation=-0.1")


def test_input_perturbation_changes_training_and_loads_the_first_configured_ema(tmp_path):
    short = ("run.total_images=32", "run.checkpoint_every=32", "ema.half_lives={slow: 1000, fast: 100}")
    plain = train(_config(*short), _data(), tmp_path / "plain")
    perturbed = train(_config(*short, "objective.input_perturbation=0.1"), _data(), tmp_path / "ip")
    first = next(iter(plain.network.state_dict()))
    assert not torch.equal(plain.network.state_dict()[first], perturbed.network.state_dict()[first])
    # checkpoints store EMAs sorted by name; the default is still the config's first one
    assert load_model(tmp_path / "plain").weights == "slow"


def test_resuming_a_checkpoint_of_another_network_is_refused(tmp_path):
    train(_config("run.total_images=32", "run.checkpoint_every=32"), _data(), tmp_path / "a")
    other = Trainer(_config("network.options={model_channels: 16}"), _data(), tmp_path / "b")
    with pytest.raises(ValueError, match="another network"):
        other.resume(latest_valid(tmp_path / "a" / "checkpoints"))
