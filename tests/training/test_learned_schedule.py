import pytest
import torch

from diffusekit.config import ConfigError, resolve
from diffusekit.generate import load_model
from diffusekit.training.make import train

from .resume_check import assert_resume_is_bit_identical
from .test_loop import _data

LEARNED = ["objective.schedule=learned", "objective.schedule_options={hidden: 16, lr_scale: 5}",
           "objective.weighting=elbo", "objective.parameterization=eps", "objective.time_distribution=uniform",
           "objective.time_mode=low_discrepancy", "objective.time_options={}"]


def _config(*overrides):
    base = ["run.total_images=128", "optim.batch_size=16", "optim.accumulation=2", "run.checkpoint_every=64",
            "optim.lr=1e-3", "ema.half_lives={fast: 100}", "network.options={dropout: 0.1}", "run.log_every=32"]
    return resolve("tiny", overrides=base + LEARNED + list(overrides))


def test_a_learned_schedule_trains_resumes_bit_identical_and_samples_with_its_trained_state(tmp_path):
    config, data = _config(), _data()
    whole = train(config, data, tmp_path / "whole")
    schedule = whole.learned_schedule
    initial = train(_config("run.total_images=16"), data, tmp_path / "fresh").learned_schedule
    moved = {k: float((v - initial.state_dict()[k]).abs().max()) for k, v in schedule.state_dict().items()}
    assert all(change > 0 for change in moved.values()), moved  # the shape and both endpoints trained
    assert whole.optimizer.param_groups[1]["lr"] == pytest.approx(5 * whole.optimizer.param_groups[0]["lr"])
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 80, "ckpt-000000000064")
    resumed = train(config, data, tmp_path / "split")
    for key, value in schedule.state_dict().items():
        assert torch.equal(value, resumed.learned_schedule.state_dict()[key]), key
    loaded = load_model(tmp_path / "whole")
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    assert torch.equal(loaded.denoiser.schedule.logsnr(t), schedule.logsnr(t))
    assert not torch.equal(loaded.denoiser.schedule.logsnr(t), initial.logsnr(t))


@pytest.mark.parametrize("override, match", [
    ("objective.weighting=unit", "objective.weighting: the learned schedule"),
    ("objective.time_distribution=lognormal", "objective.time_distribution: the learned schedule"),
    ("objective.time_mode=importance", "objective.time_mode: importance"),
    ("objective.noise_conditioning=t", "objective.noise_conditioning: the learned schedule"),
    ("objective.schedule_options={gamma_min: 3, gamma_max: 1}", "objective.schedule: the learned schedule needs"),
])
def test_bad_learned_configs_are_one_line_errors(override, match):
    with pytest.raises(ConfigError, match=match) as error:
        _config(override)
    assert "\n" not in str(error.value)
