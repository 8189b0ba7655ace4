"""Conditions beyond the label reach both networks: augmentation labels, the augmentation level, an image."""

import pytest
import torch

from diffusekit.networks.dit import DiT
from diffusekit.networks.unet import UNet


def perturbed(net):
    for p in net.parameters():  # zero / near-zero output layers at init: perturb so the conditions show
        p.data.add_(0.1 * torch.randn_like(p))
    return net.eval()


def unet(**kwargs):
    torch.manual_seed(0)
    return perturbed(UNet.from_preset("tiny", img_resolution=8, in_channels=1, out_channels=1, num_classes=3,
                                      **kwargs))


def dit(**kwargs):
    torch.manual_seed(0)
    return perturbed(DiT(8, 1, num_classes=3, patch_size=2, hidden_size=32, depth=2, num_heads=2, **kwargs))


def differs(a, b):
    return bool((a - b).abs().max() > 1e-3 * a.abs().max())


NETS = [pytest.param(unet, id="unet"), pytest.param(dit, id="dit")]
X, NOISE, LABELS = torch.randn(2, 1, 8, 8), torch.tensor([0.3, -1.0]), torch.tensor([0, 2])


@pytest.mark.parametrize("make", NETS)
def test_labels_as_dict_equal_labels_as_tensor_and_plain_state_is_unchanged(make):
    net = make()
    torch.testing.assert_close(net(X, NOISE, {"labels": LABELS}), net(X, NOISE, LABELS))
    assert not any("extra" in key for key in net.state_dict())  # old checkpoints keep loading
    with pytest.raises(ValueError, match="unknown condition"):
        net(X, NOISE, {"labels": LABELS, "text": X})


@pytest.mark.parametrize("make", NETS)
def test_augmentation_labels_zero_means_unaugmented(make):
    net = make(augment_dim=6)
    plain = net(X, NOISE, LABELS)
    torch.testing.assert_close(net(X, NOISE, {"labels": LABELS, "augment": torch.zeros(2, 6)}), plain)
    assert differs(net(X, NOISE, {"labels": LABELS, "augment": torch.ones(2, 6)}), plain)
    with pytest.raises(ValueError, match=r"shape \[2, 6\]"):
        net(X, NOISE, {"labels": LABELS, "augment": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="without augment_dim"):
        make()(X, NOISE, {"labels": LABELS, "augment": torch.zeros(2, 6)})


@pytest.mark.parametrize("make", NETS)
def test_cascade_inputs(make):
    net = make(cond_channels=1, noise_aug=True)
    image = torch.randn(2, 1, 8, 8)
    cond = {"labels": LABELS, "image": image, "aug_level": torch.tensor([0.1, 0.4])}
    out = net(X, NOISE, cond)
    assert out.shape == X.shape
    assert differs(net(X, NOISE, {**cond, "image": -image}), out)
    assert differs(net(X, NOISE, {**cond, "aug_level": torch.tensor([0.3, 0.0])}), out)
    with pytest.raises(ValueError, match="needs 'aug_level'"):
        net(X, NOISE, {"labels": LABELS, "image": image})
    with pytest.raises(ValueError, match="image-conditioned"):
        net(X, NOISE, {"labels": LABELS, "aug_level": torch.zeros(2)})
    with pytest.raises(ValueError, match="without cond_channels"):
        make()(X, NOISE, {"labels": LABELS, "image": image})
