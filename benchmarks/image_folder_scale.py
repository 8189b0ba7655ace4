"""Image folders at scale: peak memory and read speed of the memory, stream and cache storages (docs/data.md).

For each folder size N, N synthetic 256x256 RGB images (smooth sums of a few random sinusoids per channel, a
fixed seed per image; JPEG quality 90 or PNG) are written into ``--dir``/``<format>-<N>`` once and reused. Each
storage is then measured in a fresh child process (so its peak memory is its own):

- ``load_s``: indexing the folder and, for memory, decoding every image; for cache, the first build (the cache
  is deleted first: this is the one-time preprocessing pass);
- ``reuse_s`` (cache): opening the built cache again;
- ``images_per_s``: a training-like read loop: batches of ``--batch`` random indices (without repeats, as an
  epoch of the sampler) through ``ImageArrays.tensors`` at ``--resolution``, ``--read`` images in all;
- ``peak_rss_mib``: ``ru_maxrss`` of the child (includes the cache's memory-mapped pages it touched: clean file
  pages the OS can drop) and ``anon_rss_mib``: its private memory at the end (``RssAnon``).

Memory storage is skipped where its estimate (N x R x R x 3 bytes held, R = ``--resolution``) exceeds
``--ram-limit-gib``, and the table says so. One thread per child (``torch.set_num_threads(1)``, one decoding
thread), so the numbers are per core.

Usage::

    .venv/bin/python benchmarks/image_folder_scale.py --sizes 1k,10k,100k --dir /data/folder-bench
    .venv/bin/python benchmarks/image_folder_scale.py --sizes 200 --read 256      # smoke run

Writes ``benchmarks/results/image_folder_scale.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("memory", "stream", "cache")
SOURCE = 256


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def synthetic_image(index: int) -> np.ndarray:
    """uint8 [256, 256, 3]: per channel, three sinusoids of random frequency, direction and phase (seed = index)."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:SOURCE, 0:SOURCE] / SOURCE
    image = np.zeros((SOURCE, SOURCE, 3))
    for c in range(3):
        for _ in range(3):
            fx, fy = rng.uniform(-6, 6, 2)
            image[..., c] += np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
    return np.clip(127.5 + 40 * image, 0, 255).astype(np.uint8)


def write_folder(directory: Path, n: int, fmt: str) -> Path:
    """The folder of ``n`` images (written where missing: an interrupted run resumes)."""
    from PIL import Image  # lazy: only the parent process writes images

    directory.mkdir(parents=True, exist_ok=True)
    suffix = "jpg" if fmt == "jpeg" else "png"
    for i in range(n):
        path = directory / f"{i:06d}.{suffix}"
        if not path.exists():
            tmp = path.with_name(f".{path.name}")
            Image.fromarray(synthetic_image(i)).save(tmp, "JPEG" if fmt == "jpeg" else "PNG",
                                                     **({"quality": 90} if fmt == "jpeg" else {}))
            os.replace(tmp, path)
    return directory


def anon_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(args) -> dict:
    """One storage's measurements (run in its own process)."""
    import torch

    from diffusekit.data.folder import image_folder

    torch.set_num_threads(1)
    cache = Path(args.dir) / f"cache-{args.format}-{args.n}"
    if args.mode == "cache":
        shutil.rmtree(cache, ignore_errors=True)
    options = {"storage": args.mode, "workers": 1, "cache_dir": str(cache)}
    folder = Path(args.dir) / f"{args.format}-{args.n}"
    started = time.perf_counter()
    data = image_folder(folder, args.resolution, 3, **options)
    result = {"load_s": round(time.perf_counter() - started, 3)}
    if args.mode == "cache":
        started = time.perf_counter()
        data = image_folder(folder, args.resolution, 3, **options)
        result["reuse_s"] = round(time.perf_counter() - started, 3)
    order = np.random.default_rng(0).permutation(len(data))
    total = min(args.read, len(data))
    started = time.perf_counter()
    for lo in range(0, total, args.batch):
        x, _ = data.tensors(order[lo:min(lo + args.batch, total)])
        assert x.shape[1:] == (3, args.resolution, args.resolution)
    seconds = time.perf_counter() - started
    result.update(images_per_s=round(total / seconds, 1), read_images=total,
                  peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  anon_rss_mib=round(anon_rss_mib() or float("nan"), 1))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1k,10k", help="folder sizes, e.g. 1k,10k,100k (default 1k,10k)")
    parser.add_argument("--dir", default="/tmp/diffusekit-folder-scale", help="where the folders are written")
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--read", type=int, default=6400, help="images read in the timed loop (at most N)")
    parser.add_argument("--ram-limit-gib", type=float, default=16.0, help="skip memory storage above this estimate")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "image_folder_scale.json"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.mode, args.n = args.child[0], int(args.child[1])
        print(json.dumps(child(args)))
        return 0
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in (parse_size(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        write_folder(Path(args.dir) / f"{args.format}-{n}", n, args.format)
        print(f"N={n}: folder ready in {time.perf_counter() - started:.1f} s", flush=True)
        for mode in args.modes.split(","):
            estimate = n * args.resolution ** 2 * 3 / 2 ** 30
            row = {"n": n, "mode": mode, "format": args.format, "resolution": args.resolution}
            if mode == "memory" and estimate > args.ram_limit_gib:
                row["skipped"] = f"estimated {estimate:.1f} GiB in RAM > --ram-limit-gib {args.ram_limit_gib}"
            else:
                command = [sys.executable, __file__, "--child", mode, str(n), "--dir", args.dir, "--format",
                           args.format, "--resolution", str(args.resolution), "--batch", str(args.batch),
                           "--read", str(args.read)]
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                if done.returncode:
                    raise SystemExit(f"{mode} at N={n} failed:\n{done.stderr}")
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            rows.append(row)
            print(row, flush=True)
    header = f"{'N':>7} {'mode':>7} {'load s':>8} {'reuse s':>8} {'img/s':>8} {'peak RSS MiB':>13} {'anon MiB':>9}"
    print(header)
    for r in rows:
        if "skipped" in r:
            print(f"{r['n']:>7} {r['mode']:>7}  skipped: {r['skipped']}")
        else:
            print(f"{r['n']:>7} {r['mode']:>7} {r['load_s']:>8} {r.get('reuse_s', '-'):>8} {r['images_per_s']:>8} "
                  f"{r['peak_rss_mib']:>13} {r['anon_rss_mib']:>9}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "image_folder_scale", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {k: getattr(args, k) for k in ("sizes", "format", "resolution", "batch", "read",
                                                   "ram_limit_gib")},
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
