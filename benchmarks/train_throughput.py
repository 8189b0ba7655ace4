"""Training-step throughput on CPU: diffusekit's U-Net against diffusers' ``UNet2DModel`` at equal FLOPs.

One training step is: forward, eps-prediction MSE loss, backward, AdamW (lr 2e-4, betas (0.9, 0.999),
weight decay 0). Everything is float32 on CPU with ``torch.set_num_threads(2)``, batch 32 of 3x32x32
images (noised with the DDPM linear schedule, t uniform in 0..999). Every model gets 2 warm-up steps, then
6 timed steps; the median and best step are reported as images per second. Forward-only throughput
(``eval()``, ``no_grad``) is measured the same way.

Configurations, per width (``full``: 128, ``half``: 64 channels at 32x32):

- ``diffusers``: ``UNet2DModel`` in the DDPM CIFAR-10 layout (Ho et al. 2020; 4 resolutions, 2 blocks each,
  widths ``w x (1, 2, 2, 2)``, dropout 0.1; ``AttnDownBlock2D`` attends at 16x16 and, as the up-block list
  mirrors the down-block list, ``AttnUpBlock2D`` at 8x8, plus the middle block at 4x4);
- ``ours preset``: ``UNet.from_preset("ddpm_cifar10", model_channels=w)``, the same layout with DDPM++
  blocks (resampling is done by residual blocks rather than single convs, so it has more FLOPs);
- ``ours FLOP-matched``: the configuration, among a small search over ``channel_mult`` and ``resample_proj``
  (resolutions, top width, blocks per resolution, attention at 16x16 and dropout kept), whose forward FLOPs
  are closest to diffusers' at that width.

- ``ours ... + conv resampling``: the preset with ``resample_block="conv"`` (DDPM's strided / nearest-upsampling
  3x3 convs instead of DDPM++ residual resampling blocks): diffusers' layout and widths, FLOPs within ~1%.

Our U-Net is timed both in the default (contiguous) and in the ``channels_last`` memory format; the faster
one is marked as used. All models of one width are timed in interleaved rounds (round r runs step r of
every model, in a rotating order), so that load from other processes hits all of them alike.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image (GFLOP = 2 x MACs). Its
registry has no formula for ``aten._scaled_dot_product_flash_attention_for_cpu``, the kernel that runs
diffusers' attention on CPU, so as shipped it counts diffusers' attention matmuls as zero (ours falls back
to the math kernel, whose ``bmm`` calls it does count). The counts here add that kernel (and its backward)
with the standard formula 2 x B x heads x L_q x L_kv x (d_qk + d_v); ``gflop_fwd_torch_raw`` in the JSON
is the uncorrected number. "Achieved GFLOP/s" is 3 x forward GFLOP/img x training img/s.

Usage::

    .venv/bin/python benchmarks/train_throughput.py            # -> benchmarks/results/train_throughput.json
    .venv/bin/python benchmarks/train_throughput.py --append   # add a run to that file (e.g. a repeat)
    .venv/bin/python benchmarks/train_throughput.py --quick    # smoke run: batch 8, 1 warm-up, 2 timed
    .venv/bin/python benchmarks/train_throughput.py --widths half --formats contiguous

``--quick`` writes no JSON unless ``--output`` is given. Without diffusers (``make bench-deps``) only our
U-Net is timed, matched against diffusers' FLOP counts stored below, and the output says so.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import diffusekit
from diffusekit.networks.unet import PRESETS, UNet

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUTPUT = RESULTS / "train_throughput.json"

THREADS = 2
FULL = {"batch": 32, "warmup": 2, "timed": 6}
QUICK = {"batch": 8, "warmup": 1, "timed": 2}
RESOLUTION, CHANNELS = 32, 3
LR, BETAS, WEIGHT_DECAY = 2e-4, (0.9, 0.999), 0.0
DDPM_T, BETA_START, BETA_END = 1000, 1e-4, 0.02  # DDPM's linear schedule, for the noised inputs
DATA_SEED, MODEL_SEED = 1234, 0
WIDTHS = {"full": 128, "half": 64}
FORMATS = ("contiguous", "channels_last")
PRESET = "ddpm_cifar10"
# FLOP-matching search for our U-Net: the DDPM layout (4 resolutions, top width w, 2 blocks, attention at 16)
# is kept; the widths of the two lowest resolutions and the skip projection of resampling blocks vary.
SEARCH_CHANNEL_MULT = ((1, 2, 2, 2), (1, 2, 2, 1), (1, 2, 1, 1))
SEARCH_RESAMPLE_PROJ = (True, False)
# diffusers' forward GFLOP/img (attention included), used as the FLOP target only when diffusers is missing;
# measured with diffusers 0.42.1 by this script.
DIFFUSERS_GFLOP_FALLBACK = {128: 11.953, 64: 3.029}


# -- models ---------------------------------------------------------------------------------------------
def diffusers_kwargs(width: int) -> dict[str, Any]:
    """UNet2DModel in the DDPM CIFAR-10 layout at ``width`` channels (128 = google/ddpm-cifar10-32)."""
    return dict(
        sample_size=RESOLUTION, in_channels=CHANNELS, out_channels=CHANNELS, layers_per_block=2,
        block_out_channels=(width, 2 * width, 2 * width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, act_fn="silu",
        time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, dropout=0.1,
    )


def ours_kwargs(width: int, **overrides: Any) -> dict[str, Any]:
    return {**PRESETS[PRESET], "model_channels": width, **overrides}


class DiffusersEps(nn.Module):
    """``UNet2DModel`` with our call signature: ``(x_t, t) -> eps_hat`` (integer timesteps)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t, return_dict=False)[0]


class OursEps(nn.Module):
    """Our ``UNet`` fed the DDPM timestep index as its float noise condition."""

    def __init__(self, net: UNet):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t.to(x.dtype))


def build_diffusers(width: int) -> nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(MODEL_SEED)
    return DiffusersEps(UNet2DModel(**diffusers_kwargs(width)))


def build_ours(kwargs: dict[str, Any]) -> nn.Module:
    torch.manual_seed(MODEL_SEED)
    return OursEps(UNet(**kwargs))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- FLOPs ----------------------------------------------------------------------------------------------
def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """q k^T and (softmax) v: 2 x batch x heads x L_q x L_kv x (d_qk + d_v)."""
    *batch, length_q, dim_qk = query_shape
    length_kv, dim_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length_q * length_kv * (dim_qk + dim_v)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """Four matmuls of the forward's sizes (grad q, k, v and of the scores), as torch counts other kernels."""
    return 2 * _sdpa_flops(query_shape, key_shape, value_shape)


def _missing_flop_formulas() -> dict:
    """FLOP formulas for the CPU attention kernels that FlopCounterMode's registry lacks (None if present)."""
    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward_flops)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = formula
    return mapping


EXTRA_FLOP_FORMULAS = _missing_flop_formulas()


def count_flops(model: nn.Module, memory_format: torch.memory_format, train: bool) -> tuple[float, float]:
    """(GFLOP, GFLOP without the added attention formulas) for one image: forward only (eval, no_grad) or
    forward + backward (train). Leaves the model's gradients empty."""
    x = torch.randn(1, CHANNELS, RESOLUTION, RESOLUTION).contiguous(memory_format=memory_format)
    t = torch.tensor([500])
    return count_call_flops(model, lambda: model(x, t), train)


def count_call_flops(model: nn.Module, forward: Callable[[], Tensor], train: bool) -> tuple[float, float]:
    """(GFLOP, GFLOP without the added attention formulas) of ``forward()`` (a call of ``model``), with
    ``model`` in eval mode under ``no_grad``, or (``train``) in train mode plus the backward pass of a mean
    square of the output. Leaves the model's mode as it was and its gradients empty."""
    was_training = model.training
    model.train(train)
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with counter, torch.set_grad_enabled(train):
        out = forward()
        if train:
            out.square().mean().backward()
    model.train(was_training)
    model.zero_grad(set_to_none=True)
    return counted_gflop(counter)


def counted_gflop(counter: FlopCounterMode) -> tuple[float, float]:
    """A finished counter's (GFLOP, GFLOP without the added attention formulas)."""
    counts = counter.get_flop_counts().get("Global", {})
    total = sum(counts.values())
    added = sum(v for k, v in counts.items() if k in EXTRA_FLOP_FORMULAS)
    return total / 1e9, (total - added) / 1e9


def match_flops(width: int, target_gflop: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Our configuration whose forward FLOPs are closest (in log ratio) to ``target_gflop``, and the search."""
    rows = []
    for channel_mult in SEARCH_CHANNEL_MULT:
        for resample_proj in SEARCH_RESAMPLE_PROJ:
            kwargs = ours_kwargs(width, channel_mult=channel_mult, resample_proj=resample_proj)
            with torch.device("meta"):  # shapes only: FLOPs and parameters without allocating weights
                model = OursEps(UNet(**kwargs))
            x = torch.randn(1, CHANNELS, RESOLUTION, RESOLUTION, device="meta")
            counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
            with counter, torch.no_grad():
                model.eval()(x, torch.zeros(1, device="meta"))
            gflop = counter.get_total_flops() / 1e9
            rows.append({"channel_mult": list(channel_mult), "resample_proj": resample_proj,
                         "params": count_params(model), "gflop_fwd": gflop, "flop_ratio": gflop / target_gflop})
    best = min(rows, key=lambda r: abs(math.log(r["flop_ratio"])))
    return ours_kwargs(width, channel_mult=tuple(best["channel_mult"]), resample_proj=best["resample_proj"]), rows


# -- timing ---------------------------------------------------------------------------------------------
@dataclass
class Entry:
    label: str
    family: str  # "diffusers" | "ours"
    role: str  # "peer" | "preset" | "matched"
    width: int
    memory_format: str
    config: dict[str, Any]
    model: nn.Module
    params: int = 0
    gflop_fwd: float = 0.0
    gflop_fwd_raw: float = 0.0
    gflop_train: float = 0.0
    optimizer: torch.optim.Optimizer | None = None
    train_s: list[float] = field(default_factory=list)
    forward_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def tag(self) -> str:
        """Short name for progress lines."""
        if self.family == "diffusers":
            return "diffusers"
        return f"{self.role}/{'CL' if self.memory_format == 'channels_last' else 'contig'}"

    @property
    def fmt(self) -> torch.memory_format:
        return torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format


def make_batches(count: int, batch: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``count`` batches (x_t, t, eps) of uniformly drawn DDPM timesteps and random 'images' in [-1, 1]."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    alpha_bar = torch.cumprod(1 - torch.linspace(BETA_START, BETA_END, DDPM_T, dtype=torch.float64), 0).float()
    batches = []
    for _ in range(count):
        x0 = torch.rand(batch, CHANNELS, RESOLUTION, RESOLUTION, generator=gen) * 2 - 1
        eps = torch.randn(batch, CHANNELS, RESOLUTION, RESOLUTION, generator=gen)
        t = torch.randint(0, DDPM_T, (batch,), generator=gen)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        batches.append((a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps))
    return batches


def train_step(entry: Entry, x_t: Tensor, t: Tensor, eps: Tensor) -> float:
    assert entry.optimizer is not None
    start = time.perf_counter()
    entry.optimizer.zero_grad(set_to_none=True)
    loss = F.mse_loss(entry.model(x_t, t), eps)
    loss.backward()
    entry.optimizer.step()
    elapsed = time.perf_counter() - start
    entry.losses.append(loss.item())
    if not math.isfinite(entry.losses[-1]):
        raise RuntimeError(f"{entry.label}: non-finite loss {entry.losses[-1]}")
    return elapsed


def forward_step(entry: Entry, x_t: Tensor, t: Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        entry.model(x_t, t)
    return time.perf_counter() - start


def rotation(items: list, r: int) -> list:
    """``items`` started at position ``r`` (mod its length): round r's order, so that no configuration is
    always the first (or last) after the others of a round."""
    shift = r % len(items)
    return items[shift:] + items[:shift]


def run_rounds(entries: list[Entry], batches, warmup: int, log: Callable[[str], None]) -> None:
    """Interleaved timing: round r runs batch r through every model (rotating the order each round), first
    training steps (train mode), then forward-only passes (eval mode)."""
    inputs = {fmt: [(x.contiguous(memory_format=fmt_obj), t, eps) for x, t, eps in batches]
              for fmt, fmt_obj in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last))}
    for phase in ("train", "forward"):
        for entry in entries:
            entry.model.train(phase == "train")
        for r in range(len(batches)):
            order = rotation(entries, r)
            times = []
            for entry in order:
                x_t, t, eps = inputs[entry.memory_format][r]
                if phase == "train":
                    elapsed = train_step(entry, x_t, t, eps)
                    timed = entry.train_s
                else:
                    elapsed = forward_step(entry, x_t, t)
                    timed = entry.forward_s
                if r >= warmup:
                    timed.append(elapsed)
                times.append(f"{entry.tag} {elapsed:.2f}s")
            log(f"{phase} round {r + 1}/{len(batches)}{' (warm-up)' if r < warmup else ''}: " + "; ".join(times))


# -- report ---------------------------------------------------------------------------------------------
def summarise(entry: Entry, batch: int) -> dict[str, Any]:
    train_med, train_best = statistics.median(entry.train_s), min(entry.train_s)
    fwd_med, fwd_best = statistics.median(entry.forward_s), min(entry.forward_s)
    return {
        "label": entry.label, "family": entry.family, "role": entry.role, "width": entry.width,
        "memory_format": entry.memory_format, "config": entry.config, "params": entry.params,
        "gflop_fwd": entry.gflop_fwd, "gflop_fwd_torch_raw": entry.gflop_fwd_raw,
        "gflop_train_counted": entry.gflop_train,
        "train_s_per_step_median": train_med, "train_s_per_step_best": train_best,
        "train_img_s_median": batch / train_med, "train_img_s_best": batch / train_best,
        "fwd_s_per_batch_median": fwd_med, "fwd_img_s_median": batch / fwd_med, "fwd_img_s_best": batch / fwd_best,
        "achieved_gflops_train": 3 * entry.gflop_fwd * batch / train_med,
        "achieved_gflops_fwd": entry.gflop_fwd * batch / fwd_med,
        "train_s": entry.train_s, "forward_s": entry.forward_s, "losses": entry.losses,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios ours / diffusers at the same width; mark the faster memory format of each of our configs."""
    for row in rows:
        peer = next((p for p in rows if p["family"] == "diffusers" and p["width"] == row["width"]), None)
        if row["family"] == "ours" and peer is not None:
            row["ratio"] = {
                "flops": row["gflop_fwd"] / peer["gflop_fwd"],
                "train_img_s": row["train_img_s_median"] / peer["train_img_s_median"],
                "fwd_img_s": row["fwd_img_s_median"] / peer["fwd_img_s_median"],
                "achieved_gflops": row["achieved_gflops_train"] / peer["achieved_gflops_train"],
            }
        if row["family"] == "ours":
            twins = [r for r in rows if r["family"] == "ours" and r["width"] == row["width"]
                     and r["role"] == row["role"]]
            row["used"] = row is min(twins, key=lambda r: r["train_s_per_step_median"])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| config | params | fwd GFLOP/img | train img/s median (best) | s/step | fwd img/s | "
             "achieved GFLOP/s | ratio ours/diffusers |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = r.get("ratio")
        ratio_text = "-" if ratio is None else (
            f"train {ratio['train_img_s']:.2f}, fwd {ratio['fwd_img_s']:.2f}, GFLOP/s {ratio['achieved_gflops']:.2f} "
            f"(FLOPs {ratio['flops']:.3f})")
        label = r["label"] + (" **(used)**" if r.get("used") and r["family"] == "ours" else "")
        lines.append(
            f"| {label} | {r['params'] / 1e6:.2f}M | {r['gflop_fwd']:.2f} | "
            f"{r['train_img_s_median']:.2f} ({r['train_img_s_best']:.2f}) | {r['train_s_per_step_median']:.2f} | "
            f"{r['fwd_img_s_median']:.1f} | {r['achieved_gflops_train']:.1f} | {ratio_text} |")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One line per width: ours (faster memory format) against diffusers at (near-)equal FLOPs."""
    out = []
    for width in sorted({r["width"] for r in rows}, reverse=True):
        ours = [r for r in rows if r["width"] == width and r.get("used") and "ratio" in r]
        for r in ours:
            rt = r["ratio"]
            if r["role"] in ("matched", "layout"):
                slower = rt["train_img_s"] < 1
                what = f"train img/s ratio {rt['train_img_s']:.2f} at FLOP ratio {rt['flops']:.3f}"
            else:
                slower = rt["achieved_gflops"] < 1
                what = f"achieved-GFLOP/s ratio {rt['achieved_gflops']:.2f} (FLOP ratio {rt['flops']:.3f})"
            change = (rt["train_img_s"] if r["role"] in ("matched", "layout") else rt["achieved_gflops"]) - 1
            out.append(f"width {width}, {r['label']}: {what} -> ours is {'SLOWER' if slower else 'not slower'} "
                       f"({change:+.1%})")
    return out


def versions(diffusers_ok: bool) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusekit": diffusekit.__version__,
            "diffusers": version("diffusers") if diffusers_ok else None, "platform": platform.platform()}


# -- main -----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, 1 warm-up, 2 timed steps")
    parser.add_argument("--widths", default="full,half", help="comma-separated: full (128), half (64)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="memory formats for our U-Net")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch.set_num_threads (default 2)")
    parser.add_argument("--no-peers", action="store_true", help="time our U-Net only")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/train_throughput.json; "
                        "--quick writes none unless given)")
    parser.add_argument("--append", action="store_true", help="add this run to the JSON's runs instead of replacing")
    args = parser.parse_args(argv)
    args.widths = [w.strip() for w in args.widths.split(",") if w.strip()]
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not args.widths or set(args.widths) - set(WIDTHS):
        parser.error(f"--widths must be a subset of {sorted(WIDTHS)}")
    if not args.formats or set(args.formats) - set(FORMATS):
        parser.error(f"--formats must be a subset of {list(FORMATS)}")
    if args.output is None and not args.quick:
        args.output = DEFAULT_OUTPUT
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    protocol = QUICK if args.quick else FULL
    batch, warmup, timed = protocol["batch"], protocol["warmup"], protocol["timed"]
    began = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f}s] {message}", file=sys.stderr, flush=True)

    diffusers_ok, peer_status = False, "skipped (--no-peers)"
    if not args.no_peers:
        if importlib.util.find_spec("diffusers") is None:
            peer_status = "not installed (make bench-deps); timing our U-Net only"
        else:
            try:
                import diffusers

                diffusers.utils.logging.set_verbosity_error()
                diffusers_ok, peer_status = True, "ok"
            except Exception as exc:  # a broken install must not stop our half of the benchmark
                peer_status = f"import failed ({type(exc).__name__}: {exc}); timing our U-Net only"
    log(f"diffusers: {peer_status}; threads {torch.get_num_threads()}; batch {batch}, {warmup} warm-up + "
        f"{timed} timed steps; load average {os.getloadavg()}")

    batches = make_batches(warmup + timed, batch)
    rows, searches, groups = [], {}, []
    for width_name in args.widths:
        width = WIDTHS[width_name]
        load_start = os.getloadavg()
        entries: list[Entry] = []
        if diffusers_ok:
            model = build_diffusers(width)
            entries.append(Entry(f"diffusers UNet2DModel DDPM ({width})", "diffusers", "peer", width, "contiguous",
                                 diffusers_kwargs(width), model))
        # Our configurations: the preset at this width and the one closest in FLOPs to diffusers.
        target_entry = entries[0] if entries else None
        if target_entry is not None:
            target_entry.gflop_fwd, target_entry.gflop_fwd_raw = count_flops(target_entry.model,
                                                                            torch.contiguous_format, False)
        target = target_entry.gflop_fwd if target_entry is not None else DIFFUSERS_GFLOP_FALLBACK[width]
        matched, search = match_flops(width, target)
        searches[width_name] = {"target_gflop_fwd": target, "target_source": "measured" if target_entry else
                                "stored (diffusers missing)", "candidates": search,
                                "chosen": {"channel_mult": list(matched["channel_mult"]),
                                           "resample_proj": matched["resample_proj"]}}
        configs = [("preset", f"ours {PRESET} ({width})", ours_kwargs(width))]
        if matched != ours_kwargs(width):
            mult = ",".join(map(str, matched["channel_mult"]))
            proj = "" if matched["resample_proj"] else ", no resample_proj"
            configs.append(("matched", f"ours FLOP-matched ({width}; mult {mult}{proj})", matched))
        # The same layout as diffusers: the preset with DDPM's single-conv resampling (FLOPs within ~1%).
        configs.append(("layout", f"ours {PRESET} + conv resampling ({width})",
                        ours_kwargs(width, resample_block="conv")))
        for role, label, kwargs in configs:
            base = build_ours(kwargs)
            for fmt in args.formats:
                model = copy.deepcopy(base)
                entries.append(Entry(f"{label}, {fmt}", "ours", role, width, fmt,
                                     {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}, model))
            del base
        for entry in entries:
            entry.model.to(memory_format=entry.fmt)
            entry.params = count_params(entry.model)
            if entry is not target_entry:
                entry.gflop_fwd, entry.gflop_fwd_raw = count_flops(entry.model, entry.fmt, False)
            entry.gflop_train, _ = count_flops(entry.model, entry.fmt, True)
            entry.optimizer = torch.optim.AdamW(entry.model.parameters(), lr=LR, betas=BETAS,
                                                weight_decay=WEIGHT_DECAY)
            log(f"{entry.label}: {entry.params / 1e6:.2f}M params, {entry.gflop_fwd:.3f} GFLOP/img forward "
                f"(torch's raw count {entry.gflop_fwd_raw:.3f}), {entry.gflop_train:.3f} forward+backward")
        run_rounds(entries, batches, warmup, log)
        group_rows = [summarise(entry, batch) for entry in entries]
        add_ratios(group_rows)
        rows.extend(group_rows)
        groups.append({"width": width, "load_average_start": load_start, "load_average_end": os.getloadavg()})
        del entries
        gc.collect()

    table = markdown_table(rows)
    lines = verdicts(rows)
    runtime = time.perf_counter() - began
    print()
    print(table)
    print()
    for line in lines:
        print(line)
    run = {
        "date": date, "runtime_s": runtime, "quick": args.quick, "threads": torch.get_num_threads(),
        "batch": batch, "warmup_steps": warmup, "timed_steps": timed, "versions": versions(diffusers_ok),
        "diffusers": peer_status, "cpu_count": os.cpu_count(), "groups": groups,
        "optimizer": {"name": "AdamW", "lr": LR, "betas": list(BETAS), "weight_decay": WEIGHT_DECAY},
        "flop_search": searches, "rows": rows, "table": table, "verdicts": lines,
    }
    if args.output is not None:
        count = save_run(args.output, __doc__.split("\n\n")[0], run, args.append, on_previous=compare_runs)
        print(f"\nWrote {args.output} (run {count}, {runtime:.0f}s).")
    else:
        print(f"\nNo JSON written (--quick without --output); {runtime:.0f}s.")
    return 0


def save_run(output: Path, description: str, run: dict[str, Any], append: bool,
             on_previous: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> int:
    """Write ``{"description", "runs": [run]}`` to ``output``; with ``append`` add ``run`` to the runs already
    there (``on_previous(previous_run, run)`` is called first). Returns the number of runs in the file."""
    report = {"description": description, "runs": []}
    if append and output.exists():
        report = json.loads(output.read_text())
        previous = report["runs"][-1] if report.get("runs") else None
        if previous is not None and on_previous is not None:
            on_previous(previous, run)
    report["runs"].append(run)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    return len(report["runs"])


def compare_runs(previous: dict[str, Any], current: dict[str, Any]) -> None:
    """Print how much each row's median training step moved since the previous run (contention check)."""
    before = {r["label"]: r for r in previous.get("rows", [])}
    print("\nAgainst the previous run in the file (median s/step, now / then):")
    for row in current["rows"]:
        old = before.get(row["label"])
        if old is not None and previous.get("batch") == current["batch"]:
            change = row["train_s_per_step_median"] / old["train_s_per_step_median"]
            flag = "  <- differs by >10%: likely contention" if abs(change - 1) > 0.1 else ""
            print(f"  {row['label']}: {change:.2f}{flag}")


if __name__ == "__main__":
    sys.exit(main())
