"""bf16 autocast through the trainer (on the CPU here; the same code path runs on CUDA)."""

import numpy as np
import torch

from diffusekit.config import resolve
from diffusekit.data import ImageArrays
from diffusekit.training.loop import Trainer


def test_bf16_autocast_trains_with_float32_weights(tmp_path):
    rng = np.random.default_rng(0)
    data = ImageArrays(rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8), np.zeros(32, np.int64) % 2, 2,
                       ("a", "b"))
    config = resolve("tiny", overrides=["run.precision=bf16", "optim.batch_size=8"])
    trainer = Trainer(config, data, tmp_path)
    seen = []
    handle = trainer.network.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = [float(trainer.step()) for _ in range(4)]
    handle.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)  # the network ran under autocast
    assert all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in trainer.network.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.emas["ema"].model.parameters())
