"""bf16 autocast through the trainer (on the CPU here; the same code path runs on CUDA)."""

import numpy as np
import torch

from diffusekit.config import resolve
from diffusekit.data import ImageArrays
from diffusekit.training.loop import Trainer

# bfloat16 keeps 8 significant bits: rounding to it has a relative error of at most u = 2^-8 (round to nearest),
# uniform, so of RMS u / sqrt(3). Autocast rounds the inputs and the weights of every convolution and linear
# layer (2 roundings, accumulated in float32); 20 to 30 such layers (convolutions, attention projections) lie on
# the longest path through the tiny U-Net, and independent errors add in quadrature: sqrt(20..30 * 2 / 3) u =
# 3.7u..4.5u, 0.014..0.018 relative RMS at the output (0.015 measured). The bound is about twice that: 8u = 2^-5.
BF16_UNIT_ROUNDOFF = 2.0**-8
BF16_OUTPUT_TOLERANCE = 8 * BF16_UNIT_ROUNDOFF


def _data():
    rng = np.random.default_rng(0)
    return ImageArrays(rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8), np.zeros(32, np.int64) % 2, 2,
                       ("a", "b"))


def test_bf16_autocast_trains_with_float32_weights(tmp_path):
    config = resolve("tiny", overrides=["run.precision=bf16", "optim.batch_size=8"])
    trainer = Trainer(config, _data(), tmp_path)
    seen = []
    handle = trainer.network.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = [float(trainer.step()) for _ in range(4)]
    handle.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)  # the network ran under autocast
    assert all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in trainer.network.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.emas["ema"].model.parameters())


def test_bf16_output_matches_fp32_to_the_rounding_of_its_layers(tmp_path):
    trainer = Trainer(resolve("tiny", overrides=["run.precision=bf16", "optim.batch_size=8"]), _data(), tmp_path)
    network = trainer.network.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every path carries signal (the output layer starts near zero)
        for p in network.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
        x, noise_cond = torch.randn(8, 1, 8, 8, generator=generator), torch.rand(8, generator=generator)
        cond = {"labels": torch.tensor([0, 1] * 4)}
        exact = network(x, noise_cond, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer's forward under run.precision=bf16
            rounded = network(x, noise_cond, cond)
    assert exact.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    relative = float((rounded.float() - exact).norm() / exact.norm())
    # below the bound, and far above float32's own rounding (~1e-7): bf16 really ran
    assert BF16_UNIT_ROUNDOFF / 4 < relative < BF16_OUTPUT_TOLERANCE, relative
