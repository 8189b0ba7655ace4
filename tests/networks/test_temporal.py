"""Temporal attention: hand-computed logits, shift invariance of relative positions, the zero-initialised
branch and the identity mask of independent images."""

import math

import pytest
import torch

from diffusekit.networks.temporal import TemporalAttention

B, F, C, H, W = 2, 5, 8, 3, 2


def attention(position: str, seed: int = 0, **kwargs) -> TemporalAttention:
    torch.manual_seed(seed)
    layer = TemporalAttention(C, 2, position, max_frames=8, max_distance=2, **kwargs).double()
    with torch.no_grad():  # the output projection (and the relative table) start at zero: give them values
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def frames(seed: int = 1) -> torch.Tensor:
    return torch.randn(B * F, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_untrained_branch_adds_exactly_nothing():
    for position in ("relative", "rotary", "absolute", "none"):
        layer = TemporalAttention(C, 2, position, max_frames=F)
        assert not layer.proj.weight.any() and not layer.proj.bias.any()
        x = frames().float()
        assert torch.equal(layer(x, F), x)


def test_relative_logits_are_scaled_dot_products_plus_the_bias_of_the_clipped_offset():
    layer = attention("relative")
    gen = torch.Generator().manual_seed(2)
    q, k = (torch.randn(3, 2, F, 4, dtype=torch.float64, generator=gen) for _ in range(2))
    positions = torch.arange(F)
    logits = layer.logits(q, k, positions)
    for h in range(2):
        for i in range(F):
            for j in range(F):
                expected = q[:, h, i] @ k[:, h, j].T / math.sqrt(4) + layer.relative_bias[h, 2 + max(-2, min(2, j - i))]
                torch.testing.assert_close(logits[:, h, i, j], expected.diagonal())


@pytest.mark.parametrize("position", ["relative", "rotary", "none"])
def test_relative_positions_are_invariant_to_shifting_every_frame_index(position):
    layer, x = attention(position), frames()
    out = layer(x, F, positions=torch.arange(F))
    torch.testing.assert_close(layer(x, F, positions=torch.arange(F) + 7), out, rtol=0, atol=1e-12)
    assert (out - x).abs().max() > 1e-3  # the branch is active


def test_absolute_positions_are_not_shift_invariant_and_bounded():
    layer, x = attention("absolute"), frames()
    shifted = layer(x, F, positions=torch.arange(F) + 3)
    assert (shifted - layer(x, F)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="at most 8"):
        layer(torch.randn(9, C, H, W, dtype=torch.float64), 9)
    with pytest.raises(ValueError, match=r"lie in \[0, 8\)"):
        layer(x, F, positions=torch.arange(F) + 4)


@pytest.mark.parametrize("position", ["relative", "rotary", "absolute", "none"])
def test_independent_frames_get_their_own_value_vector_only(position):
    """An independent clip: softmax over the diagonal alone, so the branch is proj(v_i) with v_i from frame i
    alone (and no frame embedding); the other clip still mixes its frames."""
    layer, x = attention(position), frames()
    out = layer(x, F, independent=torch.tensor([True, False]))
    tokens = layer.norm(x).flatten(2).transpose(1, 2)  # [B*F, HW, C]
    value = layer.qkv(tokens)[..., 2 * C:]  # qkv channels are ordered (q, k, v) x heads
    expected = x + layer.proj(value).transpose(1, 2).reshape(B * F, C, H, W)
    torch.testing.assert_close(out[:F], expected[:F], rtol=0, atol=1e-12)
    assert (out[F:] - expected[F:]).abs().max() > 1e-3
    torch.testing.assert_close(out[F:], layer(x[F:], F), rtol=0, atol=1e-12)  # rows do not interact


def test_construction_errors():
    with pytest.raises(ValueError, match="even number of channels per head"):
        TemporalAttention(6, 2, "rotary")
    with pytest.raises(ValueError, match="unknown temporal position 'learned'"):
        TemporalAttention(8, 2, "learned")
    with pytest.raises(ValueError, match="max_frames"):
        TemporalAttention(8, 2, "absolute")
    with pytest.raises(ValueError, match="whole number of clips"):
        TemporalAttention(8, 2)(torch.randn(7, 8, 2, 2), 2)
