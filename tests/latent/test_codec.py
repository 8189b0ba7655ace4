import pytest
import torch

from diffusekit.errors import UsageError
from diffusekit.latent import load_autoencoder


@pytest.fixture
def diffusers_vae(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                                  latent_channels=4, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2,
                                  scaling_factor=0.5, shift_factor=0.25)
    vae.save_pretrained(tmp_path / "vae")
    return vae.eval(), tmp_path / "vae"


def test_a_diffusers_autoencoder_encodes_decodes_and_scales_as_diffusers_does(diffusers_vae):
    vae, path = diffusers_vae
    ours = load_autoencoder(path)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        decoded = vae.decode(mean).sample
    torch.testing.assert_close(ours.encode(x), mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.decode(mean), decoded, rtol=0, atol=1e-4)
    # diffusers' pipelines feed the diffusion model (z - shift_factor) * scaling_factor
    torch.testing.assert_close(ours.normalize(mean), (mean - 0.25) * 0.5)
    torch.testing.assert_close(ours.decode_normalized(ours.normalize(mean)), decoded, rtol=0, atol=1e-4)
    assert ours.weights == "diffusers" and ours.image_shape is None and ours.downsample_factor == 2
    assert ours.latent_shape((3, 16, 16)) == (4, 8, 8)
    assert load_autoencoder(path).digest == ours.digest
    with pytest.raises(UsageError, match="has no EMAs"):
        load_autoencoder(path, ema="ema")


def test_a_missing_autoencoder_path_is_named(tmp_path):
    with pytest.raises(UsageError, match="no autoencoder at .*nothing"):
        load_autoencoder(tmp_path / "nothing")
