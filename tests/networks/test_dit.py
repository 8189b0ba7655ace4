import math

import pytest
import torch

from diffusekit.networks.dit import PRESETS, DiT, sincos_pos_embed_2d


def tiny(**kwargs) -> DiT:
    options = dict(img_resolution=16, in_channels=3, num_classes=10) | kwargs
    return DiT.from_name("tiny", **options)


def zero_initialised(model: DiT) -> list[torch.nn.Linear]:
    return [block.ada_ln[1] for block in model.blocks] + [model.final.ada_ln[1], model.final.linear]


def perturb_zero_init(model: DiT, scale: float = 0.05, seed: int = 0) -> DiT:
    """Give the adaLN-Zero and final layers random weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in zero_initialised(model):
            for p in (layer.weight, layer.bias):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def inputs(model: DiT, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.in_channels, *model.img_size, generator=g)
    return x, torch.randn(batch, generator=g)


@pytest.mark.parametrize(
    "resolution, patch, in_ch, out_ch, classes",
    [(28, 2, 1, None, 10), (28, 4, 3, 6, 0), (32, 2, 4, 8, 1000), ((16, 24), 4, 3, 3, 5)],
    ids=["28px-p2", "28px-p4-uncond", "32px-p2-latent", "16x24-p4"],
)
def test_output_shape(resolution, patch, in_ch, out_ch, classes):
    sizes = dict(patch_size=patch, hidden_size=32, depth=1, num_heads=2)
    model = perturb_zero_init(DiT(resolution, in_ch, out_channels=out_ch, num_classes=classes, **sizes))
    x, noise_cond = inputs(model, batch=3)
    cond = {"labels": torch.tensor([0, classes, 1])} if classes else {}
    out = model(x, noise_cond, cond)
    assert out.shape == (3, out_ch or in_ch, *model.img_size)
    assert out.dtype == x.dtype and torch.isfinite(out).all()


def test_presets_follow_table_1():
    assert PRESETS["DiT-S/2"] == dict(depth=12, hidden_size=384, num_heads=6, patch_size=2)
    assert PRESETS["DiT-B/4"] == dict(depth=12, hidden_size=768, num_heads=12, patch_size=4)
    assert PRESETS["DiT-L/8"] == dict(depth=24, hidden_size=1024, num_heads=16, patch_size=8)
    assert PRESETS["DiT-XL/2"] == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)
    assert len(PRESETS) == 4 * 3 + 1
    model = tiny()
    assert (len(model.blocks), model.pos_embed.shape) == (2, (1, 64, 64))


def test_initial_output_is_exactly_zero_and_blocks_are_identity():
    model = tiny()
    # Randomise everything that is not zero-initialised: the zeros alone must silence the output.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ada_ln" not in name and not name.startswith("final.linear"):
                p.normal_()
    x, noise_cond = inputs(model)
    assert torch.equal(model(x, noise_cond, {"labels": torch.tensor([3, 10])}), torch.zeros_like(x))
    tokens, c = torch.randn(2, 64, 64), torch.randn(2, 64)
    for block in model.blocks:
        assert torch.equal(block(tokens, c), tokens)


def test_initialisation_follows_dit():
    model = tiny()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
    qkv = model.blocks[0].attn.qkv.weight
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))  # xavier-uniform
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    conv = model.patch_embed.weight  # xavier on the flattened [hidden, C*p*p] weight
    bound = math.sqrt(6 / (conv.shape[0] + conv[0].numel()))
    assert conv.abs().max() <= bound and conv.abs().max() > 0.9 * bound
    assert abs(model.noise_mlp[0].weight.std().item() - 0.02) < 0.002


def test_positional_table_is_2d_sincos_and_not_saved():
    dim, rows, cols = 8, 3, 5
    table = sincos_pos_embed_2d(dim, rows, cols)
    freqs = torch.tensor([1.0, 0.01], dtype=torch.float64)  # 10000^(-k/2), k = 0, 1
    for r, c in [(0, 0), (1, 3), (2, 4)]:
        expected = torch.cat([(c * freqs).sin(), (c * freqs).cos(), (r * freqs).sin(), (r * freqs).cos()])
        torch.testing.assert_close(table[r * cols + c], expected)
    assert torch.unique(table, dim=0).shape[0] == rows * cols
    model = tiny(img_resolution=(8, 12))
    torch.testing.assert_close(model.pos_embed[0], sincos_pos_embed_2d(64, 4, 6).to(model.pos_embed.dtype))
    assert "pos_embed" not in model.state_dict()
    assert all(p is not model.pos_embed for p in model.parameters())


def test_conditioning_reaches_the_output():
    model = perturb_zero_init(tiny())
    x, noise_cond = inputs(model)
    null = torch.full((2,), 10)
    out_null = model(x, noise_cond, {"labels": null})
    assert torch.equal(model(x, noise_cond), out_null)  # no labels mean the null class for the whole batch
    assert not torch.allclose(model(x, noise_cond, {"labels": torch.tensor([2, 7])}), out_null)
    assert not torch.allclose(model(x, noise_cond + 0.5, {"labels": null}), out_null)
    # Samples do not interact: a sample's output does not depend on the rest of the batch.
    torch.testing.assert_close(model(x[:1], noise_cond[:1], {"labels": null[:1]}), out_null[:1])


def test_fourier_embedding_option():
    model = perturb_zero_init(tiny(embedding="fourier"))
    x, noise_cond = inputs(model)
    assert not torch.allclose(model(x, noise_cond), model(x, noise_cond + 0.1))
    with pytest.raises(ValueError, match="unknown noise embedding"):
        tiny(embedding="learned")


def test_gradients_reach_every_parameter_within_three_adam_steps():
    """From the zero init only final.linear gets gradient at step 0; the adaLN-Zero layers open the rest.

    Checked per tensor: the key part of the qkv bias never gets gradient (softmax ignores a per-query
    constant), but the tensor does through the query and value parts.
    """
    torch.manual_seed(0)
    model = tiny()
    x, noise_cond = inputs(model)
    target, labels = torch.randn_like(x), torch.tensor([4, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        (model(x, noise_cond, {"labels": labels}) - target).square().mean().backward()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        if step == 0:
            assert with_grad == {"final.linear.weight", "final.linear.bias"}
        opt.step()
    assert with_grad == {name for name, _ in model.named_parameters()}


def test_gradients_reach_every_parameter_once_zero_layers_are_perturbed():
    model = perturb_zero_init(tiny())
    x, noise_cond = inputs(model)
    model(x, noise_cond, {"labels": torch.tensor([4, 10])}).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_float32_model_and_meta_device_forward():
    model = perturb_zero_init(tiny()).float()
    x, noise_cond = inputs(model)
    assert model(x.float(), noise_cond.float()).dtype == torch.float32
    # Meta tensors have no values: a forward that reads one on the host (.item(), bool()) would fail.
    with torch.device("meta"):
        model = tiny()
        out = model(torch.randn(2, 3, 16, 16), torch.randn(2), {"labels": torch.tensor([1, 10])})
    assert out.shape == (2, 3, 16, 16) and out.is_meta


def test_parameter_count_of_dit_xl2():
    """DiT-XL/2 on 256px ImageNet latents (32x32x4, 1000 classes) has 675M parameters (DiT paper and code).

    The paper's 675.1M is for 8 output channels (learn_sigma) and counts the frozen 2-D positional table
    (256 x 1152) as a parameter; here it is a buffer, hence 675,129,632 - 294,912.
    """
    with torch.device("meta"):
        sigma = DiT.from_name("DiT-XL/2", img_resolution=32, in_channels=4, out_channels=8, num_classes=1000)
        plain = DiT.from_name("DiT-XL/2", img_resolution=32, in_channels=4, num_classes=1000)
    count_sigma = sum(p.numel() for p in sigma.parameters())
    count_plain = sum(p.numel() for p in plain.parameters())
    assert abs(count_sigma - 675.1e6) / 675.1e6 < 0.005
    assert count_sigma == 675_129_632 - 32 * 32 // 4 * 1152
    assert count_sigma - count_plain == 1152 * 2 * 2 * 4 + 2 * 2 * 4  # final linear: 16 fewer outputs


@pytest.mark.parametrize(
    "build, call, message",
    [
        (dict(img_resolution=30, patch_size=4), None, "not divisible by the patch size"),
        (dict(img_resolution=(16, 18), patch_size=4), None, "not divisible by the patch size"),
        (dict(hidden_size=60, num_heads=8), None, "not divisible by the number of heads"),
        (dict(hidden_size=6, num_heads=2), None, "divisible by 4"),
        (dict(num_classes=-1), None, "num_classes"),
        ({}, dict(x=torch.zeros(2, 4, 16, 16)), r"expected x of shape \[B, 3, 16, 16\]"),
        ({}, dict(x=torch.zeros(2, 3, 16, 8)), r"expected x of shape \[B, 3, 16, 16\]"),
        ({}, dict(x=torch.zeros(3, 16, 16)), "expected x of shape"),
        ({}, dict(noise_cond=torch.zeros(2, 1)), r"noise_cond must have shape \[2\]"),
        (dict(num_classes=0), dict(cond={"labels": torch.tensor([0, 1])}), "unconditional"),
        ({}, dict(cond={"labels": torch.tensor([0, 1, 2])}), r"class labels must have shape \[2\]"),
    ],
)
def test_errors(build, call, message):
    with pytest.raises(ValueError, match=message):
        model = DiT(**(dict(img_resolution=16, in_channels=3, num_classes=10, hidden_size=32, depth=1) | build))
        args = dict(x=torch.zeros(2, 3, 16, 16), noise_cond=torch.zeros(2), cond=None) | (call or {})
        model(**args)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown DiT preset 'DiT-M/2'"):
        DiT.from_name("DiT-M/2", img_resolution=32, in_channels=4)


def test_relative_position_drops_the_table_and_biases_every_block():
    plain, relative = tiny(), tiny(position="relative")
    assert relative.pos_embed is None and not any("relative" in key for key in plain.state_dict())
    extra = set(relative.state_dict()) - set(plain.state_dict())
    assert extra == {f"blocks.{i}.attn.relative_bias.table" for i in range(2)}
    assert relative.blocks[0].attn.relative_bias.table.shape == (2, 15, 15)  # 2 heads, an 8x8 grid
    x, noise_cond = inputs(relative)
    assert not relative(x, noise_cond).any()  # adaLN-Zero: still exactly zero at initialisation
    with pytest.raises(ValueError, match="unknown DiT position 'rope'"):
        tiny(position="rope")


def test_relative_attention_logits_carry_the_2d_bias():
    torch.manual_seed(0)
    attn = tiny(position="relative").blocks[0].attn
    with torch.no_grad():
        attn.relative_bias.table.normal_()
    tokens = torch.randn(2, 64, 64)
    q, k, v = attn.qkv(tokens).reshape(2, 64, 3, 2, 32).permute(2, 0, 3, 1, 4).unbind(0)
    coords = [(y, x) for y in range(8) for x in range(8)]
    table = attn.relative_bias.table
    bias = torch.stack([torch.stack([table[:, yj - yi + 7, xj - xi + 7] for yj, xj in coords], dim=-1)
                        for yi, xi in coords], dim=-2)  # [heads, T, T]: b[h, dy, dx] by hand
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32) + bias, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 64, 64))
    torch.testing.assert_close(attn(tokens), expected)
