"""Video on moving MNIST: the preset, joint video + image training, the temporal mask, relative positions, speed.

Subcommands append rows to ``benchmarks/results/video_moving_mnist.json`` (a row replaces an earlier one of the
same kind and run) and print the table:

``train ARM --run-dir DIR``
    Trains one arm with ``diffusekit train`` (the ``moving-mnist`` preset with the arm's overrides). The arms of
    the comparison share everything but the named change, and the same number of training steps and batch rows
    (equal compute: an image group costs what a clip costs):

    - ``preset``: the preset as it is (20,000 training clips, joint, masked, relative positions, prediction);
    - ``video-only``: few clips (``--clips``, default 2,000), no image groups, no context frames;
    - ``joint``: the same clips, and a quarter of every batch groups of 8 independent frames from 60,000
      single-frame moving-MNIST images (every MNIST training digit at a random place), masked;
    - ``joint-unmasked``: ``joint`` with the groups fed as if they were clips (``video.mask_images: false``);
    - ``joint-absolute``: ``joint`` with absolute (sin-cos) temporal positions instead of the relative bias.
    - ``joint-text``: ``joint`` conditioned on captions instead of class labels (``data.captions``: "a
      handwritten three moving", ...; the image groups take the caption of the clip they replace).
``score RUN...``
    ``--n`` clips of each run (its own sampler settings, class-major labels, seeds 0..n-1) scored against ``--n``
    held-out clips of moving MNIST's test split (MNIST test digits, never trained on): frame FID / KID (standard
    Inception, every frame), the FVD proxy (Frechet distance of per-clip Inception statistics; NOT comparable to
    published FVD, which uses I3D), flicker against the data's, the digit classifier's identity agreement along
    each clip and the share of frames showing the requested digit, and motion smoothness from digit centroids
    against the held-out clips' own (same drawing, whole-pixel positions). Also the run's training clips, wall
    time, clips/s and peak memory from its log, and the sampling time per clip. A caption-conditioned run is
    asked for each digit by its first caption of ``--captions`` (``train``: a wording it was trained on;
    ``heldout``: a paraphrase it never saw), the digit then being the requested class.
``floor``
    The same metrics for ``--n`` training clips against the ``--n`` held-out clips: what real data scores.
``predict RUN``
    Prediction: the first 4 frames of ``--n`` held-out clips are given and 16 frames made (three windows of 8,
    each given the last 4 frames). Scored: the digit classifier's share of made frames (5-16) showing the given
    digit, and for frames 5-8, whose truth exists, the centroid distance to the true digit's (px) and the pixel
    MSE, beside two baselines on the same frames: repeating the last given frame, and the data's physics run on from
    the last given frame (its true velocity, reflected at the walls: near the floor, not a model).
    Writes a PNG and GIF of one clip per class. ``--history-guidance W``: the same with history guidance on the
    given frames (``diffusekit sample --history-guidance``), a row of its own.
``pictures``
    Held-out data as the samples are shown: 10 moving-MNIST test clips (a PNG of rows of frames and a GIF), and 4
    Cahn-Hilliard test clips of 8 frames 100 simulation frames apart (the phase separation coarsening).
``speed``
    Training clips/s (forward, backward and AdamW step, batch 16, with the preset's image groups and context
    channels) and sampling seconds per clip (the preset's 16 multistep steps, unguided, batch ``--sample-batch``) of
    the preset's network,
    beside the same U-Net run frame by frame without its temporal layers, timed in interleaved rounds in one
    process so that host load hits both alike; and the peak memory of a training step of each (a fresh process
    each, its resident-set growth over the imports).

Usage::

    .venv/bin/python benchmarks/video_moving_mnist.py train preset --run-dir runs/moving-mnist --threads 2
    .venv/bin/python benchmarks/video_moving_mnist.py train joint --run-dir runs/mm-joint --threads 1
    .venv/bin/python benchmarks/video_moving_mnist.py train joint --run-dir runs/mm-joint-s1 --seed 1 --images 8000
    .venv/bin/python benchmarks/video_moving_mnist.py score runs/moving-mnist runs/mm-joint --n 400
    .venv/bin/python benchmarks/video_moving_mnist.py floor --n 400
    .venv/bin/python benchmarks/video_moving_mnist.py predict runs/moving-mnist --n 100
    .venv/bin/python benchmarks/video_moving_mnist.py pictures
    .venv/bin/python benchmarks/video_moving_mnist.py speed --threads 2
    .venv/bin/python benchmarks/video_moving_mnist.py --table
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffusekit.config import resolve
from diffusekit.data.captions import captions_for
from diffusekit.generate import class_major_labels, load_model
from diffusekit.generate_video import generate_clips
from diffusekit.guidance import GuidanceSettings
from diffusekit.images import clip_frames, clip_grid, save_animation, save_png
from diffusekit.metrics import load_or_train_classifier
from diffusekit.metrics.inception import get_extractor
from diffusekit.metrics.motion import identity_agreement, motion_smoothness
from diffusekit.metrics.video import clip_frame_features, flicker, frame_fid, frame_kid, fvd_proxy
from diffusekit.monitor import read_metrics
from diffusekit.training.video import load_training_clips

RESULTS = Path(__file__).parent / "results" / "video_moving_mnist.json"
PICTURES = Path(__file__).parent / "results" / "video_moving_mnist"

_SMALL = ["video.context_frames=0", "eval.loss_every=null"]
_JOINT = ["video.image_fraction=0.25", "video.image_data=moving-mnist", "video.image_options={count: 60000}"]
ARMS = {
    "preset": [],
    "video-only": [*_SMALL, "video.image_fraction=0"],
    "joint": [*_SMALL, *_JOINT],
    "joint-unmasked": [*_SMALL, *_JOINT, "video.mask_images=false"],
    "joint-absolute": [*_SMALL, *_JOINT, "network.options={temporal_position: absolute}"],
    "joint-text": [*_SMALL, *_JOINT, "data.captions=true"],
}


def _rows() -> list[dict]:
    return json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []


def _save(row: dict) -> None:
    """Add ``row`` (replacing one of the same kind and run); a lock lets several subcommands run at once."""
    import fcntl

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in _rows() if (r["kind"], r.get("run")) != (row["kind"], row.get("run"))] + [row]
        RESULTS.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


def cmd_train(args) -> None:
    overrides = list(ARMS[args.arm])
    if args.arm != "preset":
        overrides.append(f"video.options.count={args.clips}")
    if args.images is not None:
        overrides.append(f"run.total_images={args.images}")
    if args.seed:
        overrides.append(f"run.seed={args.seed}")  # initial weights, data order, noise; the clips stay the same
    command = [sys.executable, "-m", "diffusekit", "train", "--preset", "moving-mnist", "--run-dir", args.run_dir,
               "--threads", str(args.threads), "--quiet"]
    for override in overrides:
        command += ["--set", override]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    with open(Path(args.run_dir) / "arm.json", "w") as f:
        json.dump({"arm": args.arm, "overrides": overrides}, f)


def _reference(n: int, split: str):
    """``n`` clips of a split of the preset's moving MNIST (first n: class-balanced enough at 400) and its data."""
    config = resolve("moving-mnist")
    clips = load_training_clips(config, split)
    return clips.subset(np.arange(min(n, len(clips))))


class Scorer:
    """The held-out clips' features and metrics computed once, every run scored against them."""

    def __init__(self, n: int):
        self.held_out = _reference(n, "test")
        self.digit_size = int(resolve("moving-mnist").video.options["digit_size"])
        self.extractor = get_extractor("inception")
        self.classifier, self.classifier_info = load_or_train_classifier("mnist")
        self.features = clip_frame_features(self.extractor, self.held_out.clips)
        positions = self.held_out.extras["positions"][:, :, 0].astype(np.float64)
        self.reference = {
            "flicker": flicker(self.held_out.clips),
            "motion": motion_smoothness(self.held_out.clips, positions=positions),
            "identity": identity_agreement(self.held_out.clips, self.classifier, self.digit_size,
                                           torch.from_numpy(self.held_out.labels)),
        }

    def score(self, clips, requested) -> dict:
        features = clip_frame_features(self.extractor, clips)
        kid = frame_kid(features, self.features)
        return {
            "frame_fid": frame_fid(features, self.features), "frame_kid": kid,
            "fvd_proxy": fvd_proxy(features, self.features),
            "flicker": flicker(clips), "flicker_ratio": flicker(clips) / self.reference["flicker"],
            "motion": motion_smoothness(clips),
            "identity": identity_agreement(clips, self.classifier, self.digit_size, requested),
        }


def _run_log(run: Path) -> dict:
    records = [r for r in read_metrics(run / "metrics.jsonl") if "elapsed_s" in r]  # the training records
    last = records[-1] if records else {}
    rates = [r["img_per_s"] for r in records if isinstance(r.get("img_per_s"), (int, float))]
    arm = json.loads((run / "arm.json").read_text()) if (run / "arm.json").exists() else {}
    return {"arm": arm.get("arm"), "overrides": arm.get("overrides"), "clips_trained": last.get("cur_nimg"),
            "train_elapsed_s": last.get("elapsed_s"), "train_clips_per_s": float(np.median(rates)) if rates else None,
            "peak_rss_mb": last.get("peak_rss_mb")}


def cmd_score(args) -> None:
    scorer = Scorer(args.n)
    for run in map(Path, args.runs):
        model = load_model(run)
        labels = class_major_labels(args.n, model.num_classes) if model.num_classes else None
        condition, requested, prompts = None, labels, None
        if model.config.data.captions:  # asked by caption: the first wording of each digit in the chosen split
            from diffusekit.text import TextEncoder

            prompts = [per_class[0] for per_class in captions_for("moving-mnist", args.captions)]
            encoding = TextEncoder().encode(prompts)
            requested = class_major_labels(args.n, len(prompts))
            condition = {"text": encoding.states[requested], "text_mask": encoding.mask[requested],
                         "text_pooled": encoding.pooled[requested]}
        s = model.config.sample
        started = time.perf_counter()
        clips = generate_clips(model.denoiser, args.n, model.image_shape, labels=labels, condition=condition,
                               num_classes=model.num_classes, sampler=s.sampler, steps=s.steps, spacing=s.spacing,
                               guidance=GuidanceSettings.from_sample(s) if requested is not None else 1.0,
                               options=s.options, seed=args.seed, batch_size=50,
                               frame_conditioning=model.config.video.context_frames > 0)
        seconds = time.perf_counter() - started
        label = str(run) + (f" (captions: {args.captions})" if prompts else "")
        row = {"kind": "score", "run": label, **_run_log(run), "n": args.n, "seed": args.seed,
               "sample_s_per_clip": seconds / args.n, "threads": torch.get_num_threads(),
               "steps": s.steps, "guidance": s.guidance, **scorer.score(clips, requested),
               "prompts": prompts, "caption_split": args.captions if prompts else None,
               "reference": scorer.reference, "date": datetime.date.today().isoformat()}
        PICTURES.mkdir(parents=True, exist_ok=True)
        name = run.name + (f"-{args.captions}" if prompts else "")
        save_png(clip_grid(clips[:10 * max(1, args.n // 10)][:: max(1, args.n // 10)]), PICTURES / f"{name}.png")
        save_animation(clip_frames(clips[:: max(1, args.n // 10)][:10], 5), PICTURES / f"{name}.gif")
        _save(row)
        print(json.dumps({k: v for k, v in row.items() if k != "reference"}), flush=True)


def _physics_centroids(clips, given_centroids: np.ndarray, k: int, digit_size: int) -> np.ndarray:
    """The centroids of frames k..F-1 extrapolated by the data's own physics from the last given frame: its drawn
    position moved by its true velocity, reflected at the walls, plus the digit's centroid offset in its box
    measured on the given frames (what remains is the rounding of the drawn positions)."""
    positions = clips.extras["positions"][:, :, 0].astype(np.float64)  # [N, F, 2] top-left as drawn
    limit = clips.item_shape[-1] - digit_size
    offset = np.nanmean(given_centroids - positions[:, :k], axis=1)
    position = positions[:, k - 1].copy()
    velocity = clips.extras["velocities"][:, k - 1, 0].astype(np.float64)  # the true velocity, not rounded
    out = []
    for _ in range(clips.frames - k):
        position = position + velocity
        low, high = position < 0, position > limit
        position = np.where(low, -position, np.where(high, 2 * limit - position, position))
        velocity = np.where(low | high, -velocity, velocity)
        out.append(position + offset)
    return np.stack(out, axis=1)


def cmd_predict(args) -> None:
    from diffusekit.metrics.motion import digit_centroids

    run = Path(args.run)
    model = load_model(run)
    held_out = _reference(args.n, "test")
    truth, labels = held_out.tensors()
    k, frames = 4, 16
    s = model.config.sample
    started = time.perf_counter()
    made = generate_clips(model.denoiser, len(truth), model.image_shape, frames=frames, context=truth,
                          context_frames=k, frame_conditioning=True, history_guidance=args.history_guidance,
                          labels=labels, num_classes=model.num_classes,
                          sampler=s.sampler, steps=s.steps, spacing=s.spacing,
                          guidance=GuidanceSettings.from_sample(s), options=s.options, seed=args.seed, batch_size=50)
    seconds = time.perf_counter() - started
    classifier, _ = load_or_train_classifier("mnist")
    digit_size = int(resolve("moving-mnist").video.options["digit_size"])
    identity = identity_agreement(made[:, :, k:], classifier, digit_size, labels)
    given_c = digit_centroids(truth[:, :, :k])
    true_c = digit_centroids(truth[:, :, k:])  # frames k..F-1 of the held-out clips: the truth
    made_c = digit_centroids(made[:, :, k:truth.shape[2]])
    baselines = {"model": made_c, "repeat_last": np.repeat(given_c[:, -1:], truth.shape[2] - k, 1),
                 "physics": _physics_centroids(held_out, given_c, k, digit_size)}
    centroid_error = {name: float(np.nanmean(np.linalg.norm(c - true_c, axis=-1))) for name, c in baselines.items()}
    future = truth[:, :, k:]
    mse = {"model": float((made[:, :, k:truth.shape[2]].clamp(-1, 1) - future).square().mean()),
           "repeat_last": float((truth[:, :, k - 1:k] - future).square().mean())}
    label = str(run) if args.history_guidance == 1.0 else f"{run} (history guidance {args.history_guidance:g})"
    row = {"kind": "predict", "run": label, "n": len(truth), "context_frames": k, "frames": frames,
           "history_guidance": args.history_guidance,
           "seed": args.seed, "identity_made_frames": identity, "centroid_error_px_frames_5_8": centroid_error,
           "pixel_mse_frames_5_8": mse, "sample_s_per_clip": seconds / len(truth),
           "date": datetime.date.today().isoformat()}
    _save(row)
    PICTURES.mkdir(parents=True, exist_ok=True)
    first_of_class = [int(np.flatnonzero(held_out.labels == c)[0]) for c in range(10) if (held_out.labels == c).any()]
    name = run.name if args.history_guidance == 1.0 else f"{run.name}-hg{args.history_guidance:g}"
    save_png(clip_grid(made[first_of_class]), PICTURES / f"{name}-predict.png")
    save_animation(clip_frames(made[first_of_class], 5), PICTURES / f"{name}-predict.gif")
    print(json.dumps(row, indent=1), flush=True)


def cmd_pictures(args) -> None:
    from diffusekit.data import load_clips

    PICTURES.mkdir(parents=True, exist_ok=True)
    held_out = _reference(1000, "test")
    first_of_class = [int(np.flatnonzero(held_out.labels == c)[0]) for c in range(10)]
    clips, _ = held_out.tensors(first_of_class)
    save_png(clip_grid(clips), PICTURES / "data.png")
    save_animation(clip_frames(clips, 5), PICTURES / "data.gif")
    cahn = load_clips("cahn-hilliard", "test", frames=8, frame_step=100, stride=400)
    clips, _ = cahn.tensors(np.arange(min(4, len(cahn))))
    save_png(clip_grid(clips), PICTURES / "cahn_hilliard.png")
    save_animation(clip_frames(clips, 4), PICTURES / "cahn_hilliard.gif", fps=2)
    print(f"wrote {PICTURES}/data.png, data.gif, cahn_hilliard.png, cahn_hilliard.gif")


def cmd_floor(args) -> None:
    scorer = Scorer(args.n)
    train = _reference(args.n, "train")
    row = {"kind": "floor", "run": "train-vs-test", "n": args.n,
           **scorer.score(train.clips, torch.from_numpy(train.labels)), "reference": scorer.reference,
           "date": datetime.date.today().isoformat()}
    _save(row)
    print(json.dumps(row), flush=True)


def _networks() -> dict:
    """The preset's network, and the same U-Net without temporal layers (frame by frame)."""
    from diffusekit.models import build_network, network_conditioning

    config = resolve("moving-mnist")
    shape = (1, config.video.frames, 32, 32)
    conditioning = network_conditioning(config, shape)
    video = build_network(config.network, shape, 10, **conditioning)
    frames_only = dict(config.network.options, temporal_resolutions=[])
    plain = build_network(type(config.network)(config.network.kind, config.network.preset, frames_only), shape, 10,
                          **conditioning)
    return {"space-time": video, "per-frame": plain}


def _train_step(network, optimizer, clips, labels):
    t = torch.rand(len(clips))
    given = torch.zeros(len(clips), clips.shape[2], dtype=torch.bool)
    given[: len(clips) // 4, :2] = True
    cond = {"labels": labels, "context": clips * given[:, None, :, None, None], "context_mask": given,
            "independent": torch.arange(len(clips)) >= len(clips) - len(clips) // 4}
    loss = (network(clips, t, cond) - clips).square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _memory_child(name: str, threads: int) -> None:
    import resource

    torch.set_num_threads(threads)
    network = _networks()[name]
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    clips, labels = torch.randn(16, 1, 8, 32, 32), torch.randint(0, 10, (16,))
    with open("/proc/self/statm") as f:  # the resident set now, in pages (the peak so far may be an import's)
        before_kb = int(f.read().split()[1]) * resource.getpagesize() / 1024
    for _ in range(3):
        _train_step(network, optimizer, clips, labels)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_growth_mb": (peak_kb - before_kb) / 1024}))


def cmd_speed(args) -> None:
    from diffusekit import parameterizations, schedules
    from diffusekit.denoiser import Denoiser
    from diffusekit.sampling import sample, timesteps

    torch.set_num_threads(args.threads)
    config = resolve("moving-mnist")
    networks = _networks()
    optimizers = {k: torch.optim.AdamW(n.parameters(), lr=1e-4) for k, n in networks.items()}
    clips, labels = torch.randn(16, 1, 8, 32, 32), torch.randint(0, 10, (16,))
    schedule = schedules.get(config.objective.schedule)
    parameterization = parameterizations.get(config.objective.parameterization)
    ts = timesteps(schedule, config.sample.steps, config.sample.spacing)
    train_s = {k: [] for k in networks}
    sample_s = {k: [] for k in networks}
    for name in networks:  # warm-up
        _train_step(networks[name], optimizers[name], clips, labels)
    for round_ in range(args.rounds):
        order = list(networks)[round_ % 2:] + list(networks)[:round_ % 2]
        for name in order:
            started = time.perf_counter()
            for _ in range(args.steps):
                _train_step(networks[name], optimizers[name], clips, labels)
            train_s[name].append((time.perf_counter() - started) / (args.steps * len(clips)))
            denoiser = Denoiser(networks[name].eval(), schedule, parameterization)
            noise = torch.randn(args.sample_batch, 1, 8, 32, 32)
            started = time.perf_counter()
            with torch.no_grad():
                sample(denoiser, noise, ts, schedule, config.sample.sampler,
                       cond={"labels": torch.arange(args.sample_batch) % 10}, **config.sample.options)
            sample_s[name].append((time.perf_counter() - started) / args.sample_batch)
            networks[name].train()
    memory = {}
    for name in networks:
        out = subprocess.run([sys.executable, __file__, "_memory", name, "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        memory[name] = json.loads(out.strip().splitlines()[-1])["peak_growth_mb"]
    row = {"kind": "speed", "run": f"speed-{args.threads}threads", "threads": args.threads, "rounds": args.rounds,
           "date": datetime.date.today().isoformat()}
    for name in networks:
        row[name] = {"parameters": sum(p.numel() for p in networks[name].parameters()),
                     "train_clips_per_s": 1 / float(np.median(train_s[name])),
                     "train_s_per_clip": float(np.median(train_s[name])),
                     "sample_s_per_clip": float(np.median(sample_s[name])),
                     "train_peak_growth_mb": memory[name]}
    row["space_time_over_per_frame"] = {
        "train_time": row["space-time"]["train_s_per_clip"] / row["per-frame"]["train_s_per_clip"],
        "sample_time": row["space-time"]["sample_s_per_clip"] / row["per-frame"]["sample_s_per_clip"]}
    _save(row)
    print(json.dumps(row, indent=1))


def _number(value, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def table() -> None:
    print(f"{'run':<28} {'arm':<15} {'clips':>7} {'frameFID':>8} {'FVDproxy':>9} {'agree':>6} {'asked':>6} "
          f"{'flick':>6} {'accel':>6} {'speedcv':>7} {'s/clip':>7}")
    for r in _rows():
        if r["kind"] == "predict":
            shown = r["identity_made_frames"]["requested_accuracy"]
            print(f"predict {r['run']}: frames 5-16 show the given digit {shown:.3f}; "
                  "centroid error frames 5-8 (px) " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                           r["centroid_error_px_frames_5_8"].items()))
            continue
        if r["kind"] == "speed":
            ratio = r["space_time_over_per_frame"]
            print(f"speed ({r['threads']} threads): " + "; ".join(
                f"{k}: {r[k]['train_clips_per_s']:.1f} training clips/s, {r[k]['sample_s_per_clip']:.3f} s per "
                f"sampled clip, +{r[k]['train_peak_growth_mb']:.0f} MB" for k in ("space-time", "per-frame"))
                + f"; time ratio train {ratio['train_time']:.2f}, sample {ratio['sample_time']:.2f}")
            continue
        ident, motion = r.get("identity", {}), r.get("motion", {})
        print(f"{r['run']:<28} {str(r.get('arm')):<15} {str(r.get('clips_trained')):>7} "
              f"{_number(r['frame_fid'], 8, 2)} {_number(r['fvd_proxy'], 9, 2)} "
              f"{_number(ident.get('agreement'), 6, 3)} "
              f"{_number(ident.get('requested_accuracy'), 6, 3)} {_number(r['flicker_ratio'], 6, 2)} "
              f"{_number(motion.get('acceleration'), 6, 2)} {_number(motion.get('speed_cv'), 7, 3)} "
              f"{_number(r.get('sample_s_per_clip'), 7, 3)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    sub = parser.add_subparsers(dest="command")
    t = sub.add_parser("train")
    t.add_argument("arm", choices=list(ARMS))
    t.add_argument("--run-dir", required=True)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--clips", type=int, default=2_000, help="training clips of the comparison arms")
    t.add_argument("--images", type=int, help="training clips seen (run.total_images; default: the preset's)")
    t.add_argument("--seed", type=int, default=0, help="the run's seed (run.seed): another draw of the same arm")
    s = sub.add_parser("score")
    s.add_argument("runs", nargs="+")
    s.add_argument("--captions", choices=("train", "heldout"), default="train",
                   help="caption-conditioned runs: ask with trained wordings or with held-out paraphrases")
    s.add_argument("--n", type=int, default=400)
    s.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("floor")
    f.add_argument("--n", type=int, default=400)
    r = sub.add_parser("predict")
    r.add_argument("run")
    r.add_argument("--n", type=int, default=100)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--history-guidance", type=float, default=1.0,
                   help="history guidance on the given frames (Song et al. 2025; 1 = none)")
    sub.add_parser("pictures")
    p = sub.add_parser("speed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="training steps per round and network")
    p.add_argument("--sample-batch", type=int, default=10, help="clips sampled per round and network")
    m = sub.add_parser("_memory")  # a child process of `speed`
    m.add_argument("name")
    m.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.command == "_memory":
        _memory_child(args.name, args.threads)
        return
    if args.command is None or args.table:
        table()
        return
    if args.command in ("pictures", "predict"):
        {"pictures": cmd_pictures, "predict": cmd_predict}[args.command](args)
        return
    {"train": cmd_train, "score": cmd_score, "floor": cmd_floor, "speed": cmd_speed}[args.command](args)
    table()


if __name__ == "__main__":
    main()
