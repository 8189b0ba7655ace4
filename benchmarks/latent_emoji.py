"""Latent against pixel diffusion on 64x64 emoji: the autoencoders, the diffusion models, and their speed.

Four subcommands append rows to ``benchmarks/results/latent_emoji.json`` (a row replaces an earlier one of the
same kind and run) and print the table:

``autoencoder RUN...``
    Each autoencoder run's EMA reconstructs the 400 held-out emoji (``emoji`` test split, every 10th emoji, never
    trained on): PSNR (dB, images in [-1, 1]), L1, and rFID / rKID of the reconstructions against those 400
    images (standard Inception, pytorch-fid preprocessing; the floor of a 400-image FID is far above 0). Also
    the run's latent shape, regulariser (KL or VQ with its codebook usage), images trained and wall time.
``diffusion RUN...``
    400 samples of each diffusion run (its own sampler settings, seeds 0..399; a latent run decodes them with its
    autoencoder) scored against the same 400 held-out emoji: FID / KID, images trained, peak RSS from the run's
    log, and for a latent run its autoencoder's images and rFID (the floor under its FID) and the latent cache's
    size on disk.
``floor``
    The floor of a 400-image FID here: 400 training emoji (evenly spaced through the training split, never the
    held-out ones) against the 400 held-out emoji. No model can be expected to score below it.
``speed --autoencoder RUN``
    Training images/s of the three presets (``emoji-ae``, ``emoji-latent`` on that autoencoder, ``emoji`` in
    pixels; the autoencoder both before and after its GAN term starts), the time to encode the latent cache, and
    sampling images/s of a latent and a pixel model, timed in interleaved rounds in one process
    (each round runs every configuration for at least ``--chunk`` images, in a rotating order), so that host
    load hits all of them alike. Nothing else should run on the machine meanwhile.

The table converts each run's images into minutes on the measured machine (``speed`` row, 2 threads): the
budget a run used, whatever the load on the machine while it trained. A latent run's budget adds its
autoencoder's images (before and after the GAN start at their own speeds) and the latent cache's encoding.
``diffusion`` also writes a 4x8 grid of each run's first 32 samples, and ``floor`` one of 32 held-out emoji,
to ``benchmarks/results/latent_emoji/``.

Usage::

    .venv/bin/python benchmarks/latent_emoji.py autoencoder runs/emoji-ae runs/emoji-ae-f8
    .venv/bin/python benchmarks/latent_emoji.py diffusion runs/emoji-latent runs/emoji
    .venv/bin/python benchmarks/latent_emoji.py diffusion runs/emoji-latent --seed 400   # another sample set
    .venv/bin/python benchmarks/latent_emoji.py floor
    .venv/bin/python benchmarks/latent_emoji.py speed --autoencoder runs/emoji-ae --threads 2
    .venv/bin/python benchmarks/latent_emoji.py --table
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusekit.config import from_dict, resolve
from diffusekit.config.schema import Config
from diffusekit.data import load_training_data
from diffusekit.generate import generate, load_model
from diffusekit.images import make_grid, save_png
from diffusekit.latent import encode_dataset, load_autoencoder
from diffusekit.metrics.evaluate import SamplingSettings, feature_metrics, reference_for_data, sample_for_evaluation
from diffusekit.metrics.inception import get_extractor, quantize
from diffusekit.models import build_denoiser, load_checkpoint, resolve_checkpoint
from diffusekit.training.autoencoder import psnr
from diffusekit.training.make import make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "latent_emoji.json"
GRIDS = RESULTS.with_suffix("")
HELD_OUT = 400  # the emoji test split


def _held_out(config: Config):
    return load_training_data(dataclasses.replace(config.data, split="test", limit=None))


def _run_log(run: Path) -> dict:
    """Images trained, peak RSS, and the wall time as run (whatever else the machine ran meanwhile: the table's
    budgets come from the speed row instead) from the run's metrics log."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if "img_per_s" in r]
    return {"images": max(r["cur_nimg"] for r in train), "train_wall_s_as_run": max(r["elapsed_s"] for r in train),
            "train_img_per_s_logged": round(statistics.median(r["img_per_s"] for r in train), 2),
            "peak_rss_mb": max(r.get("peak_rss_mb", 0) for r in train)}


def _codebook(run: Path) -> dict:
    """A VQ run's last logged codebook usage (fraction of codes used in the log interval) and perplexity."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = next((r for r in reversed(records) if "ae/usage" in r), None)
    return {} if last is None else {"codebook_usage": round(last["ae/usage"], 4),
                                    "codebook_perplexity": round(last["ae/perplexity"], 1)}


def _stored_config(run: Path) -> Config:
    state = load_checkpoint(resolve_checkpoint(run))[3]
    return from_dict(Config, state["config"])


@torch.no_grad()
def autoencoder_row(run: Path, extractor) -> dict:
    config = _stored_config(run)
    autoencoder = load_autoencoder(run)
    held = _held_out(config)
    x, _ = held.tensors()
    reconstructions = torch.cat([autoencoder.decode(autoencoder.encode(x[i:i + 50])).float().cpu()
                                 for i in range(0, len(x), 50)])
    reference = reference_for_data(config.data, extractor, len(held), "test")
    values, _ = feature_metrics(quantize(reconstructions), ("fid", "kid"), reference, extractor)
    module = autoencoder.module
    return {"kind": "autoencoder", "run": str(run), "preset": config.network.preset,
            "latent_shape": list(autoencoder.latent_shape(held.item_shape)),
            "regulariser": "vq" if module.is_quantized else "kl",
            "perceptual": config.autoencoder.perceptual, "gan_weight": config.autoencoder.gan_weight,
            "gan_start_images": config.autoencoder.gan_start_images,
            "psnr": round(float(psnr(reconstructions, x).mean()), 3),
            "l1": round(float((reconstructions.clamp(-1, 1) - x).abs().mean()), 5),
            "rfid": round(values["fid"], 3), "rkid": round(values["kid"], 5), "n": len(held),
            **_codebook(run), **_run_log(run)}


def _save_grid(images: torch.Tensor, name: str) -> str:
    """The first 32 images as a 4x8 grid PNG under benchmarks/results/latent_emoji/."""
    path = save_png(make_grid(images[:32].float(), 8), GRIDS / f"{name}.png")
    return str(path.relative_to(RESULTS.parent.parent.parent))


@torch.no_grad()
def floor_row(extractor) -> dict:
    config = resolve("emoji")
    train = load_training_data(config.data)
    x, _ = train.tensors()
    picked = x[torch.linspace(0, len(x) - 1, HELD_OUT).round().long()]
    reference = reference_for_data(config.data, extractor, HELD_OUT, "test")
    values, _ = feature_metrics(quantize(picked), ("fid", "kid"), reference, extractor)
    held, _ = _held_out(config).tensors()
    return {"kind": "floor", "run": "train-vs-held-out", "fid": round(values["fid"], 3),
            "kid": round(values["kid"], 5), "n": HELD_OUT,
            "grid": _save_grid(held[::len(held) // 32], "held_out")}  # spread over the split, not its first flags


@torch.no_grad()
def diffusion_row(run: Path, extractor, rows: list[dict], seed: int = 0) -> dict:
    model = load_model(run)
    config = model.config
    settings = SamplingSettings.from_config(config.sample, seed=seed, batch_size=50)
    images, _, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, HELD_OUT, settings,
                                         decode=model.decode)
    reference = reference_for_data(config.data, extractor, HELD_OUT, "test")
    values, _ = feature_metrics(images, ("fid", "kid"), reference, extractor)
    row = {"kind": "diffusion", "run": str(run), "space": "latent" if model.latent else "pixel",
           "network_shape": list(model.image_shape), "parameters": sum(p.numel() for p in
                                                                         model.denoiser.network.parameters()),
           "sampler": settings.sampler, "steps": settings.steps, "fid": round(values["fid"], 3),
           "kid": round(values["kid"], 5), "n": HELD_OUT, "seed": seed,
           "grid": _save_grid(images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images,
                              run.name if seed == 0 else f"{run.name}-seed{seed}"), **_run_log(run)}
    if model.latent:
        ae_path = Path(model.latent["autoencoder"])
        ae_run = ae_path.parent.parent if ae_path.parent.name == "checkpoints" else ae_path
        ae = next((r for r in rows if r["kind"] == "autoencoder" and Path(r["run"]).resolve() == ae_run.resolve()),
                  None)
        autoencoder = load_autoencoder(ae_path, None if model.latent["weights"] == "diffusers"
                                       else model.latent["weights"])
        pixels = load_training_data(config.data)
        with tempfile.TemporaryDirectory() as tmp:  # a fresh cache, for its size on disk
            cache = encode_dataset(autoencoder, pixels, flip=config.latent.flip, batch=config.latent.encode_batch,
                                   root=tmp)
            cache_bytes = sum(f.stat().st_size for f in cache.path.iterdir())
            z, _ = cache.tensors()  # what the diffusion model saw: normalised by the stored latent statistics
            dims = (0, 2, 3)
            row["latent_channel_mean"] = [round(float(v), 3) for v in z.mean(dims)]
            row["latent_channel_std"] = [round(float(v), 3) for v in z.std(dims)]
        row.update({"autoencoder": str(ae_run), "cache_mb": round(cache_bytes / 2**20, 2), "cache_items": len(cache),
                    "autoencoder_rfid": ae and ae["rfid"], "autoencoder_images": ae and ae["images"],
                    "autoencoder_gan_start_images": ae and (ae["gan_start_images"] if ae["gan_weight"] else None)})
    return row


def speed(autoencoder: Path, rounds: int, chunk: int, threads: int) -> dict:
    """Interleaved training img/s of the three presets and sampling img/s of a latent and a pixel model."""
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp())
    configs = {"emoji-ae": resolve("emoji-ae"),
               "emoji-ae-gan": resolve("emoji-ae", overrides=["autoencoder.gan_start_images=0"]),
               "emoji-latent": resolve("emoji-latent", overrides=[f"latent.autoencoder={autoencoder}",
                                                                  f"latent.cache_dir={tmp / 'cache'}"]),
               "emoji": resolve("emoji")}
    pixels = load_training_data(configs["emoji"].data)
    trainers = {name: make_trainer(c, pixels, tmp / name) for name, c in configs.items()}
    for t in trainers.values():
        t.network.train()
        for _ in range(2):
            t.step()
    timings: dict[str, list[float]] = {n: [] for n in trainers}
    names = list(trainers)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = trainers[name]
            steps = max(1, chunk // t.config.optim.batch_size)
            started = time.perf_counter()
            for _ in range(steps):
                t.step()
            timings[name].append(steps * t.config.optim.batch_size / (time.perf_counter() - started))
    out = {"threads": threads, "rounds": rounds, "chunk_images": chunk,
           "train_img_per_s": {n: round(statistics.median(v), 2) for n, v in timings.items()}}
    # the latent cache of the whole training split (and its mirror images), encoded afresh: the best of three
    encodes = []
    for r in range(3):
        started = time.perf_counter()
        encode_dataset(trainers["emoji-latent"].autoencoder, pixels, flip=True, root=tmp / f"encode{r}")
        encodes.append(time.perf_counter() - started)
    out["cache_encode_s"] = round(min(encodes), 2)
    # sampling: the latent model (network + decoder) against the pixel one, same sampler and steps
    sample = configs["emoji-latent"].sample
    samplers = {}
    for name in ("emoji-latent", "emoji"):
        t = trainers[name]
        t.network.eval()
        shape = tuple(t.info["image_shape"])
        samplers[name] = (t, shape)
    sampled: dict[str, list[float]] = {n: [] for n in samplers}
    for r in range(rounds):
        for name in list(samplers)[r % 2:] + list(samplers)[:r % 2]:
            t, shape = samplers[name]
            denoiser = build_denoiser(t.config, t.network)
            started = time.perf_counter()
            generate(denoiser, 16, shape, sampler=sample.sampler, steps=sample.steps, options=sample.options,
                     decode=t.decode, batch_size=16)
            sampled[name].append(16 / (time.perf_counter() - started))
    out["sample_img_per_s"] = {n: round(statistics.median(v), 3) for n, v in sampled.items()}
    out["sample_steps"] = sample.steps
    return {"kind": "speed", "run": "speed", "autoencoder": str(autoencoder), **out}


def _key(row: dict) -> tuple:
    return row["kind"], row["run"], row.get("seed", 0)


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}


def budget_minutes(row: dict, speed_row: dict | None) -> float | None:
    """The minutes a diffusion run's images take on the measured machine (the speed row's training img/s), its
    autoencoder's images and the cache's encoding included for a latent run."""
    if speed_row is None:
        return None
    rate = speed_row["train_img_per_s"]
    seconds = row["images"] / rate["emoji-latent" if row["space"] == "latent" else "emoji"]
    if row["space"] == "latent":
        if row.get("autoencoder_images") is None:
            return None
        start = row["autoencoder_gan_start_images"]
        before = row["autoencoder_images"] if start is None else min(start, row["autoencoder_images"])
        seconds += before / rate["emoji-ae"] + (row["autoencoder_images"] - before) / rate["emoji-ae-gan"]
        seconds += speed_row["cache_encode_s"]
    return round(seconds / 60, 1)


def _name(row: dict) -> str:
    """The run directory's name, with the sample seed where it is not 0."""
    return Path(row["run"]).name + (f" (seed {row['seed']})" if row.get("seed") else "")


def _regulariser(row: dict) -> str:
    if "codebook_usage" not in row:
        return row["regulariser"]
    return f"{row['regulariser']} (usage {row['codebook_usage']:.0%}, perplexity {row['codebook_perplexity']:.0f})"


def _table(rows: list[dict]) -> str:
    lines = []
    speed_row = next((r for r in rows if r["kind"] == "speed"), None)
    aes = [r for r in rows if r["kind"] == "autoencoder"]
    if aes:
        lines += ["| autoencoder | latent | reg. | perceptual | GAN | images | PSNR | rFID | rKID |",
                  "|---|---|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {Path(r['run']).name} | {'x'.join(map(str, r['latent_shape']))} | {_regulariser(r)} | "
                  f"{r['perceptual']} | "
                  f"{r['gan_weight'] if r['gan_weight'] else 'off'} | {r['images']:,} | {r['psnr']:.2f} | "
                  f"{r['rfid']:.2f} | {r['rkid']:.4f} |" for r in aes]
    diffusion = [r for r in rows if r["kind"] == "diffusion"]
    if diffusion:
        lines += ["", "| diffusion | space | images | budget min (2 cores) | FID | KID | AE rFID | "
                  "cache MB | peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {_name(r)} | {r['space']} {'x'.join(map(str, r['network_shape']))}"
                  f"{' of ' + Path(r['autoencoder']).name if r.get('autoencoder') else ''} | {r['images']:,} | "
                  f"{budget_minutes(r, speed_row) or '-'} | {r['fid']:.2f} | {r['kid']:.4f} | "
                  f"{r.get('autoencoder_rfid') or '-'} | {r.get('cache_mb', '-')} | "
                  f"{r['peak_rss_mb']:.0f} |" for r in diffusion]
    for r in rows:
        if r["kind"] == "floor":
            lines += ["", f"floor: FID {r['fid']:.2f} (KID {r['kid']:.4f}) of {r['n']} training emoji against the "
                      f"{r['n']} held-out ones"]
    for r in rows:
        if r["kind"] == "speed":
            lines += ["", f"speed ({r['threads']} threads, {r['rounds']} interleaved rounds): training img/s "
                      f"{r['train_img_per_s']}; sampling img/s ({r['sample_steps']} steps) {r['sample_img_per_s']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("autoencoder", "diffusion", "floor", "speed"))
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--autoencoder", type=Path, help="speed: the autoencoder run the latent preset uses")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=256, help="speed: images per configuration and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0,
                        help="diffusion: the noise seed of the 400 samples (another seed: a second row per run, "
                             "the spread of FID over sample sets)")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    data = _load()
    if args.table or args.command is None:
        print(_table(data["rows"]))
        return 0
    torch.set_num_threads(args.threads)
    new = []
    if args.command == "speed":
        if args.autoencoder is None:
            parser.error("speed needs --autoencoder RUN")
        new.append(speed(args.autoencoder, args.rounds, args.chunk, args.threads))
    elif args.command == "floor":
        new.append(floor_row(get_extractor("inception")))
    else:
        extractor = get_extractor("inception")
        for run in args.runs:
            row = autoencoder_row(run, extractor) if args.command == "autoencoder" else \
                diffusion_row(run, extractor, data["rows"], args.seed)
            new.append(row)
            print(json.dumps(row), file=sys.stderr)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for row in new:
        row.update({"date": date, "torch": torch.__version__})
        data["rows"] = [r for r in data["rows"] if _key(r) != _key(row)] + [row]
    data["reference"] = ("the 400 emoji of diffusekit's emoji test split (every 10th Twemoji, never trained on), "
                         "64x64 on white; standard Inception, pytorch-fid preprocessing")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    print(_table(data["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
