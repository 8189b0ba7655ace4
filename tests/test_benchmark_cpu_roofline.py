"""The CPU roofline benchmark's pure logic: override lists, the profile's op categories and time split
(``op_profile.py``), the interleaved rounds, and the per-tensor EMA loop it times against the multi-tensor update
(checked against EDM's update written out)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from diffusekit.training.ema import EMA

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


roofline = _load("cpu_roofline")
op_profile = _load("op_profile")


def test_split_overrides_keeps_commas_inside_lists_and_mappings():
    text = "optim.batch_size=128,network.options.channel_mult=[1,2,2],network.options={a: 1, b: [2,3]}"
    assert roofline.split_overrides(text) == [
        "optim.batch_size=128", "network.options.channel_mult=[1,2,2]", "network.options={a: 1, b: [2,3]}"]


def test_parse_named():
    assert roofline.parse_named("c32=network.options.model_channels=32,optim.batch_size=64", "--candidate") == (
        "c32", ["network.options.model_channels=32", "optim.batch_size=64"])


@pytest.mark.parametrize("text", ["c32", "=optim.batch_size=1", "c32=", "c32=optim.batch_size", "a.b=optim.lr=1"])
def test_parse_named_rejects_malformed(text):
    with pytest.raises(ValueError, match="--combo"):
        roofline.parse_named(text, "--combo")


@pytest.mark.parametrize("chain, category", [
    (["roofline.step", "aten::conv2d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution"],
     "convolution"),
    (["roofline.step", "autograd::engine::evaluate_function: ConvolutionBackward0", "ConvolutionBackward0",
      "aten::convolution_backward"], "convolution"),
    (["roofline.step", "autograd::engine::evaluate_function: ConvolutionBackward0", "aten::empty"], "convolution"),
    (["roofline.step", "aten::conv2d", "aten::_to_copy", "aten::copy_"], "elementwise"),  # autocast's weight cast
    (["roofline.step", "aten::group_norm", "aten::native_group_norm"], "normalisation"),
    (["roofline.step", "autograd::engine::evaluate_function: NativeGroupNormBackward0",
      "aten::native_group_norm_backward"], "normalisation"),
    (["roofline.step", "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu"],
     "attention"),
    (["roofline.step", "aten::bmm"], "attention"),
    (["roofline.step", "aten::linear", "aten::addmm"], "matmul"),
    (["roofline.step", "aten::silu"], "elementwise"),
    (["roofline.step", "autograd::engine::evaluate_function: SiluBackward0", "aten::silu_backward"], "elementwise"),
    (["roofline.step", "aten::to", "aten::_to_copy", "aten::copy_"], "elementwise"),
    (["roofline.step", "Optimizer.step#AdamW.step", "aten::_fused_adamw_"], "optimizer"),
    (["roofline.step", "Optimizer.step#AdamW.step", "aten::mul_"], "optimizer"),  # the for-loop AdamW
    (["roofline.step", "aten::_foreach_norm"], "optimizer"),  # the gradient norm
    (["roofline.step", "aten::_foreach_norm", "aten::linalg_vector_norm"], "optimizer"),  # its per-tensor path
    (["roofline.step", "aten::_foreach_lerp_", "aten::lerp_"], "EMA"),
    (["roofline.step", "EMASet.update", "aten::_foreach_lerp_"], "EMA"),
    (["roofline.step", "EMASet.update", "aten::lerp_"], "EMA"),  # the per-tensor loop
    (["roofline.step", "CompiledFunction", "## Call CompiledFxGraph fabc ##"], "compiled kernels"),
    (["roofline.step", "aten::randn"], "other ops"),
])
def test_categorise(chain, category):
    assert op_profile.categorise(chain) == category


@pytest.mark.parametrize("name, expected", [("aten::silu", True), ("mkldnn::_convolution_pointwise", True),
                                            ("## Call CompiledFxGraph fabc ##", True), ("roofline.step", False),
                                            ("autograd::engine::evaluate_function: SiluBackward0", False),
                                            ("Optimizer.step#AdamW.step", False)])
def test_is_op(name, expected):
    assert op_profile.is_op(name) is expected


def test_split_profile_sums_and_overhead():
    ops = [(["s", "aten::conv2d", "aten::mkldnn_convolution"], 600.0),
           (["s", "aten::conv2d"], 20.0),
           (["s", "aten::silu"], 100.0),
           (["s", "aten::silu"], 80.0),
           (["s", "EMASet.update", "aten::_foreach_lerp_"], 50.0)]
    result = op_profile.split_profile(ops, wall_us=1000.0)
    split = result["split"]
    assert result["wall_ms"] == 1.0
    assert split["convolution"] == {"ms": 0.62, "fraction": 0.62}
    assert split["elementwise"]["ms"] == pytest.approx(0.18)
    assert split["EMA"]["ms"] == pytest.approx(0.05)
    assert split["framework overhead"]["ms"] == pytest.approx(0.15)  # 1000 - 850 us
    assert split["attention"]["ms"] == 0.0
    assert set(split) == {*op_profile.CATEGORIES, "framework overhead"}
    top = result["ops"]
    assert [op["name"] for op in top] == ["aten::mkldnn_convolution", "aten::silu", "aten::_foreach_lerp_",
                                          "aten::conv2d"]
    assert top[1]["calls"] == 2 and top[1]["self_ms"] == pytest.approx(0.18) and top[1]["category"] == "elementwise"


def test_per_tensor_ema_loop_matches_edm_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.GroupNorm(1, 3), nn.BatchNorm2d(3))
    ema = EMA(model, half_life_images=1000.0, rampup=None)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[2].running_mean.add_(1.0)
    roofline.ema_update_per_tensor(ema, model, cur_nimg=5000, batch=100)
    beta = 0.5 ** (100 / 1000.0)  # EDM appendix F.3: beta = 0.5 ** (batch / half-life)
    for old, new, current in zip(before, ema.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(new, beta * old + (1 - beta) * current)
    torch.testing.assert_close(ema.model[2].running_mean, model[2].running_mean)


def test_interleaved_rounds_rotate_and_apply_each_configurations_threads():
    seen = []

    def step(name):
        def run():
            seen.append((name, torch.get_num_threads()))
            return 4
        return run

    previous = torch.get_num_threads()
    try:
        configs = [roofline.Timed("a", step("a")), roofline.Timed("b", step("b"), threads=1),
                   roofline.Timed("c", step("c"))]
        roofline.run_interleaved(configs, rounds=2, warmup=1, threads=2, label="test")
        assert torch.get_num_threads() == 2  # restored after the one-thread configuration
    finally:
        torch.set_num_threads(previous)
    assert [name for name, _ in seen] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(threads == (1 if name == "b" else 2) for name, threads in seen)
    assert [(len(c.warmup_s), len(c.times_s), c.images) for c in configs] == [(1, 2, 4)] * 3
