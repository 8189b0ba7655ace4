"""Autoencoder training through the trainer, and latent diffusion on top of it."""

import shutil

import numpy as np
import pytest
import torch

from diffusekit.cli import main as cli_main
from diffusekit.config import ConfigError, resolve
from diffusekit.config.files import write_yaml
from diffusekit.data import ImageArrays
from diffusekit.errors import CheckpointError
from diffusekit.generate import generate, load_model
from diffusekit.latent import NotAnAutoencoder, load_autoencoder
from diffusekit.models.checkpoint import latest_valid, load_checkpoint, save_checkpoint
from diffusekit.sampling import SAMPLERS
from diffusekit.training.autoencoder import AutoencoderTrainer, latent_statistics, psnr
from diffusekit.training.make import train

from .resume_check import assert_resume_is_bit_identical

_AE = ["network.kind=autoencoder", "network.preset=f4",
       "network.options={block_out_channels: [8, 8], norm_num_groups: 4, latent_channels: 2}",
       "run.total_images=96", "optim.batch_size=8", "run.checkpoint_every=32", "run.log_every=16", "optim.lr=1e-3",
       "ema.half_lives={ema: 64}", "eval.validation=none", "autoencoder.gan_start_images=32",
       "autoencoder.disc_channels=8", "autoencoder.disc_layers=2", "autoencoder.stats_images=16"]


def _data(n=24, size=16):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    images[:, 4:12, 4:12] = 255  # some structure to reconstruct
    return ImageArrays(images, rng.integers(0, 2, n).astype(np.int64), 2, ("a", "b"))


def _config(*overrides):
    return resolve("tiny", overrides=_AE + list(overrides))


@pytest.mark.parametrize("extra", [(), ("network.options={block_out_channels: [8, 8], norm_num_groups: 4, "
                                        "latent_channels: 2, quantizer: {num_codes: 8, restart_after: 2}}",)],
                         ids=["kl-gan", "vq-gan"])
def test_a_stopped_and_resumed_autoencoder_run_is_bit_identical(tmp_path, extra):
    config, data = _config(*extra), _data()
    whole = train(config, data, tmp_path / "whole")
    assert isinstance(whole, AutoencoderTrainer) and whole.cur_nimg == 96
    assert whole.discriminator is not None
    # stopped at 48 images (after the GAN started at 32), the last checkpoint at 32
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 48, "ckpt-000000000032")
    resumed = load_checkpoint(latest_valid(tmp_path / "split" / "checkpoints"))[3]
    for key, value in whole.discriminator.state_dict().items():
        assert torch.equal(value, resumed["discriminator"][key]), key


def test_the_gan_and_its_logs_start_at_gan_start_images(tmp_path):
    records = []

    class Hooks:
        def on_log(self, trainer, record):
            records.append(record)

    train(_config(), _data(), tmp_path, hooks=Hooks())
    assert [r["cur_nimg"] for r in records] == [16, 32, 48, 64, 80, 96]
    assert all("ae/rec" in r and "ae/kl" in r for r in records)
    assert not any("ae/d" in r for r in records[:2]) and all("ae/d" in r for r in records[2:])


def test_a_vq_run_logs_its_codebook_usage_and_perplexity(tmp_path):
    records = []

    class Hooks:
        def on_log(self, trainer, record):
            records.append(record)

    train(_config("network.options={block_out_channels: [8, 8], norm_num_groups: 4, latent_channels: 2, "
                  "quantizer: {num_codes: 8}}", "autoencoder.gan_weight=0", "run.total_images=32"), _data(), tmp_path,
          hooks=Hooks())
    for r in records:
        assert 1 <= r["ae/perplexity"] <= 8 and 0 < r["ae/usage"] <= 1 and r["ae/codebook"] > 0
        assert "ae/kl" not in r


def test_checkpoints_store_the_latent_statistics_of_their_own_weights(tmp_path):
    trainer = train(_config(), _data(), tmp_path)
    _, model_state, ema_states, _ = load_checkpoint(latest_valid(tmp_path / "checkpoints"))
    images = _data().tensors(range(16))[0]
    z = trainer.emas["ema"].model.encode(images).mean.detach()
    mean = z.transpose(0, 1).reshape(2, -1).double().mean(1).float()
    std = z.transpose(0, 1).reshape(2, -1).double().std(1).float()
    torch.testing.assert_close(ema_states["ema"]["latent_shift"], mean)
    torch.testing.assert_close(ema_states["ema"]["latent_scale"], 1 / std)
    assert not torch.equal(model_state["latent_shift"], ema_states["ema"]["latent_shift"])  # each its own weights
    shift, scale = latent_statistics(trainer.emas["ema"].model, images, "scalar")
    assert torch.equal(shift, torch.zeros(2))
    torch.testing.assert_close(scale, torch.full((2,), 1 / float(z.std())))


def test_psnr_against_its_definition():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0] += 0.2  # mse 0.04 on a peak-to-peak range of 2: 10 log10(4 / 0.04) = 20 dB
    y[1, 0, 0, 0] = 2.0  # clamped to 1: mse 1 / 16 -> 10 log10(64)
    torch.testing.assert_close(psnr(y, x), torch.tensor([20.0, 10 * float(np.log10(64.0))]))


def test_a_latent_diffusion_model_trains_on_cached_latents_and_samples_decoded_images(tmp_path):
    data = _data()
    train(_config("autoencoder.gan_weight=0"), data, tmp_path / "ae")
    config = resolve("tiny", overrides=[
        f"latent.autoencoder={tmp_path / 'ae'}", f"latent.cache_dir={tmp_path / 'cache'}", "run.total_images=32",
        "optim.batch_size=8", "run.checkpoint_every=32", "eval.validation=none",
        "network.options={model_channels: 16, channel_mult: [1], attn_resolutions: []}"])
    trainer = train(config, data, tmp_path / "latent")
    assert trainer.info["image_shape"] == [2, 8, 8] and trainer.info["latent"]["image_shape"] == [1, 16, 16]
    assert len(trainer.data) == 48  # the images and their mirror images
    assert len(list((tmp_path / "cache").iterdir())) == 1
    model = load_model(tmp_path / "latent")
    assert model.image_shape == (2, 8, 8) and model.output_shape == (1, 16, 16)
    images = generate(model.denoiser, 3, model.image_shape, labels=torch.tensor([0, 1, 0]), num_classes=2,
                      steps=2, decode=model.decode)
    assert images.shape == (3, 1, 16, 16) and torch.isfinite(images).all()
    # the autoencoder changed after the latent model was trained: its latents would decode to other images
    ae_checkpoint = latest_valid(tmp_path / "ae" / "checkpoints")
    cur, model_state, emas, state = load_checkpoint(ae_checkpoint)
    emas["ema"]["latent_scale"] = emas["ema"]["latent_scale"] * 2
    shutil.rmtree(ae_checkpoint)  # rewritten in place, with valid checksums
    assert save_checkpoint(tmp_path / "ae" / "checkpoints", cur, model_state, emas, state) == ae_checkpoint
    with pytest.raises(CheckpointError, match="weights have changed"):
        load_model(tmp_path / "latent")


def test_a_diffusion_checkpoint_is_not_an_autoencoder_and_the_reverse(tmp_path):
    data = _data()
    train(resolve("tiny", overrides=["run.total_images=16", "optim.batch_size=8", "run.checkpoint_every=16",
                                     "network.options={model_channels: 16, channel_mult: [1], attn_resolutions: []}"]),
          data, tmp_path / "diffusion")
    with pytest.raises(NotAnAutoencoder, match="is a unet diffusion model"):
        load_autoencoder(tmp_path / "diffusion")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAnAutoencoder, match="neither a diffusers AutoencoderKL directory"):
        load_autoencoder(tmp_path / "empty")
    train(_config("run.total_images=16", "run.checkpoint_every=16", "autoencoder.gan_weight=0"), data, tmp_path / "ae")
    with pytest.raises(ValueError, match="is an autoencoder, not a diffusion model"):
        load_model(tmp_path / "ae")


def test_bad_autoencoder_and_latent_configs_are_refused():
    with pytest.raises(ConfigError, match="network.preset: unknown autoencoder preset"):
        _config("network.preset=f16")
    with pytest.raises(ConfigError, match="autoencoder.kl_weight must be >= 0"):
        _config("autoencoder.kl_weight=-1")
    with pytest.raises(ConfigError, match="data.augment transforms pixels"):
        resolve("tiny", overrides=["latent.autoencoder=somewhere", "data.augment=0.5"])
    with pytest.raises(ConfigError, match="set latent.autoencoder in the diffusion model's config"):
        _config("latent.autoencoder=somewhere")


_LATENT = ["run.total_images=32", "optim.batch_size=8", "run.checkpoint_every=32", "eval.validation=none",
           "network.options={model_channels: 16, channel_mult: [1], attn_resolutions: []}"]


@pytest.fixture(scope="module")
def autoencoders(tmp_path_factory):
    """Two small trained autoencoders on the same images: f2 (2x8x8 latents of 16x16 images) and f4 (2x4x4)."""
    root = tmp_path_factory.mktemp("aes")
    train(_config("autoencoder.gan_weight=0"), _data(), root / "f2")
    train(_config("autoencoder.gan_weight=0", "network.options={block_out_channels: [8, 8, 8], norm_num_groups: 4, "
                  "latent_channels: 2}"), _data(), root / "f4")
    return root


def test_every_sampler_and_guidance_draw_latents_that_decode_to_images(tmp_path, autoencoders):
    config = resolve("tiny", overrides=_LATENT + [f"latent.autoencoder={autoencoders / 'f2'}",
                                                  f"latent.cache_dir={tmp_path / 'cache'}"])
    train(config, _data(), tmp_path / "latent")
    model = load_model(tmp_path / "latent")
    labels = torch.tensor([0, 1])
    for sampler in SAMPLERS:
        for guidance in (1.0, 2.0):
            options = dict(labels=labels, num_classes=2, sampler=sampler, steps=4, guidance=guidance)
            latents = generate(model.denoiser, 2, model.image_shape, **options)
            images = generate(model.denoiser, 2, model.image_shape, **options, decode=model.decode)
            assert latents.shape == (2, 2, 8, 8) and images.shape == (2, 1, 16, 16)
            # the images are the sampled latents, decoded: nothing else differs between the two calls
            torch.testing.assert_close(images, model.decode(latents), atol=1e-5, rtol=0)


def test_a_dit_trains_on_latents_with_patch_1_and_an_unfitting_patch_names_both_shapes(tmp_path, autoencoders):
    dit = ["network.kind=dit", "network.preset=tiny", f"latent.cache_dir={tmp_path / 'cache'}"]
    config = resolve("tiny", overrides=_LATENT + dit + ["network.options={patch_size: 1}",
                                                        f"latent.autoencoder={autoencoders / 'f4'}"])
    trainer = train(config, _data(), tmp_path / "dit")
    assert trainer.network.patch_size == 1 and trainer.info["image_shape"] == [2, 4, 4]
    config = resolve("tiny", overrides=_LATENT + dit + ["network.options={patch_size: 8}",
                                                        f"latent.autoencoder={autoencoders / 'f4'}"])
    with pytest.raises(ConfigError, match=r"turns the 1x16x16 images into 2x4x4 latents.*not divisible by the patch"):
        train(config, _data(), tmp_path / "dit8")


def test_a_latent_run_resumes_only_with_the_autoencoder_it_was_trained_on(tmp_path, autoencoders, capsys):
    def config(autoencoder, total):
        return resolve("tiny", overrides=_LATENT + [f"latent.autoencoder={autoencoders / autoencoder}",
                                                    f"latent.cache_dir={tmp_path / 'cache'}",
                                                    f"run.total_images={total}"])

    train(config("f2", 32), _data(), tmp_path / "latent")
    write_yaml(config("f2", 32), tmp_path / "latent" / "config.yaml")  # as `diffusekit train` writes it
    assert cli_main(["info", str(tmp_path / "latent")]) == 0
    assert f"latent diffusion on the latents of the autoencoder {autoencoders / 'f2'}" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"trained on 2x8x8 latents of the autoencoder .*f2.*this config gives 2x4x4 "
                                         r"latents of the autoencoder .*f4"):
        train(config("f4", 64), _data(), tmp_path / "latent")
    # a pixel config on the latent run's checkpoints: refused the same way
    with pytest.raises(ValueError, match=r"trained on 2x8x8 latents .* this config gives 1x16x16 images"):
        train(resolve("tiny", overrides=_LATENT + ["run.total_images=64"]), _data(), tmp_path / "latent")
    assert train(config("f2", 64), _data(), tmp_path / "latent").cur_nimg == 64  # the right one resumes
