"""Loading diffusers' AutoencoderKL folders, checked against diffusers itself (a test-only dependency)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusekit.errors import BadFileError, MissingFileError, UnsupportedAutoencoder, UserError
from diffusekit.networks.autoencoder_diffusers import load_diffusers_autoencoder

diffusers = pytest.importorskip("diffusers")

TOLERANCE = 1e-4

TWO_LEVELS = dict(block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1, latent_channels=4)
# Three levels, no quant_conv, a shift (the SD3 / FLUX normalisation), two resnets per encoder level.
THREE_LEVELS = dict(block_out_channels=(16, 32, 32), norm_num_groups=8, layers_per_block=2, latent_channels=8,
                    use_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
NO_ATTENTION = dict(block_out_channels=(16, 32), norm_num_groups=4, layers_per_block=1, latent_channels=4,
                    mid_block_add_attention=False, use_post_quant_conv=False, in_channels=1, out_channels=2)


def reference(options: dict, seed: int = 0):
    levels = len(options["block_out_channels"])
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                                    up_block_types=("UpDecoderBlock2D",) * levels, **options)
    with torch.no_grad():  # move the GroupNorm affines away from (1, 0) so that every parameter matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each reference model and the folder its save_pretrained wrote."""
    folders = {}
    for name, options in (("two", TWO_LEVELS), ("three", THREE_LEVELS), ("plain", NO_ATTENTION)):
        model = reference(options)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        folders[name] = (model, folder)
    return folders


def inputs(model, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    levels = len(model.config.block_out_channels)
    x = torch.rand(2, model.config.in_channels, 32, 32, generator=gen) * 2 - 1
    z = torch.randn(2, model.config.latent_channels, 32 // 2 ** (levels - 1), 32 // 2 ** (levels - 1), generator=gen)
    return x, z


def max_errors(theirs, ours):
    x, z = inputs(theirs)
    with torch.no_grad():
        posterior, expected = ours.encode(x), theirs.encode(x).latent_dist
        gen_ours, gen_theirs = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        return {
            "mean": (posterior.mean - expected.mean).abs().max().item(),
            "logvar": (posterior.logvar - expected.logvar).abs().max().item(),
            "decode": (ours.decode(z) - theirs.decode(z).sample).abs().max().item(),
            "forward": (ours(x, generator=gen_ours).reconstruction
                        - theirs(x, sample_posterior=True, generator=gen_theirs).sample).abs().max().item(),
        }


@pytest.mark.parametrize("name", ["two", "three", "plain"])
def test_a_saved_autoencoderkl_loads_and_computes_what_diffusers_computes(saved, name):
    theirs, folder = saved[name]
    ours = load_diffusers_autoencoder(folder)
    assert not ours.training
    errors = max_errors(theirs, ours)
    assert max(errors.values()) < TOLERANCE, errors


def test_the_latent_scaling_comes_through(saved):
    ours = load_diffusers_autoencoder(saved["two"][1])
    torch.testing.assert_close(ours.latent_scale, torch.full((4,), 0.18215))  # diffusers' default
    assert torch.equal(ours.latent_shift, torch.zeros(4))  # shift_factor None
    ours = load_diffusers_autoencoder(saved["three"][1])
    torch.testing.assert_close(ours.latent_scale, torch.full((8,), 0.3611))
    torch.testing.assert_close(ours.latent_shift, torch.full((8,), 0.1159))
    z = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(ours.normalize_latent(z), (z - 0.1159) * 0.3611)  # the SD3 / FLUX pipelines


def copy_with_config(folder, tmp_path, **changes):
    target = tmp_path / "vae"
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_per_channel_latents_mean_and_std_follow_the_sdxl_pipelines(saved, tmp_path):
    mean, std = [0.1, -0.2, 0.3, -0.4], [0.9, 1.1, 0.8, 1.2]
    folder = copy_with_config(saved["two"][1], tmp_path, latents_mean=mean, latents_std=std, scaling_factor=0.5)
    ours = load_diffusers_autoencoder(folder)
    z = torch.randn(2, 4, 3, 3)
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    # pipeline_stable_diffusion_xl_img2img: (z - latents_mean) * scaling_factor / latents_std; its inverse decodes
    torch.testing.assert_close(ours.normalize_latent(z), (z - m) * 0.5 / s)
    torch.testing.assert_close(ours.denormalize_latent(z), z * s / 0.5 + m)


def test_a_pipeline_folder_is_read_through_its_vae_subfolder(saved, tmp_path):
    shutil.copytree(saved["two"][1], tmp_path / "vae")
    ours = load_diffusers_autoencoder(tmp_path)
    assert max(max_errors(saved["two"][0], ours).values()) < TOLERANCE


def to_legacy(name: str, tensor: torch.Tensor):
    """The names and 1x1-conv shapes of attention weights in checkpoints converted from the LDM code."""
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
        if f".attentions.0.{new}." in name:
            name = name.replace(f".{new}.", f".{old}.")
            if name.endswith("weight"):
                tensor = tensor[:, :, None, None]
    return name, tensor


def test_a_legacy_named_state_dict_loads(saved, tmp_path):
    theirs, folder = saved["two"]
    target = copy_with_config(folder, tmp_path)
    state = load_file(target / "diffusion_pytorch_model.safetensors")
    legacy = dict(to_legacy(name, tensor.contiguous()) for name, tensor in state.items())
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
    assert legacy["decoder.mid_block.attentions.0.query.weight"].shape == (64, 64, 1, 1)
    save_file(legacy, target / "diffusion_pytorch_model.safetensors")
    errors = max_errors(theirs, load_diffusers_autoencoder(target))
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("changes, words", [
    (dict(down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
     ["down_block_types", "AttnDownEncoderBlock2D"]),
    (dict(up_block_types=["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]), ["up_block_types", "AttnUpDecoderBlock2D"]),
    (dict(_class_name="AutoencoderKLTemporalDecoder"), ["_class_name", "AutoencoderKLTemporalDecoder"]),
    (dict(act_fn="gelu"), ["act_fn", "gelu"]),
    (dict(norm_type="spatial"), ["norm_type", "spatial"]),
    (dict(latents_mean=[0.0] * 4), ["latents_mean", "latents_std"]),
    (dict(shift_factor=0.1, latents_mean=[0.0] * 4, latents_std=[1.0] * 4), ["shift_factor", "latents_mean"]),
])
def test_an_unsupported_config_is_refused_naming_its_key_and_value(saved, tmp_path, changes, words):
    folder = copy_with_config(saved["two"][1], tmp_path, **changes)
    with pytest.raises(UnsupportedAutoencoder) as error:
        load_diffusers_autoencoder(folder)
    assert isinstance(error.value, UserError)
    for word in words:
        assert word in str(error.value)


def test_an_unexpected_weight_is_refused_naming_it(saved, tmp_path):
    target = copy_with_config(saved["two"][1], tmp_path)
    state = load_file(target / "diffusion_pytorch_model.safetensors")
    state["encoder.mid_block.attentions.0.spatial_norm.weight"] = torch.zeros(4)
    save_file(state, target / "diffusion_pytorch_model.safetensors")
    with pytest.raises(UnsupportedAutoencoder, match="'encoder.mid_block.attentions.0.spatial_norm.weight'"):
        load_diffusers_autoencoder(target)


def test_a_config_that_does_not_fit_the_weights_is_a_bad_file(saved, tmp_path):
    folder = copy_with_config(saved["two"][1], tmp_path, latent_channels=8)
    with pytest.raises(BadFileError, match="encoder.conv_out.weight"):
        load_diffusers_autoencoder(folder)


def test_missing_files_are_named_and_pickled_weights_refused(saved, tmp_path):
    with pytest.raises(MissingFileError, match="nowhere"):
        load_diffusers_autoencoder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingFileError, match="config.json"):
        load_diffusers_autoencoder(empty)
    target = copy_with_config(saved["two"][1], tmp_path)
    weights = target / "diffusion_pytorch_model.safetensors"
    weights.rename(target / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsupportedAutoencoder, match="diffusion_pytorch_model.bin: only safetensors"):
        load_diffusers_autoencoder(target)
    (target / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(MissingFileError, match="diffusion_pytorch_model.safetensors"):
        load_diffusers_autoencoder(target)
