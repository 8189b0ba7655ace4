import json

import numpy as np
import pytest
import torch

from diffusekit.data import ImageArrays
from diffusekit.latent import LatentAutoencoder, encode_dataset
from diffusekit.latent import cache as cache_module
from diffusekit.networks.autoencoder import Autoencoder


def _autoencoder(seed=0) -> LatentAutoencoder:
    torch.manual_seed(seed)
    module = Autoencoder(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=2, norm_num_groups=4)
    module.latent_shift.copy_(torch.tensor([0.25, -0.5]))
    module.latent_scale.copy_(torch.tensor([2.0, 0.5]))
    return LatentAutoencoder(module, "test", "model", image_shape=(3, 8, 8))


def _data(n=5) -> ImageArrays:
    rng = np.random.default_rng(0)
    return ImageArrays(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 2, 2,
                       ("a", "b"))


def test_the_cache_holds_each_image_and_its_mirror_image_encoded(tmp_path):
    autoencoder, data = _autoencoder(), _data()
    latents = encode_dataset(autoencoder, data, flip=True, root=tmp_path, batch=2)
    assert len(latents) == 10 and latents.item_shape == (2, 4, 4)
    x, labels = data.tensors()
    expected = torch.cat([autoencoder.module.encode(x).mean, autoencoder.module.encode(torch.flip(x, [3])).mean])
    torch.testing.assert_close(latents.latents, expected.detach(), rtol=1e-5, atol=1e-6)
    assert latents.labels.tolist() == labels.tolist() * 2
    # batches are normalised with the autoencoder's factors: (z - shift) * scale
    z, batch_labels = latents.tensors([7, 1])
    shift, scale = torch.tensor([0.25, -0.5]).view(1, 2, 1, 1), torch.tensor([2.0, 0.5]).view(1, 2, 1, 1)
    torch.testing.assert_close(z, (expected[[7, 1]].detach() - shift) * scale)
    assert batch_labels.tolist() == [labels[2].item(), labels[1].item()]


def test_a_matching_cache_is_read_back_without_encoding(tmp_path, monkeypatch):
    autoencoder, data = _autoencoder(), _data()
    first = encode_dataset(autoencoder, data, flip=False, root=tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the cache was encoded again")

    monkeypatch.setattr(cache_module, "_encode", refuse)
    again = encode_dataset(_autoencoder(), data, flip=False, root=tmp_path)  # same weights, a new object
    assert torch.equal(again.latents, first.latents) and again.path == first.path


@pytest.mark.parametrize("change", ["weights", "scaling", "images", "labels", "flip"])
def test_a_changed_autoencoder_or_dataset_is_encoded_afresh(tmp_path, change):
    autoencoder, data = _autoencoder(), _data()
    first = encode_dataset(autoencoder, data, flip=False, root=tmp_path)
    if change == "weights":
        autoencoder = _autoencoder(seed=1)
    elif change == "scaling":
        autoencoder = _autoencoder()
        autoencoder.module.latent_scale.mul_(1.5)
        autoencoder.__dict__.pop("digest", None)
    elif change == "images":
        data.images[0, 0, 0, 0] ^= 1
    elif change == "labels":
        data.labels[0] = 1 - data.labels[0]
    second = encode_dataset(autoencoder, data, flip=change == "flip", root=tmp_path)
    assert second.path != first.path
    assert len(list(tmp_path.iterdir())) == 2
    if change in ("weights",):
        assert not torch.allclose(second.latents, first.latents)


def test_a_damaged_cache_is_rebuilt(tmp_path):
    autoencoder, data = _autoencoder(), _data()
    first = encode_dataset(autoencoder, data, flip=False, root=tmp_path)
    shard = next(first.path.glob("shard-*.safetensors"))
    shard.write_bytes(b"torn")
    messages = []
    again = encode_dataset(autoencoder, data, flip=False, root=tmp_path, log=messages.append)
    assert torch.equal(again.latents, first.latents)
    assert any("rebuilding" in m for m in messages)
    meta = json.loads((first.path / "meta.json").read_text())
    meta["count"] = 3
    (first.path / "meta.json").write_text(json.dumps(meta))
    assert torch.equal(encode_dataset(autoencoder, data, flip=False, root=tmp_path).latents, first.latents)


def test_images_of_another_shape_than_the_autoencoder_was_trained_on_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    data = ImageArrays(rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8), np.zeros(2, np.int64), 0, ())
    with pytest.raises(ValueError, match=r"trained on \(3, 8, 8\) images, the data are \(3, 16, 16\)"):
        encode_dataset(_autoencoder(), data, root=tmp_path)
