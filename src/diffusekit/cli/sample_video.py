"""``diffusekit sample`` for a video model: clips as a grid of frames (.png), an animation (.gif, .mp4), a .npz
of float clips, or a directory of one GIF per clip; ``--frames`` and ``--context``/``--context-frames`` for
clips of another length and for prediction from given frames (:mod:`diffusekit.generate_video`)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data.transform import to_channels
from ..errors import BadFileError, UsageError
from ..generate_video import generate_clips
from ..images import clip_frames, clip_grid, save_animation, save_png
from ..metrics.stats import open_npz
from ..sampling import same_sampler
from .flags import check_sampling, guidance_from_args, parse_options, positive_int, progress_bar
from .prompts import text_condition

__all__ = ["add_video_arguments", "sample_clips", "read_context"]

_VIDEO_FILES = (".gif", ".mp4", ".webm", ".avi", ".mov")


def add_video_arguments(parser) -> None:
    parser.add_argument("--frames", type=positive_int, metavar="N",
                        help="video models: frames per clip (default: the trained length); with --context, clips "
                        "longer than the trained length are made window by window")
    parser.add_argument("--context", metavar="CLIP",
                        help="video models trained with video.context_frames: the given frames, from a .npz of "
                        "clips [N, C, F, H, W] in [-1, 1] (e.g. an earlier `sample --out X.npz`) or a .gif/.mp4 "
                        "(one clip); a single clip is continued --n times")
    parser.add_argument("--context-frames", type=positive_int, metavar="K",
                        help="with --context: how many leading frames of each context clip are given")
    parser.add_argument("--history-guidance", type=float, metavar="W",
                        help="with --context: guide towards the given frames, D(no frames) + W (D(frames) - "
                             "D(no frames)) (history guidance, Song et al. 2025; 1 = none, default)")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second of .gif/.mp4 outputs")


def read_context(path: str, clip_shape: tuple[int, int, int, int], n: int, k: int) -> torch.Tensor:
    """The context clips float [n, C, >= k, H, W] in [-1, 1] from ``path``; one clip is repeated n times."""
    channels, _, height, width = clip_shape
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise UsageError(f"--context {path}: no such file")
    if suffix == ".npz":
        with open_npz(path) as data:
            if "images" not in data.files:
                raise UsageError(f"--context {path} has no 'images' array (it holds {', '.join(data.files)}); give a "
                                 "`diffusekit sample --out X.npz` file of a video model")
            try:
                clips = torch.from_numpy(np.asarray(data["images"], dtype=np.float32))
            except (TypeError, ValueError) as e:
                raise BadFileError(f"--context {path}: 'images' must be a numeric array ({e})") from None
        if clips.ndim != 5:
            raise UsageError(f"--context {path}: expected clips [N, C, F, H, W], got an array of shape "
                             f"{list(clips.shape)} (images from an image model?)")
    elif suffix in _VIDEO_FILES:
        import imageio.v3 as iio  # lazy: imageio and ffmpeg load only when a video file is read

        try:
            frames = np.asarray(iio.imread(path, index=None))
        except (OSError, ValueError, RuntimeError) as e:
            raise BadFileError(f"--context {path}: cannot read it as a video ({str(e).splitlines()[0]})") from None
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
            raise BadFileError(f"--context {path}: expected 8-bit frames, got {frames.dtype} {list(frames.shape)}")
        if frames.ndim == 3:
            frames = frames[..., None]
        try:
            frames = to_channels(frames[..., :3], channels)  # RGBA video frames: the alpha is dropped
        except (UsageError, ValueError) as e:
            raise UsageError(f"--context {path}: {e}") from None
        clips = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    else:
        raise UsageError(f"--context {path}: give a .npz of clips or a video file ({', '.join(_VIDEO_FILES)})")
    if (clips.shape[1], *clips.shape[3:]) != (channels, height, width):
        raise UsageError(f"--context {path}: its frames are {clips.shape[1]}x{clips.shape[3]}x{clips.shape[4]}, the "
                         f"model's {channels}x{height}x{width}")
    if clips.shape[2] < k:
        raise UsageError(f"--context {path}: its clips have {clips.shape[2]} frames, fewer than --context-frames {k}")
    if len(clips) == 1:
        return clips.expand(n, -1, -1, -1, -1).clone()
    if len(clips) < n:
        raise UsageError(f"--context {path} holds {len(clips)} clips for --n {n}: give one clip or at least {n}")
    return clips[:n]


def _check_video_flags(args, model, frame_conditioning: bool) -> None:
    name = model.checkpoint
    if (args.context is None) != (args.context_frames is None):
        raise UsageError("--context and --context-frames go together: the clip and how many of its frames are given")
    if args.context is not None and not frame_conditioning:
        raise UsageError(f"--context: {name} was not trained for prediction (its video.context_frames is 0)")
    if args.history_guidance is not None and args.context is None:
        raise UsageError("--history-guidance guides towards given frames: give --context and --context-frames")
    if args.history_guidance is not None and not args.history_guidance >= 1.0:
        raise UsageError(f"--history-guidance must be >= 1 (1 = none), got {args.history_guidance}")
    for flag, used in (("--reject", args.reject), ("--low-res", args.low_res)):
        if used:
            raise UsageError(f"{flag} is for image models; {name} is {model.describe_kind()}")


def sample_clips(args, model, outs: list[Path], device, execution, labels) -> int:
    """The ``sample`` command for a video model (``labels``: per clip, or None)."""
    config = model.config
    frame_conditioning = config.video.context_frames > 0
    _check_video_flags(args, model, frame_conditioning)
    s = config.sample
    sampler = args.sampler or s.sampler
    options = dict(s.options) if same_sampler(sampler, s.sampler) else {}
    options.update(parse_options(args.option))
    condition, prompt_index = text_condition(args, model, None)  # a caption-conditioned run: --prompt
    guidance = guidance_from_args(args, s)
    if labels is None and prompt_index is None and guidance.autoguide is None:
        if args.guidance not in (None, 1.0):
            raise UsageError("--guidance: classifier-free guidance needs a class- or text-conditional model; an "
                             "unconditional one can be guided with --autoguide")
        guidance = guidance.unguided()
    steps, spacing = args.steps or s.steps, args.spacing or s.spacing
    check_sampling(model.denoiser.schedule, sampler, steps, spacing, options)
    context = None
    if args.context is not None:
        context = read_context(args.context, model.image_shape, args.n, args.context_frames)
    started = time.perf_counter()
    with progress_bar(args.n, args.quiet) as bar:
        try:
            clips = generate_clips(model.denoiser, args.n, model.image_shape, frames=args.frames, context=context,
                                   context_frames=args.context_frames or 0, frame_conditioning=frame_conditioning,
                                   history_guidance=args.history_guidance or 1.0, labels=labels,
                                   num_classes=model.num_classes, condition=condition,
                                   sampler=sampler, steps=steps,
                                   spacing=spacing, guidance=guidance, options=options, seed=args.seed,
                                   batch_size=args.batch_size, device=device, progress=bar.update)
        except ValueError as e:
            raise UsageError(str(e)) from None
    wall = time.perf_counter() - started
    meta = {"checkpoint": str(model.checkpoint), "cur_nimg": model.cur_nimg, "weights": model.weights,
            "sampler": sampler, "steps": steps, "guidance": guidance.scale, "guidance_settings": guidance.describe(),
            "seed": args.seed, "options": options, "execution": execution.describe(device),
            "frames": int(clips.shape[2]), "context": args.context, "context_frames": args.context_frames,
            "history_guidance": args.history_guidance,
            "prompts": args.prompt or None}
    for out in outs:  # a text run's .npz stores the prompt index as the label
        write_clips(out, clips, labels if prompt_index is None else prompt_index, meta, columns=args.columns,
                    fps=args.fps)
    summary = {"out": [str(o) for o in outs], "n": args.n, "frames": int(clips.shape[2]),
               "checkpoint": str(model.checkpoint), "weights": model.weights, "sampler": sampler, "steps": steps,
               "guidance": guidance.scale, "wall_s": round(wall, 2)}
    print(json.dumps(summary), file=sys.stderr)
    return 0


def write_clips(out: Path, clips: torch.Tensor, labels, meta: dict, columns: int | None = None,
                fps: float = 4.0) -> None:
    """One output of clips [N, C, F, H, W]: .png (a row of frames per clip), .gif/.mp4 (all clips playing in a grid
    of ``columns``), .npz (float clips, labels (-1: unconditional), metadata) or a directory of one GIF per clip."""
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".png":
        save_png(clip_grid(clips), out)
    elif suffix in (".gif", ".mp4"):
        save_animation(clip_frames(clips, columns or math.ceil(math.sqrt(len(clips)))), out, fps)
    elif suffix == ".npz":
        tmp = out.with_name(f".{out.name}.tmp.npz")
        stored = labels if labels is not None else torch.full((len(clips),), -1)
        np.savez(tmp, images=clips.numpy(), labels=stored.numpy(), meta=json.dumps(meta))
        tmp.replace(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i in range(len(clips)):
            save_animation(clip_frames(clips[i:i + 1], 1, padding=0), out / f"{i:06d}.gif", fps)
