"""What the autoencoder loss's perceptual terms and discriminator cost, per 64x64 image, against the autoencoder.

Each row is one forward + backward per image, timed in the same run and reported as a ratio to the
forward + backward of an autoencoder the size of LDM's f4 KL autoencoder (``autoencoder_kl_64x64x3``: ``ch`` 128,
``ch_mult`` (1, 2, 4), 2 residual blocks per level, single-head attention in the middle blocks, a 3-channel
latent at 16x16; Rombach et al. 2022), written out below as a stand-in:

- ``autoencoder``: encode, sample the posterior, decode, an L1 loss, backward into the weights (the reference);
- ``inception``: :class:`~diffusekit.metrics.perceptual.InceptionDistance` (default layers, up to ``mixed_7``),
  the real image without a graph, the reconstruction with one, backward into the reconstruction;
- ``ssim``: ``1 - SSIM`` (pytorch-msssim), backward into the reconstruction;
- ``discriminator``: the default :class:`~diffusekit.networks.discriminator.PatchDiscriminator`, one
  forward + backward into its weights and its input (the generator step runs it once on the reconstruction,
  the discriminator step twice, on real images and reconstructions).

MS-SSIM is not timed: pytorch-msssim's five scales need images above 160 pixels per side. Every case gets
``--warmup`` untimed rounds (TorchScript's profiling executor optimises the Inception graph on its second call,
and the first rounds of a fresh process run slow), then ``--rounds`` interleaved rounds (round r times each
case once, in a rotating order, so that load from other processes hits all alike); the median and the best time
per image are reported (on a loaded machine the short cases suffer most from time-slicing: the best time and
the FLOP ratio are the steadier figures).
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward, per image; the
TorchScript Inception's ops are counted as they run).

Usage::

    python benchmarks/perceptual_cost.py              # -> benchmarks/results/perceptual_cost.json
    python benchmarks/perceptual_cost.py --quick      # 1 warm-up, 2 rounds, no JSON unless --output
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import diffusekit
from diffusekit.metrics.perceptual import InceptionDistance, ssim_distance
from diffusekit.networks.discriminator import PatchDiscriminator

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "perceptual_cost.json"
RESOLUTION = 64


# -- LDM's f4 KL autoencoder (ldm/modules/diffusionmodules/model.py), dropout 0, as a stand-in ----------------------
def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class AttnBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm, self.qkv, self.proj = _norm(channels), nn.Conv2d(channels, 3 * channels, 1), \
            nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # LDM's asymmetric padding


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class KLAutoencoderF4(nn.Module):
    def __init__(self, ch: int = 128, ch_mult: tuple[int, ...] = (1, 2, 4), blocks: int = 2, z_channels: int = 3):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        enc: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
        cin = ch
        for level, width in enumerate(widths):
            for _ in range(blocks):
                enc.append(ResnetBlock(cin, width))
                cin = width
            if level < len(widths) - 1:
                enc.append(Downsample(width))
        enc += [ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin), _norm(cin), nn.SiLU(),
                nn.Conv2d(cin, 2 * z_channels, 3, padding=1), nn.Conv2d(2 * z_channels, 2 * z_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(z_channels, z_channels, 1), nn.Conv2d(z_channels, cin, 3, padding=1),
                                ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin)]
        for level in reversed(range(len(widths))):
            for _ in range(blocks + 1):
                dec.append(ResnetBlock(cin, widths[level]))
                cin = widths[level]
            if level > 0:
                dec.append(Upsample(cin))
        dec += [_norm(cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: Tensor) -> Tensor:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return self.decoder(mean + (0.5 * logvar).exp() * torch.randn_like(mean))


# -- the timed cases -------------------------------------------------------------------------------------------------
def build_cases(batch: int, device: torch.device) -> tuple[dict[str, Callable[[], None]], dict[str, int]]:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, RESOLUTION, RESOLUTION, generator=g) * 2 - 1).to(device)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g).to(device)).clamp(-1, 1)
    autoencoder = KLAutoencoderF4().to(device)
    inception = InceptionDistance().to(device)
    discriminator = PatchDiscriminator().to(device)

    def autoencoder_step() -> None:
        (autoencoder(x) - x).abs().mean().backward()
        autoencoder.zero_grad(set_to_none=True)

    def inception_step() -> None:
        inception(x, noisy.clone().requires_grad_()).mean().backward()

    def ssim_step() -> None:
        ssim_distance(x, noisy.clone().requires_grad_()).mean().backward()

    def discriminator_step() -> None:
        discriminator(noisy.clone().requires_grad_()).mean().backward()
        discriminator.zero_grad(set_to_none=True)

    cases = {"autoencoder": autoencoder_step, "inception": inception_step, "ssim": ssim_step,
             "discriminator": discriminator_step}
    params = {name: sum(p.numel() for p in module.parameters())
              for name, module in (("autoencoder", autoencoder), ("inception", inception),
                                   ("discriminator", discriminator))}
    return cases, params


def count_gflop(fn: Callable[[], None], batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cases: dict[str, Callable[[], None]], warmup: int, rounds: int, device: torch.device) -> dict:
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            cases[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 2 rounds; no JSON unless --output")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.rounds = 1, 2
    output = args.output or (None if args.quick else DEFAULT_OUTPUT)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    started, load_start = time.perf_counter(), os.getloadavg()
    cases, params = build_cases(args.batch, device)
    gflop = {name: count_gflop(fn, args.batch) for name, fn in cases.items()}
    times = measure(cases, args.warmup, args.rounds, device)
    median = {name: statistics.median(ts) / args.batch for name, ts in times.items()}
    best = {name: min(ts) / args.batch for name, ts in times.items()}
    rows = [{"case": name, "ms_per_image": 1e3 * median[name],
             "ratio_to_autoencoder": median[name] / median["autoencoder"],
             "best_ms_per_image": 1e3 * best[name], "best_ratio_to_autoencoder": best[name] / best["autoencoder"],
             "gflop_per_image": gflop[name], "gflop_ratio_to_autoencoder": gflop[name] / gflop["autoencoder"],
             "times_s": times[name]} for name in cases]

    print(f"parameters: {params}")
    print(f"64x64, batch {args.batch}, {args.device}, {args.threads} threads; forward + backward, median of "
          f"{args.rounds} rounds")
    print(f"{'case':<14} {'ms/img':>9} {'x autoenc.':>11} {'best ms/img':>12} {'x autoenc.':>11} {'GFLOP/img':>10} "
          f"{'x autoenc.':>11}")
    for row in rows:
        print(f"{row['case']:<14} {row['ms_per_image']:9.1f} {row['ratio_to_autoencoder']:11.3f} "
              f"{row['best_ms_per_image']:12.1f} {row['best_ratio_to_autoencoder']:11.3f} "
              f"{row['gflop_per_image']:10.2f} {row['gflop_ratio_to_autoencoder']:11.4f}")

    result = {"description": __doc__.split("\n\n")[0], "date": datetime.datetime.now(datetime.timezone.utc)
              .isoformat(timespec="seconds"), "runtime_s": time.perf_counter() - started, "resolution": RESOLUTION,
              "batch": args.batch, "device": args.device, "threads": args.threads, "warmup": args.warmup,
              "rounds": args.rounds, "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "params": params,
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "diffusekit": diffusekit.__version__, "platform": platform.platform()},
              "rows": rows}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {output}")
    return result


if __name__ == "__main__":
    main()
