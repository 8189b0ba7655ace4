import math

import pytest
import torch

from diffusekit.training.optim import LRSchedule, make_optimizer


def test_warmup_then_constant():
    s = LRSchedule(1e-3, warmup_images=1000)
    assert s(0) == 0 and s(500) == pytest.approx(5e-4) and s(10**6) == pytest.approx(1e-3)


def test_cosine_and_inverse_sqrt():
    c = LRSchedule(1.0, decay="cosine", total_images=100, min_lr=0.1)
    assert c(0) == pytest.approx(1.0) and c(50) == pytest.approx(0.55) and c(100) == pytest.approx(0.1)
    r = LRSchedule(1.0, decay="inverse_sqrt", ref_images=100)
    assert r(50) == 1.0 and r(400) == pytest.approx(0.5) and r(900) == pytest.approx(1 / 3)
    assert math.isfinite(LRSchedule(1.0, warmup_images=10, decay="inverse_sqrt", ref_images=5)(0))


def test_bad_schedules_and_optimizers():
    with pytest.raises(ValueError, match="unknown LR decay 'step'"):
        LRSchedule(1e-3, decay="step")
    with pytest.raises(ValueError, match="cosine decay needs total_images"):
        LRSchedule(1e-3, decay="cosine")
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd")
