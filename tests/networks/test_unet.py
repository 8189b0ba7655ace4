import math

import pytest
import torch
import torch.nn.functional as F

from diffusekit.networks.layers import ConvResample, Resample, SelfAttention, UNetBlock
from diffusekit.networks.unet import PRESETS, UNet

# EDM's CIFAR-10 DDPM++ network (NVlabs/edm training/networks.py SongUNet with train.py --arch=ddpmpp), as
# Karras et al. 2022 (Table 7) print it: 55.73M parameters.
EDM_DDPMPP_CIFAR10_PARAMS_M = 55.73


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def perturb(net: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move every weight away from its (partly near-zero) initialisation so all paths carry signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return net


def inputs(net: UNet, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.in_channels, net.img_resolution, net.img_resolution, generator=gen)
    return x, torch.randn(batch, generator=gen)


def tiny(**overrides) -> UNet:
    torch.manual_seed(0)
    return UNet.from_preset("tiny", **overrides).eval()


# -- the parameter count of the DDPM++ layout, written out layer by layer ---------------------------------------------
def conv_params(k: int, cin: int, cout: int) -> int:  # a k x k kernel and a bias
    return k * k * cin * cout + cout


def linear_params(fin: int, fout: int) -> int:
    return fin * fout + fout


def group_norm_params(c: int) -> int:  # a scale and a shift per channel
    return 2 * c


def attention_params(c: int) -> int:  # GroupNorm, a 1x1 conv to (q, k, v), a 1x1 output conv
    return group_norm_params(c) + conv_params(1, c, 3 * c) + conv_params(1, c, c)


def block_params(cin, cout, emb, *, adaptive_scale, attention=False, resample=False) -> int:
    """norm0, 3x3 conv0, the embedding's affine (scale and shift, or a bias), norm1, 3x3 conv1, a 1x1 skip
    projection when the width changes or the block resamples (EDM's resample_proj), then attention."""
    n = group_norm_params(cin) + conv_params(3, cin, cout) + linear_params(emb, cout * (2 if adaptive_scale else 1))
    n += group_norm_params(cout) + conv_params(3, cout, cout)
    n += conv_params(1, cin, cout) if cin != cout or resample else 0
    return n + (attention_params(cout) if attention else 0)


def ddpmpp_params(img_resolution, in_channels, out_channels, model_channels, channel_mult, num_blocks,
                  attn_resolutions, adaptive_scale=True, num_classes=0, channel_mult_emb=4, **_) -> int:
    """Song et al. 2021's DDPM++ as EDM's SongUNet lays it out (positional noise embedding: no parameters)."""
    noise, emb = model_channels, model_channels * channel_mult_emb

    def block(cin, cout, **kw):
        return block_params(cin, cout, emb, adaptive_scale=adaptive_scale, **kw)

    n = linear_params(noise, emb) + linear_params(emb, emb) + (num_classes + 1) * noise * bool(num_classes)
    n += conv_params(3, in_channels, model_channels)  # stem
    widths = [model_channels * m for m in channel_mult]
    skips, c = [model_channels], model_channels
    for level, width in enumerate(widths):  # encoder: a down block below the top, then num_blocks blocks
        res = img_resolution >> level
        if level:
            n += block(c, c, resample=True)
            skips.append(c)
        for _ in range(num_blocks):
            n += block(c, width, attention=res in attn_resolutions)
            c = width
            skips.append(c)
    for level in reversed(range(len(widths))):  # decoder: the middle (attention, plain) or an up block, then
        res, width = img_resolution >> level, widths[level]  # num_blocks + 1 blocks that each take a skip
        n += block(c, c, attention=True) + block(c, c) if level == len(widths) - 1 else block(c, c, resample=True)
        for i in range(num_blocks + 1):
            n += block(c + skips.pop(), width, attention=i == num_blocks and res in attn_resolutions)
            c = width
    return n + group_norm_params(widths[0]) + conv_params(3, widths[0], out_channels)  # head


@pytest.mark.parametrize("name", ["ddpmpp_cifar10", "ddpm_cifar10", "tiny"])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_parameter_count_is_the_ddpmpp_formula(name, num_classes):
    with torch.device("meta"):
        net = UNet.from_preset(name, num_classes=num_classes)
    assert n_params(net) == ddpmpp_params(**PRESETS[name], num_classes=num_classes)


def test_ddpmpp_cifar10_matches_edm_parameter_count():
    count = ddpmpp_params(**PRESETS["ddpmpp_cifar10"])  # 55,732,739
    assert round(count / 1e4) / 100 == EDM_DDPMPP_CIFAR10_PARAMS_M  # to the paper's two decimals


def test_presets_build_and_tiny_is_small():
    with torch.device("meta"):
        sizes = {name: n_params(UNet.from_preset(name)) for name in PRESETS}
    assert {"ddpmpp_cifar10", "ddpm_cifar10", "tiny"} <= set(sizes)
    assert 1_000 < sizes["tiny"] < 100_000


def test_ddpm_cifar10_runs():
    torch.manual_seed(0)
    net = UNet.from_preset("ddpm_cifar10").eval()
    x, noise_cond = inputs(net, batch=1)
    with torch.no_grad():
        assert net(x, noise_cond).shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(img_resolution=28, in_channels=1, out_channels=2, channel_mult=(1, 2, 2), attn_resolutions=(14, 7)),
        dict(num_classes=5, embedding="fourier", channel_mult_noise=2),
        dict(adaptive_scale=False, num_blocks=2, dropout=0.1),
        dict(model_channels=16, num_heads=None, channels_per_head=8, attn_resolutions=(16, 8)),
        dict(resample_filter=(1, 3, 3, 1), resample_proj=False),
        dict(img_resolution=8, channel_mult=(1,), attn_resolutions=()),
        dict(resample_block="conv", num_blocks=2),
    ],
)
def test_output_shape(overrides):
    net = tiny(**overrides)
    x, noise_cond = inputs(net, batch=3)
    out = net(x, noise_cond)
    assert out.shape == (3, net.out_channels, net.img_resolution, net.img_resolution)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("overrides", [{}, dict(adaptive_scale=False, dropout=0.1, num_classes=3)])
def test_near_zero_init_makes_initial_output_tiny(overrides):
    net = tiny(**overrides).train()
    x, noise_cond = inputs(net, batch=4)
    assert net(torch.ones_like(x), noise_cond).abs().max() < 1e-3
    assert net(x, noise_cond).abs().max() < 1e-3


def test_class_conditioning_changes_output_and_none_is_null_class():
    net = perturb(tiny(num_classes=5))
    x, noise_cond = inputs(net, batch=4)
    labels = torch.tensor([0, 1, 2, 4])
    null = torch.full((4,), 5)
    with torch.no_grad():
        out_cond, out_null = net(x, noise_cond, {"labels": labels}), net(x, noise_cond, {"labels": null})
        out_none = net(x, noise_cond)
    torch.testing.assert_close(out_none, out_null)
    per_sample = (out_cond - out_null).flatten(1).abs().amax(1)
    assert (per_sample > 1e-3).all()


def test_noise_condition_changes_output():
    net = perturb(tiny())
    x, noise_cond = inputs(net)
    with torch.no_grad():
        assert not torch.allclose(net(x, noise_cond), net(x, noise_cond + 1.0))


@pytest.mark.parametrize("overrides", [dict(num_classes=3), dict(adaptive_scale=False, embedding="fourier")])
def test_gradients_reach_every_parameter(overrides):
    net = perturb(tiny(**overrides)).train()
    x, noise_cond = inputs(net, batch=3)
    cond = {"labels": torch.tensor([0, 1, 3])} if net.num_classes else {}
    net(x, noise_cond, cond).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_float64_network():
    net = perturb(tiny(num_classes=2)).double()
    x, noise_cond = inputs(net)
    assert net(x.double(), noise_cond.double(), {"labels": torch.tensor([0, 2])}).dtype == torch.float64


def test_eval_is_deterministic_and_dropout_is_active_in_training():
    net = perturb(tiny(dropout=0.5))
    x, noise_cond = inputs(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x, noise_cond), net(x, noise_cond))
        net.train()
        assert not torch.allclose(net(x, noise_cond), net(x, noise_cond))


def test_resample_is_box_down_and_nearest_up():
    x = torch.randn(2, 5, 8, 6)
    down, up = Resample("down"), Resample("up")
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    # The fast path taken for [1, 1] is the FIR filter with stride 2.
    torch.testing.assert_close(down._fir(x), down(x))
    torch.testing.assert_close(up._fir(x), up(x))
    # A smoother filter keeps the shape and the mean (unit DC gain).
    for mode, size in (("down", (4, 3)), ("up", (16, 12))):
        out = Resample(mode, (1, 3, 3, 1))(torch.ones(1, 2, 8, 6))
        assert out.shape[-2:] == size
        torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.ones_like(out[..., 1:-1, 1:-1]))


def test_self_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = perturb(SelfAttention(channels=16, num_heads=2), std=0.3)
    x = torch.randn(2, 16, 4, 3)
    q, k, v = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 8, 12).unbind(1)  # [B, heads, C/heads, HW]
    weights = torch.softmax(torch.einsum("bhcq,bhck->bhqk", q, k) / math.sqrt(8), dim=-1)
    expected = attn.proj(torch.einsum("bhqk,bhck->bhcq", weights, v).reshape(2, 16, 4, 3))
    torch.testing.assert_close(attn(x), expected)


def test_block_skip_projection_and_adaptive_affine():
    plain = UNetBlock(16, 16, 8)
    assert isinstance(plain.skip, torch.nn.Identity) and plain.affine.out_features == 32
    assert isinstance(UNetBlock(16, 16, 8, resample="down").skip, torch.nn.Conv2d)  # EDM's resample_proj
    assert isinstance(UNetBlock(16, 16, 8, resample="up", resample_proj=False).skip, torch.nn.Identity)
    assert UNetBlock(16, 32, 8, adaptive_scale=False).affine.out_features == 32


def test_construction_errors():
    with pytest.raises(ValueError, match=r"img_resolution 30 .*divisible.* 4"):
        UNet(30, 3, 3, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"attn_resolutions \[12\]"):
        UNet(16, 3, 3, model_channels=8, channel_mult=(1, 2), attn_resolutions=(12,))
    with pytest.raises(ValueError, match="attention heads"):
        tiny(num_heads=3)
    with pytest.raises(ValueError, match="unknown noise embedding"):
        tiny(embedding="sinusoidal")
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        UNet.from_preset("ddpmpp_imagenet")


def test_forward_errors():
    net = tiny()
    x, noise_cond = inputs(net)
    with pytest.raises(ValueError, match=r"shape \[B, 3, 16, 16\].*\(2, 4, 16, 16\)"):
        net(torch.randn(2, 4, 16, 16), noise_cond)
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 3, 16, 8), noise_cond)
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(3, 16, 16), noise_cond)
    with pytest.raises(ValueError, match="noise_cond"):
        net(x, torch.randn(2, 1))
    with pytest.raises(ValueError, match="unconditional"):
        net(x, noise_cond, {"labels": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="class labels must have shape"):
        tiny(num_classes=4)(x, noise_cond, {"labels": torch.tensor([0, 1, 2])})


def test_conv_resampling_is_ddpms_strided_and_nearest_convs():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    down, up = ConvResample("down", 4), ConvResample("up", 4)
    expected_down = F.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1)
    expected_up = F.conv2d(x.repeat_interleave(2, -1).repeat_interleave(2, -2), up.conv.weight, up.conv.bias, padding=1)
    assert torch.allclose(down(x, None), expected_down) and down(x).shape == (2, 4, 4, 4)
    assert torch.allclose(up(x, None), expected_up) and up(x).shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="resample mode"):
        ConvResample("sideways", 4)


def test_conv_resample_block_replaces_the_residual_resampling_blocks():
    with torch.device("meta"):
        residual = UNet.from_preset("ddpm_cifar10")
        conv = UNet.from_preset("ddpm_cifar10", resample_block="conv")
    resamplers = [b for b in [*conv.encoder, *conv.decoder] if isinstance(b, ConvResample)]
    assert [b.mode for b in resamplers] == ["down"] * 3 + ["up"] * 3
    assert n_params(conv) < n_params(residual)
    with pytest.raises(ValueError, match="unknown resample_block 'fir'"):
        UNet.from_preset("tiny", resample_block="fir")


def test_relative_self_attention_adds_the_bias_of_each_2d_displacement():
    torch.manual_seed(0)
    attn = perturb(SelfAttention(channels=16, num_heads=2, relative_size=3), std=0.3)
    assert attn.relative_bias.table.shape == (2, 5, 5)
    x = torch.randn(2, 16, 3, 3)
    q, k, v = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 8, 9).unbind(1)  # [B, heads, C/heads, HW]
    coords = [(y, x) for y in range(3) for x in range(3)]
    table = attn.relative_bias.table.detach()
    bias = torch.tensor([[[float(table[h, yj - yi + 2, xj - xi + 2]) for yj, xj in coords]
                          for yi, xi in coords] for h in range(2)])  # b[h, dy, dx] by hand
    weights = torch.softmax(torch.einsum("bhcq,bhck->bhqk", q, k) / math.sqrt(8) + bias, dim=-1)
    expected = attn.proj(torch.einsum("bhqk,bhck->bhcq", weights, v).reshape(2, 16, 3, 3))
    torch.testing.assert_close(attn(x), expected)


def test_attention_position_relative_starts_as_the_plain_network_and_default_keys_are_unchanged():
    plain, relative = tiny(), tiny(attention_position="relative")
    assert not any("relative" in key for key in plain.state_dict())
    extra = {key: value.shape for key, value in relative.state_dict().items() if key not in plain.state_dict()}
    assert extra and all(key.endswith("attention.relative_bias.table") for key in extra)
    assert all(shape == (1, 15, 15) for shape in extra.values())  # one head, the 8x8 map: (2*8-1)^2 entries
    x, noise_cond = inputs(plain)
    assert torch.equal(relative(x, noise_cond), plain(x, noise_cond))  # zero tables: the same function
    with pytest.raises(ValueError, match="unknown attention_position 'absolute'"):
        tiny(attention_position="absolute")
