"""How a network runs, separate from what it computes: precision, memory format and compilation.

The same three switches serve training (``run.precision``, ``run.channels_last``, ``run.compile``) and
sampling (``diffusekit sample --precision/--channels-last/--compile``), on the CPU and on CUDA alike:

- ``precision``: ``fp32``; ``bf16`` (autocast of the network's forward pass; the weights, the optimizer and the
  loss stay float32 and the network's output is returned as float32); or ``auto``: bf16 where the device
  computes it natively, float32 elsewhere. On the CPU, native means AVX512-BF16 or AMX-BF16 (x86) or the BF16
  extension (Arm); an AVX2 machine emulates bf16 and is usually slower with it than with float32. On CUDA it
  means compute capability 8.0 or newer (Ampere).
- ``channels_last``: the weights and the input in NHWC order, which oneDNN (CPU) and cuDNN (tensor cores)
  prefer for convolutions at some widths; whether it helps is measured per machine (``benchmarks/cpu_roofline.py``).
- ``compile``: ``torch.compile`` (inductor) of the network: fused elementwise kernels (GroupNorm, SiLU, the
  residual sums) around the convolutions. The first steps pay the compilation (97-119 s on 2 CPU cores for
  the demo's U-Net, cold cache; benchmarks/cpu_roofline.py).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "Execution", "native_bf16", "resolve_precision", "ExecutedNetwork"]

PRECISIONS = ("fp32", "bf16", "auto")
# /proc/cpuinfo flags of CPUs with native bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16; Arm's BF16 extension
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux); empty where there is no /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / Arm
            flags.update(value.split())
    return frozenset(flags)


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (so bf16 autocast can be faster than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        if platform.system() == "Darwin" and platform.machine() == "arm64":
            return False  # Apple's CPUs: no bf16 matrix units that oneDNN uses
        return bool(_cpu_flags() & _BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``fp32`` or ``bf16``: ``auto`` becomes bf16 where :func:`native_bf16` holds."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@dataclass(frozen=True)
class Execution:
    """How to run a network: ``precision`` (fp32 | bf16 | auto), ``channels_last`` and ``compile``."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")

    def describe(self, device: str | torch.device = "cpu") -> dict:
        """The settings as run on ``device`` (``auto`` resolved), for logs and result files."""
        return {"precision": resolve_precision(self.precision, device), "channels_last": self.channels_last,
                "compile": self.compile}


class ExecutedNetwork(nn.Module):
    """``network`` run as :class:`Execution` says, with the network's call signature ``(x, noise_cond, cond)``.

    The wrapped network is converted to channels-last in place (its ``state_dict`` keeps the same names and
    values; checkpoints store contiguous copies). The output is float32 whatever the autocast did, so the
    preconditioning and the loss around the network are computed in float32."""

    def __init__(self, network: nn.Module, execution: Execution, device: str | torch.device = "cpu"):
        super().__init__()
        self.device_type = torch.device(device).type
        self.bf16 = resolve_precision(execution.precision, device) == "bf16"
        self.memory_format = torch.channels_last if execution.channels_last else torch.contiguous_format
        if execution.channels_last:
            network.to(memory_format=torch.channels_last)
        self.network = network
        # kept out of the module tree: the compiled wrapper would list every weight a second time
        object.__setattr__(self, "_run", torch.compile(network) if execution.compile else network)

    def forward(self, x: Tensor, noise_cond: Tensor, cond=None) -> Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self._run(x, noise_cond, cond)
        return out.float().contiguous()
