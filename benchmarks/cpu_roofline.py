"""Where the CPU training step's time goes, against the machine's own peak measured in the same run.

Sections (``--sections``, all by default; each prints a table and lands in the JSON):

- ``index``: the host-speed index, images/s of a fixed reference step (the mnist preset's network, float32,
  contiguous, eager, batch 64, fused AdamW), so that runs on different machines or under different load can be
  put side by side. :func:`host_speed_index` is the same measurement for other scripts (``mnist_demo.py``).
- ``peak``: float32 and bfloat16 GEMM GFLOP/s (2048^3, best of 5) and a 3x3 convolution (same in/out width,
  batch 128) forward and forward+backward at the demo's widths and resolutions (16ch@28, 32ch@14, 64ch@7) and
  at each candidate width of ``--widths`` (w@28, 2w@14, 4w@7), contiguous and channels-last. The float32 GEMM
  is "the peak" of the fractions below; rows that train in bf16 are compared with the bf16 GEMM instead.
- ``networks``: the demo network (``mnist`` preset, 1x28x28, 10 classes), each ``--candidate``, and the
  CIFAR-10 U-Net (``ddpm_cifar10`` network preset at 3x32x32 and ``--cifar-width``, on random data): forward
  and training FLOPs per image, training images/s of ``Trainer.step()`` (batch 32), achieved GFLOP/s
  (training FLOPs/img x img/s) and its fraction of the float32 GEMM peak.
- ``levers``: the mnist preset's step as it trains today (float32, contiguous, eager, batch 32, fused AdamW,
  multi-tensor EMA, ``--threads`` threads, no data workers) against one change at a time: batch 64 / 128,
  bf16 autocast, channels-last, ``torch.compile``, the foreach and for-loop AdamW, a per-tensor EMA loop,
  one thread fewer, one data worker; and each ``--combo``. Also the cost of the host sync of the step's
  non-finite check (one ``bool(tensor)``), microbenchmarked.
- ``profile``: ``torch.profiler`` over a few steps of the baseline and of the fastest combination: self CPU
  time split into convolution, normalisation, attention, matmul (linear layers), elementwise, inductor's
  compiled kernels, optimizer (AdamW and the gradient norm), EMA and other ops; "framework overhead" is the
  wall time minus the ops' self time (Python, autograd's engine, dispatch). The top 15 ops are printed.
- ``diffusers``: diffusers' ``UNet2DModel`` at the demo's scale (1x28x28, 3 levels 28/14/7, one block per
  level, attention at 7 like ours, ``num_class_embeds=10``), its width chosen so its forward FLOPs are closest
  to our demo network's. Both train with the same rectified-flow velocity MSE step on the same batches, fused
  AdamW, first in their four eager variants (fp32 / bf16 x contiguous / channels-last), then each in its default
  and its best eager variant with and without ``torch.compile``; the ratio of the two bests is reported.
  Skipped, with a message, when diffusers is not installed.
- ``sampling``: images/s of ``diffusekit.generate.generate`` with the mnist preset's sampling settings
  (multistep, 16 steps, guidance 3 in the interval (0.3, 3], class-major labels) at fp32, bf16, channels-last
  and compile, over ``--sample-n`` images, on a freshly initialised network (speed only) or ``--run DIR``.

Method: every timed section runs its configurations in interleaved rounds (round r runs every configuration
for a chunk of steps of at least 256 images, the order rotated each round, as ``train_throughput.py`` does), so
load from other processes hits all alike while each configuration is timed warm (a single step per turn would
time the caches that the previous configuration evicted); the median and best chunk are reported, and each
row's ratio to its section's baseline. FLOPs
are counted with ``FlopCounterMode`` on one image, with the CPU flash-attention formulas that torch's registry
lacks (``train_throughput.EXTRA_FLOP_FORMULAS``); training FLOPs are the forward+backward pass as counted, not
3 x forward. Compile time is the wall time of the warm-up steps minus as many steady-state steps, with an empty
inductor cache at the start of the run (unless ``TORCHINDUCTOR_CACHE_DIR`` is set): a graph compiled a second time
in the run, e.g. the same network and precision in two sections, is served from the cache. Thread
counts change between steps with ``torch.set_num_threads`` (the interop pool is set once, to ``--threads``;
an eager CPU step does not use it).

Usage::

    .venv/bin/python benchmarks/cpu_roofline.py                    # -> benchmarks/results/cpu_roofline.json
    .venv/bin/python benchmarks/cpu_roofline.py --append           # add a run to that file
    .venv/bin/python benchmarks/cpu_roofline.py --quick            # smoke run: 1 thread, tiny counts, no compile
    .venv/bin/python benchmarks/cpu_roofline.py --sections peak,levers --candidate c32=network.options.model_channels=32
    .venv/bin/python benchmarks/cpu_roofline.py --combo b128_bf16=optim.batch_size=128,run.precision=bf16

A full run takes about 15 minutes on 2 quiet cores (four ``torch.compile`` configurations at ~90 s each
among them). ``--quick`` writes no JSON unless ``--output`` is given and compiles nothing unless
``--compile on``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRESH_INDUCTOR_CACHE = None  # the temporary cache directory this run made (removed at its end)
if __name__ == "__main__" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # compile times are cold ones: inductor resolves its on-disk cache directory once, when torch is imported, and
    # would otherwise serve graphs compiled by earlier runs (a graph compiled twice within this run still hits it the
    # second time, as it would for a user)
    FRESH_INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="cpu-roofline-inductor-")

import torch  # noqa: E402 (after the inductor cache directory is set)
import torch.nn.functional as F  # noqa: E402 (after the inductor cache directory is set)
from torch import Tensor, nn  # noqa: E402 (after the inductor cache directory is set)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402 (after the inductor cache directory is set)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from op_profile import print_profile, profile_trainer  # noqa: E402
from train_throughput import (  # noqa: E402  (a sibling script, found through sys.path)
    EXTRA_FLOP_FORMULAS,
    count_call_flops,
    counted_gflop,
    rotation,
    save_run,
    versions,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUTPUT = RESULTS / "cpu_roofline.json"
SECTIONS = ("index", "peak", "networks", "levers", "profile", "diffusers", "sampling")
PRESET = "mnist"
IMAGE_SHAPE, NUM_CLASSES = (1, 28, 28), 10
DEMO_WIDTHS = ((16, 28), (32, 14), (64, 7))  # (channels, resolution) of the demo U-Net's three levels
CONV_BATCH = 128
REFERENCE_BATCH = 64  # the host-speed index's step
DEFAULT_COMBOS = ("b128_bf16=optim.batch_size=128,run.precision=bf16",
                  "b128_bf16_compile=optim.batch_size=128,run.precision=bf16,run.compile=true")
FULL = {"gemm_size": 2048, "gemm_repeats": 5, "conv_batch": CONV_BATCH, "conv_repeats": 5, "warmup": 2,
        "network_steps": 5, "lever_rounds": 8, "profile_steps": 4, "diffusers_eager_rounds": 4,
        "diffusers_rounds": 6, "sample_n": 1000, "sample_batch": 250, "index_seconds": 15.0, "sync_calls": 20_000,
        "chunk_images": 256}
QUICK = {"gemm_size": 512, "gemm_repeats": 2, "conv_batch": 16, "conv_repeats": 1, "warmup": 1,
         "network_steps": 2, "lever_rounds": 2, "profile_steps": 1, "diffusers_eager_rounds": 1,
         "diffusers_rounds": 1, "sample_n": 20, "sample_batch": 10, "index_seconds": 1.0, "sync_calls": 1_000,
         "chunk_images": 8}
QUICK_CIFAR_WIDTH = 16


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- options --------------------------------------------------------------------------------------------
def split_overrides(text: str) -> list[str]:
    """``"a=1,b=[1,2],c={x: 1, y: 2}"`` -> ``["a=1", "b=[1,2]", "c={x: 1, y: 2}"]``: commas inside brackets
    or braces belong to a value (YAML lists and mappings)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def parse_named(text: str, flag: str) -> tuple[str, list[str]]:
    """``NAME=override,override,...`` -> (NAME, overrides); a clear error when the form is wrong."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or "." in name or not rest.strip():
        raise ValueError(f"{flag} {text!r}: expected NAME=key=value,key=value,... "
                         f"e.g. {flag} c32=network.options.model_channels=32")
    overrides = split_overrides(rest)
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"{flag} {text!r}: {override!r} is not a key=value override")
    return name, overrides


# -- timing ---------------------------------------------------------------------------------------------
@dataclass
class Timed:
    """One configuration of an interleaved run: ``step()`` runs one step and returns the images it processed."""

    name: str
    step: Callable[[], int]
    threads: int | None = None  # torch.set_num_threads for this configuration's steps (None: the run's)
    info: dict[str, Any] = field(default_factory=dict)
    warmup_s: list[float] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    images: int = 0

    def summary(self) -> dict[str, Any]:
        median, best = statistics.median(self.times_s), min(self.times_s)
        compile_s = sum(self.warmup_s) - len(self.warmup_s) * median
        return {"name": self.name, **self.info, "images_per_step": self.images, "s_per_step_median": median,
                "s_per_step_best": best, "img_s_median": self.images / median, "img_s_best": self.images / best,
                "warmup_s": self.warmup_s, "first_steps_minus_steady_s": compile_s, "times_s": self.times_s}


def run_interleaved(configs: list[Timed], rounds: int, warmup: int, threads: int, label: str) -> None:
    """``warmup`` untimed then ``rounds`` timed rounds; round r runs one call (a chunk of steps, :func:`chunked`)
    of every configuration, the order rotated by r (:func:`train_throughput.rotation`)."""
    for r in range(warmup + rounds):
        line = []
        for config in rotation(configs, r):
            torch.set_num_threads(config.threads or threads)
            started = time.perf_counter()
            config.images = config.step()
            elapsed = time.perf_counter() - started
            torch.set_num_threads(threads)
            (config.warmup_s if r < warmup else config.times_s).append(elapsed)
            line.append(f"{config.name} {elapsed:.2f}s")
        _log(f"{label} round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''}: " + "; ".join(line))


def add_ratios(rows: list[dict[str, Any]], baseline: str) -> None:
    base = next((r for r in rows if r["name"] == baseline), None)
    for row in rows:
        if base is not None:
            row["ratio_to_baseline"] = row["img_s_median"] / base["img_s_median"]


# -- trainers -------------------------------------------------------------------------------------------
def make_trainer(overrides: Sequence[str], data, workdir: Path):
    from diffusekit.config import resolve
    from diffusekit.training.loop import Trainer

    return Trainer(resolve(PRESET, overrides=list(overrides)), data, tempfile.mkdtemp(dir=workdir))


def chunked(step: Callable[[], int], min_images: int) -> Callable[[], int]:
    """``step`` repeated until at least ``min_images`` images went through: one timed unit of a round. Switching
    configuration after every single step would time cold caches (oneDNN's JIT-compiled primitives, L2) rather
    than each configuration's steady state, and penalise the ones with more distinct kernels (bf16, compiled)."""
    def run() -> int:
        images = 0
        while images < min_images:
            images += step()
        return images
    return run


def trainer_step(trainer) -> Callable[[], int]:
    def step() -> int:
        trainer.step()
        if trainer.last_step_skipped:
            raise RuntimeError("a timed training step was skipped as non-finite")
        return trainer.config.optim.batch_size
    return step


def network_flops(network: nn.Module, image_shape: Sequence[int], num_classes: int) -> dict[str, float]:
    """Forward and forward+backward GFLOP of one image through ``network(x, noise_cond, cond)``."""
    kernel = next((p for p in network.parameters() if p.dim() == 4 and p.shape[-1] > 1), None)
    channels_last = kernel is not None and not kernel.is_contiguous()  # converted by run.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(1, *image_shape).contiguous(memory_format=fmt)
    noise_cond = torch.full((1,), 0.5)
    cond = {"labels": torch.zeros(1, dtype=torch.long)} if num_classes else None
    fwd, fwd_raw = count_call_flops(network, lambda: network(x, noise_cond, cond), train=False)
    train, _ = count_call_flops(network, lambda: network(x, noise_cond, cond), train=True)
    return {"gflop_fwd": fwd, "gflop_fwd_torch_raw": fwd_raw, "gflop_train": train}


def mnist_data():
    from diffusekit.data.builtin import mnist

    return mnist("train")


def random_data(image_shape: Sequence[int], num_classes: int, count: int = 512):
    """Random uint8 images with labels (the CIFAR-10 U-Net's speed does not depend on the pictures)."""
    import numpy as np

    from diffusekit.data.builtin import ImageArrays

    rng = np.random.default_rng(0)
    c, h, w = image_shape
    return ImageArrays(rng.integers(0, 256, (count, h, w, c), dtype=np.uint8),
                       rng.integers(0, num_classes, count), num_classes, tuple(str(i) for i in range(num_classes)))


# -- host-speed index -----------------------------------------------------------------------------------
def host_speed_index(seconds: float = 15.0, threads: int | None = None, data=None, warmup: int = 2) -> float:
    """Images/s (median step) of the reference training step: the mnist preset's network, float32,
    contiguous, eager, batch 64, fused AdamW, run for about ``seconds`` after ``warmup`` steps (at least 3
    timed steps) with ``threads`` threads (default: torch's current setting, restored afterwards)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="host-speed-") as workdir:
            trainer = make_trainer([f"optim.batch_size={REFERENCE_BATCH}", "run.precision=fp32",
                                    "run.channels_last=false", "run.compile=false", "data.workers=0"],
                                   data if data is not None else mnist_data(), Path(workdir))
            for _ in range(warmup):
                trainer.step()
            times: list[float] = []
            began = time.perf_counter()
            while len(times) < 3 or time.perf_counter() - began < seconds:
                started = time.perf_counter()
                trainer.step()
                times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return REFERENCE_BATCH / statistics.median(times)


# -- peak -----------------------------------------------------------------------------------------------
def best_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernel for the shape on the first call
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def gemm_peak(size: int, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    seconds = best_time(lambda: torch.mm(a, b), repeats)
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "best_s": seconds,
            "gflops": 2 * size**3 / seconds / 1e9}


def conv_rate(channels: int, resolution: int, batch: int, dtype: torch.dtype, channels_last: bool,
              backward: bool, repeats: int) -> dict[str, Any]:
    """GFLOP/s of a 3x3 convolution ``channels -> channels`` at ``resolution`` (padding 1, with bias)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(dtype=dtype, memory_format=fmt)
    x = torch.randn(batch, channels, resolution, resolution).to(dtype).contiguous(memory_format=fmt)
    x.requires_grad_(backward)

    def run() -> None:
        if backward:
            conv.zero_grad(set_to_none=True)
            x.grad = None
            conv(x).sum().backward()
        else:
            with torch.no_grad():
                conv(x)

    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with counter:
        run()
    gflop, _ = counted_gflop(counter)
    seconds = best_time(run, repeats)
    return {"channels": channels, "resolution": resolution, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
            "memory_format": "channels_last" if channels_last else "contiguous",
            "pass": "fwd+bwd" if backward else "fwd", "gflop": gflop, "best_s": seconds, "gflops": gflop / seconds}


def section_peak(protocol: dict, widths: list[int]) -> dict[str, Any]:
    gemm = {name: gemm_peak(protocol["gemm_size"], dtype, protocol["gemm_repeats"])
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    shapes = list(DEMO_WIDTHS)
    for w in widths:
        shapes += [(w, 28), (2 * w, 14), (4 * w, 7)]
    shapes = list(dict.fromkeys(shapes))
    convs = []
    for channels, resolution in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                for backward in (False, True):
                    convs.append(conv_rate(channels, resolution, protocol["conv_batch"], dtype, channels_last,
                                           backward, protocol["conv_repeats"]))
    for row in convs:
        row["fraction_of_gemm"] = row["gflops"] / gemm[row["dtype"].replace("bfloat16", "bf16")
                                                       .replace("float32", "fp32")]["gflops"]
    print("\n## Peak (same run)\n")
    for name, g in gemm.items():
        print(f"GEMM {g['size']}^3 {name}: {g['gflops']:.1f} GFLOP/s (best of {protocol['gemm_repeats']})")
    print(f"\n3x3 conv, batch {protocol['conv_batch']}: GFLOP/s (fraction of the same dtype's GEMM)\n")
    print("| channels@res | dtype | format | fwd | fwd+bwd |")
    print("|---|---|---|---:|---:|")
    for i in range(0, len(convs), 2):
        fwd, both = convs[i], convs[i + 1]
        print(f"| {fwd['channels']}@{fwd['resolution']} | {fwd['dtype']} | {fwd['memory_format']} | "
              f"{fwd['gflops']:.1f} ({fwd['fraction_of_gemm']:.0%}) | {both['gflops']:.1f} "
              f"({both['fraction_of_gemm']:.0%}) |")
    return {"gemm": gemm, "conv": convs, "peak_gflops": {k: v["gflops"] for k, v in gemm.items()},
            "peak_used": "fp32 GEMM for float32 rows, bf16 GEMM for bf16 rows"}


def fraction(gflops: float, peak: dict | None, precision: str = "fp32") -> float | None:
    if not peak:
        return None
    return gflops / peak["peak_gflops"]["bf16" if precision == "bf16" else "fp32"]


# -- networks -------------------------------------------------------------------------------------------
def section_networks(protocol: dict, args, data, workdir: Path, peak: dict | None) -> dict[str, Any]:
    cifar_width = args.cifar_width or (QUICK_CIFAR_WIDTH if args.quick else 64)
    cifar_shape = (3, 32, 32)
    specs = [("demo (mnist preset)", [], data, IMAGE_SHAPE)]
    specs += [(name, overrides, data, IMAGE_SHAPE) for name, overrides in args.candidates]
    specs.append((f"cifar10 U-Net (ddpm_cifar10, width {cifar_width})",
                  ["network.preset=ddpm_cifar10", f"network.options={{model_channels: {cifar_width}}}"],
                  random_data(cifar_shape, NUM_CLASSES), cifar_shape))
    configs = []
    for name, overrides, arrays, shape in specs:
        trainer = make_trainer(overrides, arrays, workdir)
        flops = network_flops(trainer.network, shape, trainer.num_classes)
        params = sum(p.numel() for p in trainer.network.parameters())
        step = chunked(trainer_step(trainer), protocol["chunk_images"])
        configs.append(Timed(name, step, info={"overrides": overrides, "image_shape": list(shape),
                                               "params": params, **flops}))
        _log(f"{name}: {params / 1e6:.2f}M params, {flops['gflop_fwd']:.3f} GFLOP/img forward, "
             f"{flops['gflop_train']:.3f} forward+backward")
    run_interleaved(configs, protocol["network_steps"], protocol["warmup"], args.threads, "networks")
    rows = []
    for config in configs:
        row = config.summary()
        row["achieved_gflops"] = row["gflop_train"] * row["img_s_median"]
        row["fraction_of_peak"] = fraction(row["achieved_gflops"], peak)
        rows.append(row)
    print("\n## Networks (Trainer.step(), float32, eager, batch 32)\n")
    print("| network | params | fwd GFLOP/img | train GFLOP/img | img/s median (best) | achieved GFLOP/s | "
          "of fp32 peak |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        frac = "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.1%}"
        print(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['gflop_fwd']:.3f} | {r['gflop_train']:.3f} | "
              f"{r['img_s_median']:.1f} ({r['img_s_best']:.1f}) | {r['achieved_gflops']:.1f} | {frac} |")
    return {"rows": rows}


# -- levers ---------------------------------------------------------------------------------------------
@torch.no_grad()
def ema_update_per_tensor(ema, model: nn.Module, cur_nimg: int, batch: int) -> None:
    """The EMA update as a Python loop, one lerp (one kernel launch) per tensor: the "off" row of the
    multi-tensor EMA lever; the same arithmetic as ``EMA.update``."""
    beta = ema.beta(cur_nimg, batch)
    for averaged, current in zip(ema.model.parameters(), model.parameters(), strict=True):
        averaged.lerp_(current.detach(), 1 - beta)
    for averaged, current in zip(ema.model.buffers(), model.buffers(), strict=True):
        averaged.copy_(current)


@dataclass(frozen=True)
class Lever:
    name: str
    overrides: tuple[str, ...] = ()
    optimizer: str | None = None  # make_optimizer's implementation; None: the trainer's (fused)
    ema_loop: bool = False
    threads: int | None = None


def levers(args) -> list[Lever]:
    from diffusekit.config import resolve

    rows = [Lever("baseline"), Lever("batch 64", ("optim.batch_size=64",)),
            Lever("batch 128", ("optim.batch_size=128",)), Lever("bf16", ("run.precision=bf16",)),
            Lever("channels_last", ("run.channels_last=true",))]
    if args.compile_on:
        rows.append(Lever("compile", ("run.compile=true",)))
    rows += [Lever("AdamW foreach", optimizer="foreach"), Lever("AdamW for-loop", optimizer="for-loop"),
             Lever("EMA per-tensor loop", ema_loop=True)]
    if args.threads > 1:
        rows.append(Lever(f"threads {args.threads - 1}", threads=args.threads - 1))
    rows.append(Lever("data.workers=1", ("data.workers=1",)))
    for name, overrides in args.combos:
        if resolve(PRESET, overrides=overrides).run.compile and not args.compile_on:
            _log(f"combo {name}: skipped (compiles; --compile is off)")
            continue
        rows.append(Lever(f"combo {name}", tuple(overrides)))
    return rows


def build_lever(lever: Lever, data, workdir: Path):
    import types

    from diffusekit.training.optim import make_optimizer

    trainer = make_trainer(lever.overrides, data, workdir)
    if lever.optimizer is not None:
        opt = trainer.config.optim
        trainer.optimizer = make_optimizer(trainer.network.parameters(), opt.optimizer, opt.lr,
                                           implementation=lever.optimizer)
    if lever.ema_loop:
        for ema in trainer.emas.emas.values():
            ema.update = types.MethodType(ema_update_per_tensor, ema)
    return trainer


def host_sync_cost(calls: int) -> dict[str, float]:
    """Microseconds per call of the step's non-finite check on the CPU: the two ``isfinite`` ops and the
    ``bool()`` that reads the result back to Python, and the ``bool()`` alone."""
    total, grad_norm = torch.tensor(0.5), torch.tensor(1.5)
    flag = torch.tensor(True)
    started = time.perf_counter()
    for _ in range(calls):
        bool(torch.isfinite(total) & torch.isfinite(grad_norm))
    check = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(calls):
        bool(flag)
    alone = time.perf_counter() - started
    return {"calls": calls, "check_us": check / calls * 1e6, "bool_us": alone / calls * 1e6}


def section_levers(protocol: dict, args, data, workdir: Path, peak: dict | None) -> tuple[dict[str, Any], dict]:
    """The levers' table, and the trainers (by row name) so that the profile can reuse compiled ones."""
    configs, trainers, flops_by_network = [], {}, {}
    for lever in levers(args):
        trainer = build_lever(lever, data, workdir)
        key = repr(trainer.config.network)
        if key not in flops_by_network:
            flops_by_network[key] = network_flops(trainer.network, IMAGE_SHAPE, trainer.num_classes)
        precision = trainer.execution.describe()["precision"]
        info = {"overrides": list(lever.overrides), "optimizer": lever.optimizer or "fused",
                "ema": "per-tensor loop" if lever.ema_loop else "foreach", "threads": lever.threads or args.threads,
                "precision": precision, "batch": trainer.config.optim.batch_size,
                "compile": trainer.config.run.compile, **flops_by_network[key]}
        step = chunked(trainer_step(trainer), protocol["chunk_images"])
        configs.append(Timed(lever.name, step, threads=lever.threads, info=info))
        trainers[lever.name] = trainer
    _log(f"levers: {len(configs)} configurations, {protocol['warmup']} warm-up + {protocol['lever_rounds']} rounds")
    run_interleaved(configs, protocol["lever_rounds"], protocol["warmup"], args.threads, "levers")
    rows = [c.summary() for c in configs]
    add_ratios(rows, "baseline")
    for row in rows:
        row["achieved_gflops"] = row["gflop_train"] * row["img_s_median"]
        row["fraction_of_peak"] = fraction(row["achieved_gflops"], peak, row["precision"])
        if row["compile"]:
            row["compile_s"] = row["first_steps_minus_steady_s"]
    sync = host_sync_cost(protocol["sync_calls"])
    print(f"\n## Levers (mnist preset's step; {protocol['lever_rounds']} interleaved rounds)\n")
    print("| configuration | batch | img/s median (best) | vs baseline | achieved GFLOP/s | of peak* | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        frac = "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.1%}"
        comp = f"{r['compile_s']:.0f}" if "compile_s" in r else "-"
        print(f"| {r['name']} | {r['batch']} | {r['img_s_median']:.1f} ({r['img_s_best']:.1f}) | "
              f"{r['ratio_to_baseline']:.2f}x | {r['achieved_gflops']:.1f} | {frac} | {comp} |")
    print("\n*peak: the fp32 GEMM, or the bf16 GEMM for bf16 rows.")
    print(f"Host sync of the non-finite check: {sync['check_us']:.2f} us per step (isfinite x2 + bool), "
          f"bool() alone {sync['bool_us']:.2f} us.")
    best = max(rows, key=lambda r: r["img_s_median"])
    return {"rows": rows, "host_sync": sync, "best": best["name"]}, trainers


# -- profile --------------------------------------------------------------------------------------------
def section_profile(protocol: dict, args, data, workdir: Path, lever_result: dict | None,
                    trainers: dict) -> dict[str, Any]:
    targets = ["baseline"]
    if lever_result is not None:
        combos = [r for r in lever_result["rows"] if r["name"].startswith("combo ")]
        if combos:
            targets.append(max(combos, key=lambda r: r["img_s_median"])["name"])
    elif args.combos:
        targets.append(f"combo {args.combos[0][0]}")
    results = {}
    by_name = {lever.name: lever for lever in levers(args)}
    for name in targets:
        trainer = trainers.get(name)
        fresh = trainer is None
        if fresh:
            if name not in by_name:
                continue
            trainer = build_lever(by_name[name], data, workdir)
        _log(f"profile: {name}")
        results[name] = profile_trainer(trainer, protocol["profile_steps"], protocol["warmup"] if fresh else 1)
        print_profile(name, results[name])
    return results


# -- diffusers ------------------------------------------------------------------------------------------
class DiffusersNet(nn.Module):
    """``UNet2DModel`` with our network's call signature ``(x, noise_cond, cond)``, class labels in ``cond``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, noise_cond: Tensor, cond=None) -> Tensor:
        labels = cond["labels"] if cond else None
        return self.net(x, noise_cond, class_labels=labels, return_dict=False)[0]


def diffusers_kwargs(width: int, channel_mult: Sequence[int] = (1, 2, 4)) -> dict[str, Any]:
    """``UNet2DModel`` at 1x28x28 in the demo's layout: levels 28/14/7 (the last down block does not
    downsample), one ResNet block per level (two on the way up, as ours), attention at 7 (the last down block,
    the first up block and the middle block), a class embedding for the 10 digits."""
    return dict(
        sample_size=IMAGE_SHAPE[1], in_channels=IMAGE_SHAPE[0], out_channels=IMAGE_SHAPE[0], layers_per_block=1,
        block_out_channels=tuple(width * m for m in channel_mult),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8 if width % 8 == 0 else 4, attention_head_dim=8, num_class_embeds=NUM_CLASSES,
    )


# ours is (1, 2, 4); one level narrower or wider lets the FLOP match land closer than the width step alone
DIFFUSERS_CHANNEL_MULTS = ((1, 2, 4), (1, 2, 3), (1, 3, 4), (1, 2, 2))


def build_diffusers(width: int, channel_mult: Sequence[int] = (1, 2, 4)) -> nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return DiffusersNet(UNet2DModel(**diffusers_kwargs(width, channel_mult)))


def match_diffusers_width(target_gflop: float) -> tuple[tuple[int, tuple[int, ...]], list[dict[str, Any]]]:
    """The (width, channel multipliers) whose forward FLOPs are closest in log ratio to ``target_gflop``: widths
    in multiples of 4 from 8 to 40, multipliers ours (1, 2, 4) or a level narrower or wider."""
    rows = []
    for channel_mult in DIFFUSERS_CHANNEL_MULTS:
        for width in range(8, 41, 4):
            with torch.device("meta"):  # shapes only: FLOPs and parameters without allocating weights
                net = build_diffusers(width, channel_mult)
            x = torch.zeros(1, *IMAGE_SHAPE, device="meta")
            counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
            with counter, torch.no_grad():
                net.eval()(x, torch.full((1,), 500.0, device="meta"),
                           {"labels": torch.zeros(1, dtype=torch.long, device="meta")})
            gflop, _ = counted_gflop(counter)
            rows.append({"width": width, "channel_mult": list(channel_mult),
                         "params": sum(p.numel() for p in net.parameters()), "gflop_fwd": gflop,
                         "flop_ratio": gflop / target_gflop})
    best = min(rows, key=lambda r: abs(math.log(r["flop_ratio"])))
    return (best["width"], tuple(best["channel_mult"])), rows


def flow_batches(data, count: int, batch: int) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``count`` batches (x0, labels, noise, t) of MNIST images, for the rectified-flow velocity step."""
    gen = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(count):
        index = torch.randint(0, len(data), (batch,), generator=gen)
        x0, labels = data.tensors(index.numpy())
        out.append((x0, labels, torch.randn(x0.shape, generator=gen), torch.rand(batch, generator=gen)))
    return out


def flow_step(executed: nn.Module, optimizer: torch.optim.Optimizer, batches, counter: list[int]) -> Callable[[], int]:
    """One training step per call, on the next batch: x_t = (1 - t) x0 + t noise, MSE to the velocity
    noise - x0, network conditioned on 1000 t and the labels; fused AdamW."""
    def step() -> int:
        x0, labels, noise, t = batches[counter[0] % len(batches)]
        counter[0] += 1
        tt = t.view(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * noise
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(executed(x_t, 1000 * t, {"labels": labels}), noise - x0)
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError("non-finite loss in the diffusers comparison")
        return x0.shape[0]
    return step


def section_diffusers(protocol: dict, args, data) -> dict[str, Any]:
    if importlib.util.find_spec("diffusers") is None:
        print("\n## diffusers at equal FLOPs: skipped (diffusers is not installed; make bench-deps)")
        return {"skipped": "diffusers not installed"}
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
    except Exception as exc:  # a broken install must not stop the rest of the benchmark
        print(f"\n## diffusers at equal FLOPs: skipped (import failed: {type(exc).__name__}: {exc})")
        return {"skipped": f"import failed: {exc}"}
    from diffusekit.config import resolve
    from diffusekit.models import ExecutedNetwork, Execution, build_network
    from diffusekit.training.optim import make_optimizer

    config = resolve(PRESET)
    torch.manual_seed(0)
    ours = build_network(config.network, IMAGE_SHAPE, NUM_CLASSES)
    ours_flops = network_flops(ours, IMAGE_SHAPE, NUM_CLASSES)
    (width, channel_mult), search = match_diffusers_width(ours_flops["gflop_fwd"])
    theirs = build_diffusers(width, channel_mult)
    theirs_flops = network_flops(theirs, IMAGE_SHAPE, NUM_CLASSES)
    ratio = theirs_flops["gflop_fwd"] / ours_flops["gflop_fwd"]
    params = {name: sum(p.numel() for p in net.parameters()) for name, net in (("ours", ours), ("diffusers", theirs))}
    layout = f"width {width}, channel_mult {channel_mult}"
    _log(f"diffusers: {layout} ({params['diffusers'] / 1e6:.2f}M params, ours {params['ours'] / 1e6:.2f}M), "
         f"forward FLOP ratio diffusers/ours {ratio:.3f}")
    batch = config.optim.batch_size
    batches = flow_batches(data, 8, batch)
    nets = {"ours": ours, "diffusers": theirs}

    def timed(family: str, execution: Execution) -> Timed:
        network = copy.deepcopy(nets[family]).train()
        executed = ExecutedNetwork(network, execution)
        optimizer = make_optimizer(network.parameters(), "adamw", config.optim.lr, implementation="fused")
        label = f"{family} {'bf16' if execution.precision == 'bf16' else 'fp32'}" \
                f"{' channels_last' if execution.channels_last else ''}{' compile' if execution.compile else ''}"
        return Timed(label, chunked(flow_step(executed, optimizer, batches, [0]), protocol["chunk_images"]),
                     info={"family": family, "execution": execution.describe()})

    eager = [Execution(p, cl) for p in ("fp32", "bf16") for cl in (False, True)]
    phase_a = [timed(family, ex) for family in nets for ex in eager]
    run_interleaved(phase_a, protocol["diffusers_eager_rounds"], protocol["warmup"], args.threads,
                    "diffusers eager variants")
    eager_rows = [c.summary() for c in phase_a]
    phase_b = []
    for family in nets:
        mine = [(c, r) for c, r in zip(phase_a, eager_rows, strict=True) if c.info["family"] == family]
        best_eager = max(mine, key=lambda cr: cr[1]["img_s_median"])[0].info["execution"]
        chosen = [Execution()]
        best = Execution(best_eager["precision"], best_eager["channels_last"])
        if best != Execution():
            chosen.append(best)
        if args.compile_on:
            chosen.append(Execution(best.precision, best.channels_last, True))
        phase_b += [timed(family, ex) for ex in chosen]
    run_interleaved(phase_b, protocol["diffusers_rounds"], protocol["warmup"], args.threads, "diffusers final")
    rows = [c.summary() for c in phase_b]
    result: dict[str, Any] = {"width": width, "channel_mult": list(channel_mult), "params": params,
                              "kwargs": {k: list(v) if isinstance(v, tuple) else v
                                         for k, v in diffusers_kwargs(width, channel_mult).items()},
                              "search": search,
                              "flops": {"ours": ours_flops, "diffusers": theirs_flops},
                              "flop_ratio_diffusers_over_ours": ratio, "batch": batch, "eager_variants": eager_rows,
                              "rows": rows}
    for family in nets:
        mine = [r for r in rows if r["family"] == family]
        result[f"{family}_default"] = mine[0]["img_s_median"]
        best = max(mine, key=lambda r: r["img_s_median"])
        result[f"{family}_best"] = best["img_s_median"]
        result[f"{family}_best_name"] = best["name"]
    result["ratio_of_bests"] = result["ours_best"] / result["diffusers_best"]
    result["ratio_of_defaults"] = result["ours_default"] / result["diffusers_default"]
    print(f"\n## diffusers UNet2DModel at equal FLOPs ({layout}, forward FLOPs diffusers/ours {ratio:.3f}), "
          f"batch {batch}\n")
    print("| configuration | img/s median (best) | compile s |")
    print("|---|---:|---:|")
    for r in eager_rows + rows:
        comp = f"{r['first_steps_minus_steady_s']:.0f}" if r["execution"]["compile"] else "-"
        print(f"| {r['name']}{'' if r in rows else ' (eager pass)'} | {r['img_s_median']:.1f} "
              f"({r['img_s_best']:.1f}) | {comp} |")
    print(f"\ndefaults: ours {result['ours_default']:.1f} vs diffusers {result['diffusers_default']:.1f} img/s "
          f"({result['ratio_of_defaults']:.2f}x); bests: ours {result['ours_best']:.1f} ({result['ours_best_name']}) "
          f"vs diffusers {result['diffusers_best']:.1f} ({result['diffusers_best_name']}) -> "
          f"{result['ratio_of_bests']:.2f}x (target >= 1.3x)")
    return result


# -- sampling -------------------------------------------------------------------------------------------
def section_sampling(protocol: dict, args) -> dict[str, Any]:
    from diffusekit.config import resolve
    from diffusekit.generate import class_major_labels, generate
    from diffusekit.guidance import GuidanceSettings
    from diffusekit.models import ExecutedNetwork, Execution, build_denoiser, build_network, load_model

    n = args.sample_n or protocol["sample_n"]
    chunk = min(protocol["sample_batch"], n)
    executions = {"fp32": Execution(), "bf16": Execution("bf16"), "channels_last": Execution(channels_last=True)}
    if args.compile_on:
        executions["compile"] = Execution(compile=True)
    base = None
    if args.run is None:
        config = resolve(PRESET)
        torch.manual_seed(0)
        base = build_network(config.network, IMAGE_SHAPE, NUM_CLASSES).eval()
    models = {}
    for name, execution in executions.items():
        if args.run is not None:
            loaded = load_model(args.run, execution=execution)
            models[name] = (loaded.denoiser, loaded.config, loaded.image_shape, loaded.num_classes)
        else:
            denoiser = build_denoiser(config, ExecutedNetwork(copy.deepcopy(base), execution))
            models[name] = (denoiser, config, IMAGE_SHAPE, NUM_CLASSES)

    def sampler_call(name: str, start: int, count: int) -> Callable[[], int]:
        denoiser, cfg, shape, classes = models[name]
        s = cfg.sample
        labels = class_major_labels(n, classes)[start:start + count] if classes else None
        guidance = GuidanceSettings.from_sample(s)
        if labels is None:
            guidance = guidance.unguided()

        def run() -> int:
            generate(denoiser, count, shape, labels=labels, num_classes=classes, sampler=s.sampler, steps=s.steps,
                     spacing=s.spacing, guidance=guidance, options=dict(s.options), seed=0, batch_size=chunk,
                     first=start)
            return count
        return run

    configs = {name: Timed(name, lambda: 0, info={"execution": ex.describe()}) for name, ex in executions.items()}
    starts = list(range(0, n, chunk))
    # warm-up: one full chunk each (the compiled network is compiled for the chunk's batch shapes), and the last
    # chunk's smaller batch where n is not a multiple of the chunk
    for name, timed in configs.items():
        for count in dict.fromkeys((chunk, n % chunk or chunk)):
            started = time.perf_counter()
            sampler_call(name, 0, count)()
            timed.warmup_s.append(time.perf_counter() - started)
            _log(f"sampling warm-up {name} ({count} images): {timed.warmup_s[-1]:.1f}s")
    order = list(configs)
    for r, start in enumerate(starts):
        count = min(chunk, n - start)
        line = []
        for name in rotation(order, r):
            started = time.perf_counter()
            sampler_call(name, start, count)()
            elapsed = time.perf_counter() - started
            configs[name].times_s.append(elapsed)
            line.append(f"{name} {elapsed:.1f}s")
        _log(f"sampling chunk {r + 1}/{len(starts)} ({count} images): " + "; ".join(line))
    rows = []
    for name, timed in configs.items():
        total = sum(timed.times_s)
        steady = statistics.median(timed.times_s)  # of full chunks but perhaps the last: close enough for compile_s
        rows.append({"name": name, **timed.info, "n": n, "chunk": chunk, "total_s": total, "img_s": n / total,
                     "chunk_s": timed.times_s, "warmup_s": timed.warmup_s,
                     "compile_s": timed.warmup_s[0] - steady if name == "compile" else None})
    base_rate = rows[0]["img_s"]
    for row in rows:
        row["ratio_to_fp32"] = row["img_s"] / base_rate
    s = models["fp32"][1].sample
    print(f"\n## Sampling ({s.sampler}, {s.steps} steps, guidance {s.guidance} in {s.guidance_interval}; n {n} "
          f"in chunks of {chunk}; {'--run ' + str(args.run) if args.run else 'fresh network'})\n")
    print("| configuration | img/s | vs fp32 | compile s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        comp = "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
        print(f"| {r['name']} | {r['img_s']:.1f} | {r['ratio_to_fp32']:.2f}x | {comp} |")
    return {"rows": rows, "n": n, "chunk": chunk, "source": str(args.run) if args.run else "fresh network"}


# -- main -----------------------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 thread, tiny counts, no compile")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2; --quick: 1)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds of the levers section (default 8; "
                        "--quick: 2); the networks and diffusers sections scale with it")
    parser.add_argument("--widths", default="", help="candidate model_channels for the conv peak rows, e.g. 24,32")
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=OVERRIDE,...",
                        help="a candidate network for the networks section (repeatable), "
                             "e.g. c32=network.options.model_channels=32")
    parser.add_argument("--combo", action="append", default=None, metavar="NAME=OVERRIDE,...",
                        help="a combination of levers (repeatable); default: "
                             + " and ".join(DEFAULT_COMBOS))
    parser.add_argument("--cifar-width", type=int, default=None, help="CIFAR-10 U-Net width (default 64; --quick 16)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="time torch.compile configurations (auto: on, off with --quick)")
    parser.add_argument("--sample-n", type=int, default=None, help="images per sampling configuration (default 1000)")
    parser.add_argument("--run", type=Path, default=None, help="sample this run's weights instead of a fresh network")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default results/cpu_roofline.json; --quick writes none unless given)")
    parser.add_argument("--append", action="store_true", help="add this run to the JSON's runs instead of replacing")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if not args.sections or unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.sample_n is not None and args.sample_n < 1:
        parser.error(f"--sample-n must be >= 1, got {args.sample_n}")
    if args.cifar_width is not None and args.cifar_width < 1:
        parser.error(f"--cifar-width must be >= 1, got {args.cifar_width}")
    try:
        args.widths = [int(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--widths must be comma-separated integers, got {args.widths!r}")
    if any(w < 1 for w in args.widths):
        parser.error("--widths must be positive")
    if args.run is not None and not args.run.exists():
        parser.error(f"--run {args.run}: no such run directory or checkpoint")
    try:
        args.candidates = [parse_named(text, "--candidate") for text in args.candidate]
        args.combos = [parse_named(text, "--combo") for text in (args.combo or DEFAULT_COMBOS)]
    except ValueError as e:
        parser.error(str(e))
    from diffusekit.config import ConfigError, resolve

    for flag, named in (("--candidate", args.candidates), ("--combo", args.combos)):
        for name, overrides in named:
            try:
                resolve(PRESET, overrides=overrides)
            except (ConfigError, ValueError) as e:
                parser.error(f"{flag} {name}: {e}")
    args.compile_on = args.compile == "on" or (args.compile == "auto" and not args.quick)
    if args.output is None and not args.quick:
        args.output = DEFAULT_OUTPUT
    return args


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if "index" in results:
        lines.append(f"host-speed index: {results['index']['img_s']:.1f} img/s (reference step, batch "
                     f"{REFERENCE_BATCH})")
    peak = results.get("peak")
    if peak:
        lines.append(f"peak: fp32 GEMM {peak['peak_gflops']['fp32']:.1f} GFLOP/s, bf16 GEMM "
                     f"{peak['peak_gflops']['bf16']:.1f} GFLOP/s")
    for row in results.get("networks", {}).get("rows", []):
        frac = "" if row["fraction_of_peak"] is None else f", {row['fraction_of_peak']:.1%} of fp32 peak"
        lines.append(f"{row['name']}: {row['img_s_median']:.1f} img/s, {row['achieved_gflops']:.1f} GFLOP/s{frac}")
    lv = results.get("levers")
    if lv:
        def described(row: dict[str, Any]) -> str:
            frac = "" if row["fraction_of_peak"] is None else f", {row['fraction_of_peak']:.1%} of peak"
            return (f"{row['name']} {row['img_s_median']:.1f} img/s = {row['ratio_to_baseline']:.2f}x "
                    f"({row['achieved_gflops']:.1f} GFLOP/s{frac})")

        base = next(r for r in lv["rows"] if r["name"] == "baseline")
        singles = [r for r in lv["rows"] if r["name"] != "baseline" and not r["name"].startswith("combo ")]
        combos = [r for r in lv["rows"] if r["name"].startswith("combo ")]
        lines.append(f"baseline step: {described(base)}")
        if singles:
            lines.append(f"best single lever: {described(max(singles, key=lambda r: r['img_s_median']))}")
        if combos:
            lines.append(f"best combination: {described(max(combos, key=lambda r: r['img_s_median']))}")
    prof = results.get("profile")
    if prof:
        for name, result in prof.items():
            top = sorted(result["split"].items(), key=lambda kv: -kv[1]["ms"])[:3]
            lines.append(f"profile {name}: " + ", ".join(f"{k} {v['fraction']:.0%}" for k, v in top))
    diff = results.get("diffusers")
    if diff and "ratio_of_bests" in diff:
        lines.append(f"diffusers at equal FLOPs (ratio {diff['flop_ratio_diffusers_over_ours']:.3f}): ours best / "
                     f"diffusers best = {diff['ratio_of_bests']:.2f}x (defaults {diff['ratio_of_defaults']:.2f}x)")
    elif diff:
        lines.append(f"diffusers: {diff.get('skipped')}")
    samp = results.get("sampling")
    if samp:
        lines.append("sampling img/s: " + ", ".join(f"{r['name']} {r['img_s']:.1f}" for r in samp["rows"]))
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    protocol = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
        scale = args.rounds / protocol["lever_rounds"]
        protocol["lever_rounds"] = args.rounds
        for key in ("network_steps", "diffusers_rounds", "diffusers_eager_rounds"):
            protocol[key] = max(1, round(protocol[key] * scale))
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
        interop = args.threads
    except RuntimeError:  # only possible before any parallel work; then the default stays
        interop = torch.get_num_interop_threads()
    inductor_cache = None
    if args.compile_on:
        from torch import _dynamo

        # None: the fresh one made before torch was imported; else the user's own
        inductor_cache = None if FRESH_INDUCTOR_CACHE else os.environ.get("TORCHINDUCTOR_CACHE_DIR")

        # several instances of the same network classes are compiled in one process: each counts as a recompile
        # of the same code, and past the default limit (8) dynamo would silently fall back to eager
        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
        if hasattr(_dynamo.config, "accumulated_cache_size_limit"):
            _dynamo.config.accumulated_cache_size_limit = max(
                _dynamo.config.accumulated_cache_size_limit, 512)
    from diffusekit.models import native_bf16

    began = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    _log(f"sections {','.join(args.sections)}; threads {args.threads} (interop {interop}); compile "
         f"{'on' if args.compile_on else 'off'}; native bf16 {native_bf16()}; load average {load_start}")
    if load_start[0] > 0.5 and not args.quick:
        _log("warning: the load average is above 0.5: other processes will slow every row down alike, but the "
             "peak fractions and absolute img/s are then low")
    data = mnist_data() if set(args.sections) & {"index", "networks", "levers", "profile", "diffusers"} else None
    results: dict[str, Any] = {}
    trainers: dict = {}
    with tempfile.TemporaryDirectory(prefix="cpu-roofline-") as tmp:
        workdir = Path(tmp)
        if "index" in args.sections:
            value = host_speed_index(protocol["index_seconds"], args.threads, data)
            results["index"] = {"img_s": value, "batch": REFERENCE_BATCH, "seconds": protocol["index_seconds"]}
            print(f"\n## Host-speed index: {value:.1f} img/s (mnist network, fp32, eager, batch {REFERENCE_BATCH}, "
                  "fused AdamW)")
        if "peak" in args.sections:
            results["peak"] = section_peak(protocol, args.widths)
        peak = results.get("peak")
        if "networks" in args.sections:
            results["networks"] = section_networks(protocol, args, data, workdir, peak)
        if "levers" in args.sections:
            results["levers"], trainers = section_levers(protocol, args, data, workdir, peak)
        if "profile" in args.sections:
            results["profile"] = section_profile(protocol, args, data, workdir, results.get("levers"), trainers)
        trainers.clear()
        if "diffusers" in args.sections:
            results["diffusers"] = section_diffusers(protocol, args, data)
        if "sampling" in args.sections:
            results["sampling"] = section_sampling(protocol, args)
    if FRESH_INDUCTOR_CACHE:
        shutil.rmtree(FRESH_INDUCTOR_CACHE, ignore_errors=True)
    runtime = time.perf_counter() - began
    lines = summary_lines(results)
    print("\n## Summary\n")
    for line in lines:
        print(f"- {line}")
    run = {"date": date, "runtime_s": runtime, "quick": args.quick, "threads": args.threads,
           "interop_threads": interop, "compile": args.compile_on, "protocol": protocol,
           "inductor_cache": None if not args.compile_on else inductor_cache or "fresh for this run",
           "cpu": cpu_name(), "cpu_count": os.cpu_count(), "native_bf16": native_bf16(),
           "load_average_start": load_start, "load_average_end": os.getloadavg(),
           "versions": versions(importlib.util.find_spec("diffusers") is not None),
           "candidates": {name: o for name, o in args.candidates}, "combos": {name: o for name, o in args.combos},
           "host_speed_index": results.get("index", {}).get("img_s"), "sections": results, "summary": lines}
    if args.output is not None:
        count = save_run(args.output, __doc__.split("\n\n")[0], run, args.append)
        print(f"\nWrote {args.output} (run {count}, {runtime:.0f}s).")
    else:
        print(f"\nNo JSON written (--quick without --output); {runtime:.0f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
