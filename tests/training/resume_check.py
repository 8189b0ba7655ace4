"""The shared check of the resume tests: a run stopped mid-way and resumed ends bit-identical to one that
never stopped (docs/training.md)."""

import torch

from diffusekit.models.checkpoint import latest_valid
from diffusekit.training.loop import Trainer
from diffusekit.training.make import train


def weights(trainer: Trainer) -> dict:
    states = {"model": trainer.network.state_dict(), **trainer.emas.state_dicts()}
    return {f"{k}/{p}": v.clone() for k, s in states.items() for p, v in s.items()}


def assert_resume_is_bit_identical(whole: Trainer, config, data, directory, stop_at: int, checkpoint: str) -> None:
    """``whole``: the uninterrupted run. Trains ``config`` again in ``directory``, stopped at ``stop_at`` images
    (its newest checkpoint must be ``checkpoint``), resumes it, and compares every weight and EMA."""
    train(config, data, directory, until_images=stop_at)
    assert latest_valid(directory / "checkpoints").name == checkpoint
    resumed = train(config, data, directory)
    assert resumed.cur_nimg == whole.cur_nimg
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
