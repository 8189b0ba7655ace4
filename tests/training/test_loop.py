import numpy as np
import pytest
import torch

from diffusekit.data import ImageArrays
from diffusekit.training.checkpoint import latest_valid
from diffusekit.training.loop import TrainConfig, Trainer, train


def _data(n=24, size=8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return ImageArrays(images, rng.integers(0, 2, n).astype(np.int64), 2, ("a", "b"))


def _config(**overrides):
    base = dict(total_images=192, batch_size=16, accumulation=2, checkpoint_every=64, lr=1e-3,
                time_mode="importance", time_options={"bins": 4, "warmup": 2},
                ema_half_lives={"fast": 100.0, "slow": 1000.0}, network_options={"dropout": 0.1})
    return TrainConfig(**{**base, **overrides})


def _weights(trainer: Trainer):
    states = {"model": trainer.network.state_dict(), **trainer.emas.state_dicts()}
    return {f"{k}/{p}": v.clone() for k, s in states.items() for p, v in s.items()}


@pytest.mark.parametrize("network", ["unet", "dit"])
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, network):
    torch.set_default_dtype(torch.float32)
    try:
        config = _config(network=network, network_options={"dropout": 0.1} if network == "unet" else {})
        data = _data()
        whole = train(config, data, tmp_path / "whole")
        train(config, data, tmp_path / "split", until_images=100)  # last checkpoint at 64: 36 images are redone
        assert latest_valid(tmp_path / "split" / "checkpoints").name == "ckpt-000000000064"
        resumed = train(config, data, tmp_path / "split")
        assert resumed.cur_nimg == whole.cur_nimg == 192
        a, b = _weights(whole), _weights(resumed)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    finally:
        torch.set_default_dtype(torch.float64)


def test_loss_decreases_and_checkpoints_are_pruned(tmp_path):
    torch.set_default_dtype(torch.float32)
    try:
        losses = []
        trainer = train(_config(total_images=640, keep_checkpoints=2, time_mode="stratified"), _data(),
                        tmp_path, log=lambda row: losses.append(float(row["loss"])))
        assert np.mean(losses[-5:]) < np.mean(losses[:5])
        names = sorted(p.name for p in trainer.checkpoint_dir.iterdir())
        assert names == ["ckpt-000000000576", "ckpt-000000000640"]
    finally:
        torch.set_default_dtype(torch.float64)


def test_bad_config():
    with pytest.raises(ValueError, match="multiple of accumulation"):
        TrainConfig(batch_size=10, accumulation=4)
    with pytest.raises(ValueError, match="p_uncond"):
        TrainConfig(p_uncond=1.0)
