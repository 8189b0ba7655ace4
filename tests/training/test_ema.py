import pytest
import torch
from torch import nn

from diffusekit.training.ema import EMA, EMASet


def test_half_life_is_in_images_whatever_the_batch():
    """After half_life images of a constant target, the average has moved halfway (no ramp-up)."""
    for batch in (8, 32, 128):
        model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(model.weight)
        ema = EMA(model, half_life_images=1024, rampup=None)
        with torch.no_grad():
            model.weight.fill_(1.0)
        for step in range(1024 // batch):
            ema.update(model, (step + 1) * batch, batch)
        assert abs(float(ema.model.weight) - 0.5) < 1e-6


def test_rampup_limits_the_half_life_early():
    ema = EMA(nn.Linear(1, 1), half_life_images=1e6, rampup=0.05)
    assert ema.beta(cur_nimg=1000, batch=100) == pytest.approx(0.5 ** (100 / 50))
    assert ema.beta(cur_nimg=10**9, batch=100) == pytest.approx(0.5 ** (100 / 1e6))


def test_set_state_round_trip_and_errors():
    model = nn.Linear(2, 2)
    emas = EMASet(model, {"fast": 100, "slow": 10_000})
    emas.update(model, 64, 64)
    other = EMASet(nn.Linear(2, 2), {"fast": 100, "slow": 10_000})
    other.load_state_dicts(emas.state_dicts())
    torch.testing.assert_close(other["slow"].model.weight, emas["slow"].model.weight)
    with pytest.raises(KeyError, match="no EMA named 'mid'"):
        emas["mid"]
    with pytest.raises(ValueError, match="lacks EMA weights"):
        other.load_state_dicts({"fast": emas.state_dicts()["fast"]})
