"""Named starting points. Each preset is a partial config laid over the defaults of :class:`Config`.

- ``tiny``: a few seconds of training on MNIST at 16x16; for tests and smoke runs.
- ``mnist``: the demo default (``make demo``): class-conditional MNIST, 10 CPU minutes of training (docs/demo.md).
- ``mnist-text``: ``mnist`` conditioned on captions instead of labels (``data.captions``: "a handwritten
  seven", "the digit 7", ...; diffusekit.data.captions), a text-only model sampled with ``--prompt``. The
  captions are encoded once by the offline MiniLM text encoder, which cross-attention reads at 7x7.
- ``fashion-mnist``: the same recipe, wider and longer, for Fashion-MNIST.
- ``tiles``: 32x32 RGB Dungeon Crawl sprites (Debian crawl-tiles-data), class = sprite sheet.
- ``mnist-dit``: a DiT-S/2 on MNIST padded to 32x32 (a GPU-sized run).
- ``emoji-ae``: an f = 4 KL autoencoder with a patch-GAN for 64x64 emoji (docs/latent.md).
- ``emoji-latent``: a U-Net on that autoencoder's 4x16x16 latents (latent diffusion).
- ``emoji``: the same recipe on 64x64 pixels, the latent preset's baseline at equal CPU time.
- ``moving-mnist``: a video model (a space-time U-Net) of one digit bouncing in 32x32 frames, 8-frame clips,
  trained jointly on clips and independent frames and for prediction from given frames (docs/video.md).
"""

from __future__ import annotations

import copy

from .schema import Config
from .typed import ConfigError, merge

__all__ = ["PRESETS", "preset"]

_FLOW = {"schedule": "rectified_flow", "parameterization": "velocity", "time_distribution": "logit_normal",
         "time_mode": "stratified", "p_uncond": 0.1}



def _gpu_unet(data: dict, width: int, lr: float, total_images: int, sample: dict) -> dict:
    """A 32x32 U-Net recipe in the DDPM layout (3 levels) for a GPU-sized run on ``data``."""
    return {
        "data": data,
        "objective": _FLOW,
        "network": {"kind": "unet", "preset": "ddpm_cifar10",
                    "options": {"model_channels": width, "channel_mult": [1, 2, 2], "dropout": 0.1}},
        "optim": {"batch_size": 128, "lr": lr, "warmup_images": 50_000},
        "ema": {"half_lives": {"ema": 500_000.0}},
        "run": {"total_images": total_images, "checkpoint_every": 250_000, "log_every": 10_000,
                "sample_every": 250_000, "milestone_every": 1_000_000},
        "sample": sample,
        # inception-fast FID/KID of 1000 EMA samples at each checkpoint; keeps <run>/best/
        "eval": {"every": 250_000, "loss_every": 50_000},
    }


_MNIST = {
    # Sized for `make demo`: 10 minutes of training on 2 CPU cores (100k images at ~175 img/s), then 1,000
    # guided samples in about 2 more. A U-Net with 16/32/64 channels at 28/14/7 (0.78M parameters, ~0.18 GFLOP
    # per image forward); wider or deeper nets see fewer images in the budget and scored no better, and longer
    # training of this one levels off (docs/demo.md, docs/evaluation.md).
    "data": {"name": "mnist"},
    "objective": _FLOW,
    "network": {"kind": "unet", "preset": "tiny",
                "options": {"model_channels": 16, "channel_mult": [1, 2, 4], "num_blocks": 1,
                            "attn_resolutions": [7], "dropout": 0.0}},
    "optim": {"batch_size": 32, "lr": 2e-3, "warmup_images": 3_000, "decay": "cosine"},
    "ema": {"half_lives": {"ema": 5_000.0}, "rampup": 0.1},
    "run": {"total_images": 100_000, "checkpoint_every": 25_000, "log_every": 1_280, "sample_every": 100_000},
    # guidance w = 3 only where 0.3 < ve_sigma <= 3 (Kynkaanniemi et al. 2024) and epsilon scaling with
    # lambda = 0.99 (Ning et al. 2024): the best FID of the weights, intervals, lambdas, grids and step counts
    # measured, over three seed sets (docs/evaluation.md)
    "sample": {"sampler": "multistep", "steps": 16, "guidance": 3.0, "guidance_interval": [0.3, 3.0],
               "eps_scale": 0.99, "grid_columns": 10},
    # train/validation loss per noise level at half and full time (~3 s each on 2 CPU cores)
    "eval": {"loss_every": 50_000, "loss_per_bin": 32},
}

# the text preset keeps the recipe it was measured with (docs/guidance.md): 29k images, 8 steps, w = 4
_MNIST_TEXT = {**_MNIST, "data": {"name": "mnist", "captions": True},
               "run": {"total_images": 29_000, "checkpoint_every": 7_250, "log_every": 640, "sample_every": 29_000},
               "sample": {"sampler": "multistep", "steps": 8, "guidance": 4.0, "grid_columns": 10},
               "eval": {"loss_every": 14_500, "loss_per_bin": 32}}


# 64x64 emoji (Twemoji on white; train 3,609 / test 400), unconditional: the latent-diffusion demo and its pixel
# counterpart, sized for 2 CPU cores (docs/latent.md)
_EMOJI = {"name": "emoji", "resolution": 64}
_EMOJI_EVAL = {"every": None, "loss_every": None, "num_samples": 400, "extractor": "inception"}

_EMOJI_AE = {
    # LDM's KL-regularised f = 4 autoencoder, small: 32/64/64 channels, 4 latent channels (4x16x16 latents)
    "data": _EMOJI,
    "network": {"kind": "autoencoder", "preset": "f4"},
    "optim": {"batch_size": 16, "lr": 5e-4, "warmup_images": 2_000, "decay": "cosine"},
    "ema": {"half_lives": {"ema": 5_000.0}, "rampup": 0.1},
    "autoencoder": {"kl_weight": 1e-6, "gan_weight": 0.5, "gan_start_images": 7_500, "disc_channels": 32,
                    "disc_layers": 3},
    # about 7.5 minutes on 2 CPU cores (37 img/s, 31 with the GAN term)
    "run": {"total_images": 15_000, "checkpoint_every": 5_000, "log_every": 500, "sample_every": 15_000},
    "sample": {"grid_columns": 8},
    # rFID of the 400 test images' reconstructions at the end
    "eval": {**_EMOJI_EVAL, "every": 15_000, "loss_every": 7_500},
}

_EMOJI_LATENT = {
    # a U-Net on the f4 autoencoder's 4x16x16 latents; `diffusekit train --preset emoji-ae --run-dir runs/emoji-ae`
    # first (or set latent.autoencoder to any autoencoder run or diffusers AutoencoderKL folder)
    "data": _EMOJI,
    "latent": {"autoencoder": "runs/emoji-ae"},
    "objective": _FLOW,
    "network": {"kind": "unet", "preset": "tiny",
                "options": {"model_channels": 64, "channel_mult": [1, 2, 2], "num_blocks": 2,
                            "attn_resolutions": [8, 4], "dropout": 0.0}},
    "optim": {"batch_size": 32, "lr": 1e-3, "warmup_images": 3_000, "decay": "cosine"},
    "ema": {"half_lives": {"ema": 10_000.0}, "rampup": 0.1},
    # about 11 minutes on 2 CPU cores (77 img/s): with the autoencoder and the latent cache, 18.4 minutes in all
    "run": {"total_images": 50_000, "checkpoint_every": 12_500, "log_every": 1_280, "sample_every": 50_000},
    "sample": {"sampler": "multistep", "steps": 32, "grid_columns": 8},
    "eval": {**_EMOJI_EVAL, "loss_every": 25_000},
}

_EMOJI_PIXEL = {
    # the same recipe on 3x64x64 pixels: a U-Net with 32/64/64/64 channels at 64/32/16/8, attention at 8
    **_EMOJI_LATENT,
    "latent": {"autoencoder": None},
    "network": {"kind": "unet", "preset": "tiny",
                "options": {"model_channels": 32, "channel_mult": [1, 2, 2, 2], "num_blocks": 1,
                            "attn_resolutions": [8], "dropout": 0.0}},
    # 18.3 minutes on 2 CPU cores (20 img/s): the latent preset's whole budget, its autoencoder included
    "run": {"total_images": 22_000, "checkpoint_every": 5_500, "log_every": 640, "sample_every": 22_000},
    "eval": {**_EMOJI_EVAL, "loss_every": 11_000},
}

_MOVING_MNIST = {
    # one 14-px MNIST digit bouncing in 32x32 grey frames, 8-frame clips, class = the digit; jointly trained with
    # independent frames (a quarter of each batch, temporal attention masked) and for prediction from up to 4 given
    # frames. Sized for about 30 minutes on 2 CPU cores (docs/video.md)
    "data": {"name": "moving-mnist", "resolution": 32},
    "video": {"frames": 8, "options": {"digits": 1, "digit_size": 14, "count": 20_000},
              "image_fraction": 0.25, "context_frames": 4, "p_context": 0.3},
    "objective": _FLOW,
    "network": {"kind": "video_unet", "preset": "moving-mnist-small"},
    "optim": {"batch_size": 16, "lr": 2e-3, "warmup_images": 1_000, "decay": "cosine"},
    "ema": {"half_lives": {"ema": 2_000.0}, "rampup": 0.1},
    # 20,000 clips at about 13 clips/s (each clip seen about once)
    "run": {"total_images": 20_000, "checkpoint_every": 5_000, "log_every": 320, "sample_every": 10_000},
    "sample": {"sampler": "multistep", "steps": 16, "guidance": 2.0, "grid_columns": 1},
    "eval": {"loss_every": 10_000, "loss_per_bin": 16},
}


PRESETS: dict[str, dict] = {
    "tiny": {
        "data": {"name": "mnist", "resolution": 16, "limit": 2_048},
        "objective": _FLOW,
        "network": {"kind": "unet", "preset": "tiny"},
        "optim": {"batch_size": 16, "lr": 2e-3},
        "ema": {"half_lives": {"ema": 500.0}},
        "run": {"total_images": 256, "checkpoint_every": 128, "log_every": 64, "sample_every": None},
        "sample": {"steps": 4, "grid_columns": 2},
        "eval": {"loss_every": None},
    },
    "mnist": _MNIST,
    "mnist-text": _MNIST_TEXT,
    "fashion-mnist": _gpu_unet({"name": "fashion-mnist", "resolution": 32, "resize": "pad"}, width=64, lr=1e-3,
                               total_images=5_000_000, sample={"steps": 25, "guidance": 1.5}),
    "tiles": _gpu_unet({"name": "tiles", "resolution": 32}, width=96, lr=5e-4, total_images=10_000_000,
                       sample={"steps": 25, "guidance": 1.5, "grid_columns": 8}),
    "emoji-ae": _EMOJI_AE,
    "emoji-latent": _EMOJI_LATENT,
    "emoji": _EMOJI_PIXEL,
    "moving-mnist": _MOVING_MNIST,
    "mnist-dit": {
        "data": {"name": "mnist", "resolution": 32, "resize": "pad"},
        "objective": _FLOW,
        "network": {"kind": "dit", "preset": "DiT-S/2"},
        "optim": {"batch_size": 256, "lr": 1e-4, "warmup_images": 100_000, "grad_clip": 1.0},
        "ema": {"half_lives": {"ema": 500_000.0}},
        "run": {"total_images": 10_000_000, "checkpoint_every": 500_000, "log_every": 20_000,
                "sample_every": 500_000, "milestone_every": 2_000_000, "precision": "bf16"},
        "sample": {"steps": 25, "guidance": 1.5},
        "eval": {"every": 500_000, "loss_every": 100_000},
    },
}


def preset(name: str) -> Config:
    """The named preset as a full :class:`Config`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return merge(Config(), copy.deepcopy(PRESETS[name]))
