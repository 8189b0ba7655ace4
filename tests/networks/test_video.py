"""The factorised space-time U-Net: per-frame U-Net at initialisation, frames mixed only by temporal attention,
image groups kept exactly apart, frame conditioning, and clear errors."""

import pytest
import torch

from diffusekit.networks.dit import DiT
from diffusekit.networks.unet import UNet
from diffusekit.networks.video import PRESETS, VideoUNet

POSITIONS = ["relative", "rotary", "absolute", "none"]


def tiny(seed: int = 0, **overrides) -> VideoUNet:
    torch.manual_seed(seed)
    return VideoUNet.from_preset("tiny", in_channels=1, out_channels=1, **overrides).eval()


def activate(net: VideoUNet, std: float = 0.1, seed: int = 0) -> VideoUNet:
    """Random values for every parameter (the zero output projections included), so every path carries signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return net


def clips(batch: int = 2, frames: int = 4, seed: int = 1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, frames, 16, 16, generator=gen, dtype=dtype), torch.randn(batch, generator=gen)


@pytest.mark.parametrize("position", POSITIONS)
def test_output_shape(position):
    x, noise = clips()
    assert tiny(temporal_position=position)(x, noise).shape == (2, 1, 4, 16, 16)


def test_untrained_network_is_its_unet_on_every_frame():
    net = tiny(num_classes=3)
    x, noise = clips()
    cond = {"labels": torch.tensor([0, 2])}
    out = net(x, noise, cond)
    for f in range(4):
        torch.testing.assert_close(out[:, :, f], net.unet(x[:, :, f], noise, cond), rtol=0, atol=1e-6)
    assert (activate(net)(x, noise, cond)[:, :, 0] - net.unet(x[:, :, 0], noise, cond)).abs().max() > 1e-3


def test_the_unet_loads_an_image_unets_checkpoint_and_the_temporal_layers_sit_where_asked():
    net = tiny(temporal_resolutions=(8,))
    image = UNet.from_preset("tiny", in_channels=1, out_channels=1, num_heads=2)
    net.unet.load_state_dict(image.state_dict())  # strict: the same keys and shapes
    layout = net.unet.block_layout
    assert sorted(int(i) for i in net.temporal) == [i for i, block in enumerate(layout) if block.resolution == 8]
    assert len(tiny().temporal) == len(layout)  # None: after every block
    assert not hasattr(image, "is_video") and VideoUNet.is_video
    assert (net.frames, net.in_channels, net.out_channels, net.img_resolution, net.num_classes,
            net.frame_conditioning) == (4, 1, 1, 16, 0, False)


@pytest.mark.parametrize("position", POSITIONS)
def test_independent_frames_do_not_see_each_other(position):
    """float32: a flagged clip's frame 1 is bit-for-bit unaffected when its other frames are replaced, and an
    image moved to another slot gives the same output (no position leaks); unflagged clips mix their frames."""
    net = activate(tiny(temporal_position=position))
    x, noise = clips()
    other = x.clone()
    other[:, :, [0, 2, 3]] = torch.randn(2, 1, 3, 16, 16)
    flags = {"independent": torch.tensor([True, True])}
    diff = (net(x, noise, flags) - net(other, noise, flags))[:, :, 1].abs().max()
    assert diff < 1e-6
    mixed = (net(x, noise) - net(other, noise))[:, :, 1].abs().max()
    assert mixed > 1e-3
    order = [3, 0, 1, 2]
    torch.testing.assert_close(net(x[:, :, order], noise, flags), net(x, noise, flags)[:, :, order],
                               rtol=0, atol=1e-6)


def test_a_batch_can_hold_clips_and_image_groups():
    # float64: float32 kernels may sum in another order for another batch size
    net = activate(tiny()).double()
    x, noise = clips(dtype=torch.float64)
    flags = {"independent": torch.tensor([False, True])}
    both = net(x, noise, flags)
    torch.testing.assert_close(both[:1], net(x[:1], noise[:1]), rtol=0, atol=1e-10)
    torch.testing.assert_close(both[1:], net(x[1:], noise[1:], {"independent": torch.tensor([True])}),
                               rtol=0, atol=1e-10)


def test_gradients_reach_every_temporal_parameter():
    net = tiny(temporal_position="absolute")
    with torch.no_grad():
        for layer in net.temporal.values():
            layer.proj.weight.normal_(std=0.1)
    x, noise = clips()
    net(x, noise).square().sum().backward()
    for name, p in net.temporal.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("position", ["relative", "rotary", "none"])
def test_relative_positions_take_other_clip_lengths(position):
    x, noise = clips(frames=7)
    assert activate(tiny(temporal_position=position))(x, noise).shape == (2, 1, 7, 16, 16)


def test_absolute_positions_take_at_most_frames():
    net = tiny(temporal_position="absolute")
    assert net(*clips(frames=3)).shape == (2, 1, 3, 16, 16)
    with pytest.raises(ValueError, match="5 frames, but .* at most 4"):
        net(*clips(frames=5))


def test_frame_conditioning_sees_given_frames_only():
    net = activate(tiny(frame_conditioning=True))
    assert net.unet.in_channels == 1 + 1 + 1
    x, noise = clips()
    context, _ = clips(seed=3)
    mask = torch.tensor([[True, True, False, False], [True, False, False, True]])
    out = net(x, noise, {"context": context, "context_mask": mask})
    hidden = context.clone()
    hidden.transpose(1, 2)[~mask] = 7.0  # frames not given are masked out: their values do not matter
    torch.testing.assert_close(net(x, noise, {"context": hidden, "context_mask": mask.float()}), out,
                               rtol=0, atol=0)
    changed = context.clone()
    changed[0, :, 0] += 1.0
    assert (net(x, noise, {"context": changed, "context_mask": mask}) - out).abs().max() > 1e-3
    # no context at all is the same as nothing given: the whole clip is generated
    nothing = {"context": torch.full_like(context, 5.0), "context_mask": torch.zeros(2, 4, dtype=torch.bool)}
    torch.testing.assert_close(net(x, noise), net(x, noise, nothing), rtol=0, atol=0)


def test_presets():
    sizes = {name: sum(p.numel() for p in VideoUNet.from_preset(name).parameters()) for name in PRESETS}
    assert 800_000 <= sizes["moving-mnist-small"] <= 1_000_000 and sizes["tiny"] < 100_000
    net = VideoUNet.from_preset("moving-mnist-small")
    assert (net.frames, net.in_channels, net.img_resolution) == (8, 1, 32)
    assert all(block.channels % 16 == 0 for block in net.unet.block_layout)
    with pytest.raises(ValueError, match="unknown video U-Net preset"):
        VideoUNet.from_preset("kinetics")


def test_errors():
    net = tiny()
    x, noise = clips()
    with pytest.raises(ValueError, match=r"clips of shape \[B, 1, F, 16, 16\], got \(2, 1, 16, 16\)"):
        net(x[:, :, 0], noise)
    with pytest.raises(ValueError, match=r"independent'\] must have shape \[2\]"):
        net(x, noise, {"independent": torch.tensor([True])})
    with pytest.raises(ValueError, match="must be a bool tensor"):
        net(x, noise, {"independent": torch.tensor([1, 0])})
    with pytest.raises(ValueError, match="given to a VideoUNet built without frame_conditioning"):
        net(x, noise, {"context": x, "context_mask": torch.ones(2, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="go together"):
        tiny(frame_conditioning=True)(x, noise, {"context": x})
    with pytest.raises(ValueError, match=r"context_mask'\] must have shape \[2, 4\]"):
        tiny(frame_conditioning=True)(x, noise, {"context": x, "context_mask": torch.ones(2, 3)})
    with pytest.raises(ValueError, match="cond\\['image'\\]"):
        net(x, noise, {"image": x})
    with pytest.raises(ValueError, match=r"temporal_resolutions \[4\]"):
        tiny(temporal_resolutions=(4,))
    with pytest.raises(ValueError, match="unknown temporal_position 'learned'"):
        tiny(temporal_position="learned")
    with pytest.raises(ValueError, match="no cond_channels"):
        tiny(cond_channels=3)


IMAGE_NETS = [lambda: UNet.from_preset("tiny"), lambda: DiT.from_name("tiny", img_resolution=16, in_channels=3)]


@pytest.mark.parametrize("image_net", IMAGE_NETS, ids=["unet", "dit"])
def test_image_networks_reject_video_conditions(image_net):
    net, x = image_net(), torch.randn(2, 3, 16, 16)
    owner = type(net).__name__
    with pytest.raises(ValueError, match=rf"image-group flag \(cond\['independent'\]\) was given to {owner}, which "
                                         "has no temporal layers"):
        net(x, torch.zeros(2), {"independent": torch.tensor([True, False])})
    with pytest.raises(ValueError, match=f"context frames \\(context\\) were given to {owner}"):
        net(x, torch.zeros(2), {"context": x})
