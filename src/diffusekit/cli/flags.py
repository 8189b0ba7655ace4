"""What several commands share: guidance flags, ``--option KEY=VALUE`` sampler options, threads, progress bars."""

from __future__ import annotations

import argparse

import torch

from ..config import parse_override
from ..errors import UsageError
from ..guidance import GUIDANCE_SCHEDULES, THRESHOLDS, GuidanceSettings
from ..monitor import ProgressBar
from ..sampling import sample, timesteps

__all__ = ["add_guidance_arguments", "guidance_from_args", "parse_options", "check_sampling", "positive_int",
           "device_name", "set_threads", "progress_bar"]


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (counts, sizes, steps, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def device_name(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps), checked before any loading."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r}; write cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine (torch "
                                         f"{torch.__version__}); use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def set_threads(args) -> None:
    """``--threads N``: torch's CPU threads (unset: torch's own choice)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def progress_bar(total: int, quiet: bool, desc: str = "") -> ProgressBar:
    return ProgressBar(total, unit="img", desc=desc, disable=quiet)


def parse_options(texts: list[str]) -> dict:
    """``--option KEY=VALUE`` flags (value read as YAML, e.g. order=3) as sampler keyword arguments."""
    options = {}
    for text in texts:
        keys, value = parse_override(text)
        options[".".join(keys)] = value
    return options


def check_sampling(schedule, sampler: str, steps: int, spacing: str, options: dict) -> None:
    """Refuse a bad --sampler, --steps, --spacing or --option before any sampling: the sampling code's own checks
    of names and values, run on one pixel with a zero denoiser (no network call)."""
    try:
        ts = timesteps(schedule, steps, spacing)
        sample(lambda x, *args, **kwargs: torch.zeros_like(x), torch.zeros(1, 1, 1, 1), ts, schedule, sampler,
               generator=torch.Generator().manual_seed(0), **options)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def add_guidance_arguments(parser) -> None:
    """The guidance flags of `sample` and `eval` (docs/guidance.md); unset flags keep the run's sample.* keys."""
    g = parser.add_argument_group("guidance (docs/guidance.md; unset: the run's sample.* settings)")
    g.add_argument("--guidance", type=float, metavar="W",
                   help="guidance weight w (1 = none): classifier-free, or autoguidance with --autoguide")
    g.add_argument("--guidance-rescale", type=float, metavar="PHI",
                   help="CFG rescale phi in [0, 1] (Lin et al. 2023; 0.7 there): counters over-saturation at large w")
    g.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES,
                   help="w over the steps: constant, increasing (Muse: 1 -> w) or oscillating (Imagen Video)")
    g.add_argument("--guidance-low", type=float, metavar="W", help="oscillating: the low weight (default 1)")
    g.add_argument("--guidance-warmup", type=int, metavar="K",
                   help="oscillating: steps at the high weight before alternating (default 0)")
    g.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="guide only where LO < ve_sigma <= HI (Kynkaanniemi et al. 2024); elsewhere one network call")
    g.add_argument("--threshold", choices=THRESHOLDS,
                   help="x0_hat thresholding: static (clip to [-1, 1]) or dynamic (Imagen; for large w)")
    g.add_argument("--threshold-percentile", type=float, metavar="P", help="dynamic thresholding's p (default 0.995)")
    g.add_argument("--eps-scale", type=float, metavar="LAMBDA",
                   help="epsilon scaling (Ning et al. 2024): the predicted noise divided by LAMBDA at every step "
                        "(1 = off; the mnist preset uses 0.99)")
    g.add_argument("--autoguide", metavar="RUN_OR_CKPT",
                   help="autoguidance (EDM2): guide with this weaker model of the same task, e.g. an early checkpoint")
    g.add_argument("--autoguide-ema", metavar="NAME", help="the guide's EMA, or 'model' (default: its own default)")


def guidance_from_args(args, sample_config):
    """:class:`GuidanceSettings` from the run's sample section and the flags of :func:`add_guidance_arguments`."""
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    try:
        return GuidanceSettings.from_sample(sample_config, scale=args.guidance, rescale=args.guidance_rescale,
                                            weight_schedule=args.guidance_schedule, low=args.guidance_low,
                                            warmup=args.guidance_warmup, interval=interval, threshold=args.threshold,
                                            percentile=args.threshold_percentile, autoguide=args.autoguide,
                                            autoguide_ema=args.autoguide_ema, eps_scale=args.eps_scale)
    except ValueError as e:  # the guidance flags' own checks (GuidanceSettings)
        raise UsageError(str(e)) from None
