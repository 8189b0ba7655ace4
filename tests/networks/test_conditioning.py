"""Conditions beyond the label reach both networks: augmentation labels, the augmentation level, an image, text."""

import pytest
import torch

from diffusekit.networks.dit import DiT
from diffusekit.networks.unet import UNet


def perturbed(net):
    for p in net.parameters():  # zero / near-zero output layers at init: perturb so the conditions show
        p.data.add_(0.1 * torch.randn_like(p))
    return net.eval()


def unet(perturb=True, **kwargs):
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", img_resolution=8, in_channels=1, out_channels=1, num_classes=3, **kwargs)
    return perturbed(net) if perturb else net.eval()


def dit(perturb=True, **kwargs):
    torch.manual_seed(0)
    net = DiT(8, 1, num_classes=3, patch_size=2, hidden_size=32, depth=2, num_heads=2, **kwargs)
    return perturbed(net) if perturb else net.eval()


def differs(a, b):
    return bool((a - b).abs().max() > 1e-3 * a.abs().max())


NETS = [pytest.param(unet, id="unet"), pytest.param(dit, id="dit")]
X, NOISE, LABELS = torch.randn(2, 1, 8, 8), torch.tensor([0.3, -1.0]), torch.tensor([0, 2])


@pytest.mark.parametrize("make", NETS)
def test_cond_is_a_mapping_none_is_empty_and_plain_state_is_unchanged(make):
    net = make()
    null = net(X, NOISE, {"labels": torch.full((2,), 3)})  # the null class of a 3-class network
    torch.testing.assert_close(net(X, NOISE, {}), null)
    torch.testing.assert_close(net(X, NOISE, None), null)
    with pytest.raises(TypeError, match=r"bare tensor: pass class labels as \{'labels': labels\}"):
        net(X, NOISE, LABELS)
    with pytest.raises(TypeError, match="condition 'labels' must be a tensor"):
        net(X, NOISE, {"labels": [0, 2]})
    assert not any("extra" in key for key in net.state_dict())  # old checkpoints keep loading
    with pytest.raises(ValueError, match="unknown condition"):
        net(X, NOISE, {"labels": LABELS, "caption": X})


@pytest.mark.parametrize("make", NETS)
def test_augmentation_labels_zero_means_unaugmented(make):
    net = make(augment_dim=6)
    plain = net(X, NOISE, {"labels": LABELS})
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


TEXT_DIM = 8


def text_cond(length=5, real=(3, 5), seed=1):
    """Two sentences of ``real`` tokens each, padded (with noise, which must not matter) to ``length``."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(2, length, TEXT_DIM, generator=gen)
    mask = torch.arange(length)[None, :] < torch.tensor(real)[:, None]
    pooled = torch.randn(2, TEXT_DIM, generator=gen)
    return {"labels": LABELS, "text": states, "text_mask": mask, "text_pooled": pooled}


@pytest.mark.parametrize("make", NETS)
def test_text_conditioning_masks_padding_and_has_a_learned_null(make):
    net = make(text_dim=TEXT_DIM)
    cond = text_cond()
    out = net(X, NOISE, cond)
    assert out.shape == X.shape
    # padding: a longer padded copy of the same sentences, or other values under the mask, change nothing
    padded = {**cond, "text": torch.cat([cond["text"], torch.randn(2, 4, TEXT_DIM)], dim=1),
              "text_mask": torch.cat([cond["text_mask"], torch.zeros(2, 4, dtype=torch.bool)], dim=1)}
    torch.testing.assert_close(net(X, NOISE, padded), out, atol=1e-5, rtol=1e-5)
    masked = cond["text"].clone()
    masked[0, 4] += 5.0  # row 0 has 3 real tokens
    torch.testing.assert_close(net(X, NOISE, {**cond, "text": masked}), out, atol=1e-5, rtol=1e-5)
    # a real token matters (through cross-attention alone: the pooled vector is given)
    real = cond["text"].clone()
    real[0, 1] += 1.0
    changed = net(X, NOISE, {**cond, "text": real})
    assert differs(changed[:1], out[:1])
    torch.testing.assert_close(changed[1:], out[1:])
    # text_null rows are the output without text; the other rows keep their text
    absent = net(X, NOISE, {"labels": LABELS})
    nulled = net(X, NOISE, {**cond, "text_null": torch.tensor([True, False])})
    torch.testing.assert_close(nulled[:1], absent[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nulled[1:], out[1:], atol=1e-5, rtol=1e-5)
    assert differs(out, absent)


@pytest.mark.parametrize("make", NETS)
def test_untrained_cross_attention_is_the_identity(make):
    net = make(perturb=False, text_dim=TEXT_DIM)
    cond = text_cond()
    other = {**cond, "text": torch.randn(2, 5, TEXT_DIM)}  # same pooled vector, other tokens
    torch.testing.assert_close(net(X, NOISE, other), net(X, NOISE, cond), atol=0.0, rtol=0.0)
    projections = [m.proj for m in net.modules() if type(m).__name__ == "CrossAttention"]
    assert projections and all(bool((p.weight == 0).all()) for p in projections)


@pytest.mark.parametrize("make", NETS)
def test_text_dim_zero_is_the_network_without_text(make):
    plain, zero, text = make(), make(text_dim=0), make(text_dim=TEXT_DIM)
    assert list(zero.state_dict()) == list(plain.state_dict())
    assert not any("text" in key or "cross" in key for key in plain.state_dict())
    assert set(plain.state_dict()) < set(text.state_dict())
    torch.testing.assert_close(zero(X, NOISE, {"labels": LABELS}), plain(X, NOISE, {"labels": LABELS}))


@pytest.mark.parametrize("make", NETS)
def test_text_errors(make):
    net, cond = make(text_dim=TEXT_DIM), text_cond()
    with pytest.raises(ValueError, match="without text_dim"):
        make()(X, NOISE, cond)
    with pytest.raises(ValueError, match="without text_dim"):
        make()(X, NOISE, {"labels": LABELS, "text_null": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"text must have shape \[2, L, 8\]"):
        net(X, NOISE, {**cond, "text": torch.randn(2, 5, 7)})
    with pytest.raises(ValueError, match=r"text must have shape"):
        net(X, NOISE, {**cond, "text": torch.randn(2, 5 * TEXT_DIM)})
    with pytest.raises(ValueError, match=r"text_mask must have shape \[2, 5\]"):
        net(X, NOISE, {**cond, "text_mask": torch.ones(2, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"text_pooled must have shape \[2, 8\]"):
        net(X, NOISE, {**cond, "text_pooled": torch.randn(2, 6)})
    with pytest.raises(ValueError, match=r"text_null must have shape \[2\]"):
        net(X, NOISE, {**cond, "text_null": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="without 'text'"):
        net(X, NOISE, {"labels": LABELS, "text_pooled": cond["text_pooled"]})
