import pytest
import torch

from diffusekit.networks.discriminator import PatchDiscriminator, receptive_field


def test_default_layout_and_parameter_count_written_out():
    d = PatchDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 1), (512, 1, 1)]
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) for c in convs)
    # conv weights 4x4, biases only where no GroupNorm follows; GroupNorm has a scale and a shift per channel
    expected = (3 * 64 * 16 + 64) + 64 * 128 * 16 + 2 * 128 + 128 * 256 * 16 + 2 * 256 + 256 * 512 * 16 + 2 * 512 \
        + (512 * 16 + 1)
    assert sum(p.numel() for p in d.parameters()) == expected == 2_765_633


def test_width_is_capped_at_eight_times_channels():
    d = PatchDiscriminator(channels=4, layers=5, norm="none")
    widths = [m.out_channels for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [4, 8, 16, 32, 32, 32, 1]


@pytest.mark.parametrize("size, layers, logits", [(64, 3, 6), (32, 2, 6), (128, 3, 14)])
def test_logit_map_size(size, layers, logits):
    d = PatchDiscriminator(channels=8, layers=layers)
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1, logits, logits)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_receptive_field_measured_from_the_gradient_of_one_logit(layers):
    # Without normalisation a logit depends exactly on the pixels of its patch: the support of its gradient.
    d = PatchDiscriminator(in_channels=1, channels=4, layers=layers, norm="none",
                           generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(1, 1, 192, 192, dtype=torch.float64, requires_grad=True)
    logits = d(x)
    i, j = logits.shape[2] // 2, logits.shape[3] // 2  # an interior logit: its field does not touch the padding
    (grad,) = torch.autograd.grad(logits[0, 0, i, j], x)
    rows = grad[0, 0].abs().sum(1).nonzero().flatten()
    cols = grad[0, 0].abs().sum(0).nonzero().flatten()
    measured = (int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    assert measured == (receptive_field(layers),) * 2 == (9 * 2 ** layers - 2,) * 2
    assert d.receptive_field == {1: 16, 2: 34, 3: 70}[layers]


def test_dcgan_initialisation_from_a_generator():
    a = PatchDiscriminator(channels=32, generator=torch.Generator().manual_seed(3))
    b = PatchDiscriminator(channels=32, generator=torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    big = PatchDiscriminator(generator=torch.Generator().manual_seed(0))
    weight = big.net[8].weight  # 256 * 512 * 16 draws
    assert abs(weight.mean().item()) < 1e-3 and weight.std().item() == pytest.approx(0.02, rel=0.01)
    scale = big.net[9].weight
    assert scale.mean().item() == pytest.approx(1.0, abs=0.005) and scale.std().item() == pytest.approx(0.02, rel=0.2)
    assert all(m.bias is None or not m.bias.any() for m in big.net if isinstance(m, torch.nn.Conv2d))
    assert not big.net[9].bias.any()


def test_global_rng_when_no_generator():
    torch.manual_seed(5)
    a = PatchDiscriminator(channels=8)
    torch.manual_seed(5)
    b = PatchDiscriminator(channels=8)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def test_group_norm_has_no_running_statistics():
    d = PatchDiscriminator(channels=8)
    assert list(d.buffers()) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())


def test_one_image_does_not_depend_on_the_rest_of_the_batch():
    d = PatchDiscriminator(channels=8).train()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(d(x)[:1], d(x[:1]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="batch"), "unknown discriminator norm 'batch'"),
    (dict(layers=0), "layers must be a positive integer"),
    (dict(channels=2.5), "channels must be a positive integer"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PatchDiscriminator(**kwargs)
