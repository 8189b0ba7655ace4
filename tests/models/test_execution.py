"""How a network runs: native-bf16 detection, ``auto`` precision, channels-last and compilation around a network."""

import pytest
import torch

from diffusekit.models import execution
from diffusekit.models.execution import ExecutedNetwork, Execution, native_bf16, resolve_precision
from diffusekit.networks.unet import UNet


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU reports the given /proc/cpuinfo flags (on Linux)."""
    def set_flags(*flags):
        monkeypatch.setattr(execution, "_cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(execution.platform, "system", lambda: "Linux")
    return set_flags


@pytest.mark.parametrize("flags, native", [
    (("avx2", "fma"), False),  # an AVX2 machine emulates bf16
    (("avx512f", "avx512bw", "avx512_vnni"), False),  # AVX512 without its BF16 extension
    (("avx512f", "avx512_bf16"), True),  # Cooper Lake, Zen 4
    (("avx512f", "amx_bf16", "amx_tile"), True),  # Sapphire Rapids
    (("fp", "asimd", "bf16"), True),  # Arm with FEAT_BF16 (Graviton 3, Neoverse V1)
])
def test_native_bf16_is_read_from_the_cpu_flags(cpu_flags, flags, native):
    cpu_flags(*flags)
    assert native_bf16("cpu") is native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_the_real_cpu_flags_are_parsed():
    flags = execution._cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux: every CPU reports at least one of these
        assert flags & {"fpu", "sse2", "fp", "asimd"}


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of fp32, bf16, auto"):
        Execution("fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("half")


def _network():
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", in_channels=1, out_channels=1, num_classes=2).eval()
    with torch.no_grad():  # every path carries signal (output layers start near zero)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(4, 1, 16, 16, generator=generator), torch.rand(4, generator=generator),
            {"labels": torch.tensor([0, 1, 0, 1])})


@torch.no_grad()
def test_fp32_contiguous_is_the_network_itself():
    net = _network()
    x, c, cond = _inputs()
    assert torch.equal(ExecutedNetwork(net, Execution())(x, c, cond), net(x, c, cond))


@torch.no_grad()
def test_channels_last_computes_the_same_function_in_nhwc():
    x, c, cond = _inputs()
    exact = _network()(x, c, cond)
    net = _network()
    wrapped = ExecutedNetwork(net, Execution(channels_last=True))
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    out = wrapped(x, c, cond)
    assert out.is_contiguous() and out.dtype == torch.float32
    # the same sums in another order: float32 rounding only
    torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-5)
    # and its weights are stored as the same tensors by name
    reference = _network().state_dict()
    assert net.state_dict().keys() == reference.keys()
    assert all(torch.equal(value, reference[key]) for key, value in net.state_dict().items())


@torch.no_grad()
def test_bf16_runs_under_autocast_and_returns_float32():
    x, c, cond = _inputs()
    exact = _network()(x, c, cond)
    net = _network()
    seen = []
    net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    out = ExecutedNetwork(net, Execution("bf16"))(x, c, cond)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    relative = float((out - exact).norm() / exact.norm())
    assert 2.0**-10 < relative < 2.0**-5  # bf16's rounding (tests/training/test_precision.py), not float32's
