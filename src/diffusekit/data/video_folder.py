"""A folder of your own videos as clips, decoded on demand.

A video is either a video file (``.gif .mp4 .webm .avi .mov``, any case; read through imageio, MP4 and the like
through its ffmpeg plugin) or a *frame folder*: a folder holding the frames as image files directly (png, jpg,
jpeg, bmp, webp, tif, tiff; a ``.gif`` is always a video), read in sorted name order. Layout, like
:mod:`diffusekit.data.folder`: if the top folder has *class folders* (subfolders that hold no frame images
themselves), each is a class (labels follow the sorted names) holding video files and frame folders one level
down; videos outside them are then an error. Otherwise the videos lying in the top folder are unlabelled
(``num_classes`` 0). Names starting with "." are ignored.

Opening the folder only indexes it: it counts every video's frames (an exact count: ffmpeg decodes MP4 and the
like once to count them, Pillow GIF frames; frame folders are counted by file and their headers read, so frames
of different sizes in one folder are an error). Clips are windows of ``frames`` consecutive frames starting
every ``stride`` frames (default ``frames``: no overlap), decoded when asked for, each frame converted and
resized as :func:`~diffusekit.data.folder.read_image` does. Videos that cannot be used are sorted into
categories (:data:`VIDEO_SKIP_CATEGORIES`): unreadable, too short (fewer than ``min_frames`` frames, default
``frames``), not a video, and empty class folders (dropped, the other classes renumbered). By default they are
skipped with one warning that counts them; ``strict=True`` raises instead. A folder with no usable clip is an
error either way.

Captions (``captions=True``, for text conditioning), as for image folders (:mod:`diffusekit.data.folder_meta`): a
``metadata.jsonl`` in the top folder with ``file_name`` (the video file's or frame folder's path relative to the
top folder) and ``text`` per line, or a same-named ``.txt`` beside the video (``walk.mp4`` -> ``walk.txt``; a
frame folder ``walk/`` -> ``walk.txt``); ``metadata.jsonl`` wins where both exist. The labels then number the
distinct captions (``class_names`` holds them, sorted) instead of the class folders, and videos without a caption
are skipped (``no_caption``). Caption files and ``metadata.jsonl`` are never counted as stray files.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import BadFileError, UsageError
from .folder_files import IMAGE_EXTENSIONS, describe_skipped, existing_folder, flatten_image, read_image
from .folder_meta import LABELS_FILE, METADATA_FILE, read_metadata
from .transform import fit_square

__all__ = ["VIDEO_EXTENSIONS", "FRAME_EXTENSIONS", "VIDEO_SKIP_CATEGORIES", "Video", "VideoFolder",
           "VideoFolderReport", "video_folder"]

VIDEO_EXTENSIONS = frozenset({".gif", ".mp4", ".webm", ".avi", ".mov"})
FRAME_EXTENSIONS = IMAGE_EXTENSIONS - {".gif"}
# what Pillow, imageio and ffmpeg raise for a corrupt, truncated or hostile file
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, RuntimeError, IndexError, struct.error,
                  Image.DecompressionBombError)

VIDEO_SKIP_CATEGORIES = {"unreadable": "unreadable (corrupt or not decodable: {examples})",
                         "too_short": "too short (under {min_frames} frames: {examples})",
                         "not_video": "not videos ({examples})",
                         "empty_class": "empty class folders, dropped ({examples})",
                         "no_caption": "without a caption ({examples})"}


@dataclass(frozen=True)
class Video:
    """One indexed video: a file, or a frame folder with its sorted frame files."""

    path: Path
    length: int  # frames
    label: int
    frame_files: tuple[Path, ...] = ()  # empty for a video file


@dataclass
class VideoFolderReport:
    """What :class:`VideoFolder` left out of ``root``, by category (paths; class folders for empty_class)."""

    root: Path
    videos: int = 0  # videos and other files looked at (hidden ones excluded)
    min_frames: int = 1
    skipped: dict[str, list[Path]] = field(default_factory=lambda: {k: [] for k in VIDEO_SKIP_CATEGORIES})

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.skipped.items() if v}

    def describe(self, examples: int = 3) -> str:
        """``1 unreadable (corrupt or not decodable: a.mp4), 2 too short (under 8 frames: b.gif, c)``."""
        return describe_skipped(self.skipped, self.root, VIDEO_SKIP_CATEGORIES, examples, min_frames=self.min_frames)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _frame_files(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]


def _is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _count_frames(path: Path, frame_files: list[Path]) -> int:
    """The number of frames of a video file or a frame folder (raises on a file that cannot be decoded)."""
    if frame_files:
        sizes = {}
        for file in frame_files:
            with Image.open(file) as image:
                sizes.setdefault(image.size, file)
        if len(sizes) > 1:
            found = ", ".join(f"{w}x{h} ({f.name})" for (w, h), f in sizes.items())
            raise BadFileError(f"frames of different sizes in the frame folder {path}: {found}")
        return len(frame_files)
    if path.suffix.lower() == ".gif":
        return int(iio.improps(path, plugin="pillow").n_images)
    return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])


def _caption_file(video: Path) -> Path:
    """The ``.txt`` caption beside a video file or frame folder."""
    return video.parent / f"{video.stem if video.is_file() else video.name}.txt"


def _not_videos(files: list[Path], videos: list[Path], root: Path) -> list[Path]:
    """The stray files among ``files``: neither videos nor the captions and metadata written beside them."""
    known = {_caption_file(v) for v in videos} | {root / METADATA_FILE, root / LABELS_FILE}
    return [p for p in files if p.is_file() and not _is_video_file(p) and p not in known]


def _find_videos(root: Path, report: VideoFolderReport) -> tuple[list[tuple[Path, list[Path], int]], list[str]]:
    """(path, frame files, class index) of every candidate video, and the class names (empty when unlabelled)."""
    entries = _visible(root)
    frame_folders = {p: _frame_files(p) for p in entries if p.is_dir()}
    classes = [p for p, files in frame_folders.items() if not files and any(not q.name.startswith(".")
                                                                            for q in p.iterdir())]
    if not classes:
        found = [(p, frame_folders.get(p, []), 0) for p in entries if _is_video_file(p) or frame_folders.get(p)]
        report.skipped["not_video"] += _not_videos(entries, [f[0] for f in found], root)
        return found, []
    loose = [p.name for p in entries if _is_video_file(p) or frame_folders.get(p)]
    if loose:
        shown = ", ".join(loose[:5]) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
        raise BadFileError(f"{root} has class folders ({', '.join(p.name for p in classes)}) and also videos "
                           f"outside them: {shown}. Move them into a class folder, or point at a folder of videos")
    report.skipped["not_video"] += _not_videos(entries, [], root)
    found = []
    for k, folder in enumerate(classes):
        inside = _visible(folder)
        videos = [(p, _frame_files(p) if p.is_dir() else [], k) for p in inside]
        videos = [v for v in videos if _is_video_file(v[0]) or v[1]]
        found += videos
        report.skipped["not_video"] += _not_videos(inside, [v[0] for v in videos], root)
    return found, [p.name for p in classes]


def _captions_of(root: Path, videos: list[Video]) -> list[str | None]:
    """Each video's caption (``metadata.jsonl`` first, else the ``.txt`` beside it), None where it has none."""
    written = read_metadata(root).captions
    out = []
    for video in videos:
        caption = written.get(video.path.relative_to(root).as_posix())
        side = _caption_file(video.path)
        if caption is None and side.is_file():
            caption = side.read_text(encoding="utf-8").strip()
        out.append(caption if caption else None)
    return out


def _to_frame(array: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """One decoded frame (uint8 [H, W], [H, W, 3] or [H, W, 4]) as uint8 ``[resolution, resolution, channels]``."""
    image = flatten_image(Image.fromarray(np.ascontiguousarray(array)), "L" if channels == 1 else "RGB")
    return np.asarray(fit_square(image, resolution)).reshape(resolution, resolution, channels)


class VideoFolder:
    """Clips cut from the videos under a folder (module docstring), decoded on demand.

    The interface of :class:`~diffusekit.data.clips.ClipArrays` without the clips held in memory: ``len``,
    ``frames``, ``item_shape`` (C, F, H, W), ``labels`` int64 ``[N]``, ``num_classes``, ``class_names``,
    :meth:`tensors` and :meth:`clip`. ``clip_video`` and ``clip_start`` say which video and frame each clip
    starts at; ``report`` what was left out.
    """

    def __init__(self, path: str | Path, frames: int, resolution: int, channels: int = 3, *,
                 stride: int | None = None, min_frames: int | None = None, captions: bool = False):
        root = existing_folder(path, "videos")
        if frames < 1:
            raise UsageError(f"frames must be at least 1, got {frames}")
        if resolution < 1:
            raise UsageError(f"resolution must be positive, got {resolution}")
        if channels not in (1, 3):
            raise UsageError(f"channels must be 1 or 3, got {channels}")
        stride = frames if stride is None else stride
        if stride < 1:
            raise UsageError(f"stride must be at least 1, got {stride}")
        min_frames = frames if min_frames is None else min_frames
        if min_frames < frames:
            raise UsageError(f"min_frames ({min_frames}) cannot be below the clip length frames={frames}")
        self.root, self.frames, self.resolution, self.channels, self.stride = root, frames, resolution, channels, stride
        self.report = report = VideoFolderReport(root, min_frames=min_frames)
        candidates, class_names = _find_videos(root, report)
        report.videos = len(candidates) + len(report.skipped["not_video"])
        videos = []
        for path_, files, label in candidates:
            try:
                length = _count_frames(path_, files)
            except BadFileError:
                raise
            except _DECODE_ERRORS:
                report.skipped["unreadable"].append(path_)
                continue
            if length < 1:
                report.skipped["unreadable"].append(path_)
            elif length < min_frames:
                report.skipped["too_short"].append(path_)
            else:
                videos.append(Video(path_, length, label, tuple(files)))
        if captions:  # the labels number the distinct captions (module docstring)
            texts = _captions_of(root, videos)
            report.skipped["no_caption"] += [v.path for v, text in zip(videos, texts, strict=True) if text is None]
            kept = [(v, text) for v, text in zip(videos, texts, strict=True) if text is not None]
            class_names = sorted({text for _, text in kept})
            number = {text: k for k, text in enumerate(class_names)}
            videos = [Video(v.path, v.length, number[text], v.frame_files) for v, text in kept]
            if not videos and texts:
                raise BadFileError(f"{root} has no captions: give a {METADATA_FILE} with file_name and text per line, "
                                   "or a .txt file beside each video")
        used = sorted({v.label for v in videos})
        if class_names and not captions:
            report.skipped["empty_class"] += [root / name for k, name in enumerate(class_names) if k not in used]
        if not videos:
            found = report.describe()
            raise BadFileError(f"no usable clip of {frames} frames in {root}" + (f": {found}" if found else
                               f" (looked for frame folders and {', '.join(sorted(VIDEO_EXTENSIONS))} files)"))
        renumber = {old: new for new, old in enumerate(used)}
        self.videos = tuple(Video(v.path, v.length, renumber[v.label] if class_names else 0, v.frame_files)
                            for v in videos)
        self.class_names = tuple(class_names[k] for k in used) if class_names else ()
        self.num_classes = len(self.class_names)
        starts = [np.arange(0, v.length - frames + 1, stride, dtype=np.int64) for v in self.videos]
        self.clip_video = np.concatenate([np.full(len(s), i, np.int64) for i, s in enumerate(starts)])
        self.clip_start = np.concatenate(starts)
        self.labels = np.array([self.videos[i].label for i in self.clip_video], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.clip_start)

    @property
    def item_shape(self) -> tuple[int, int, int, int]:
        """(C, F, H, W) of one item as :meth:`tensors` gives it."""
        return self.channels, self.frames, self.resolution, self.resolution

    def _decode(self, video: Video, first: int, stop: int) -> np.ndarray:
        """Frames ``first`` to ``stop - 1`` of ``video``, uint8 ``[stop - first, H, W, C]``."""
        try:
            if video.frame_files:
                out = [read_image(f, self.resolution, self.channels) for f in video.frame_files[first:stop]]
            else:
                out = []
                plugin = "pillow" if video.path.suffix.lower() == ".gif" else None
                for k, frame in enumerate(iio.imiter(video.path, plugin=plugin)):
                    if k >= stop:
                        break
                    if k >= first:
                        out.append(_to_frame(frame, self.resolution, self.channels))
        except _DECODE_ERRORS as error:
            raise BadFileError(f"{video.path} could not be decoded: {error}") from None
        if len(out) != stop - first:
            raise BadFileError(f"{video.path} has {first + len(out)} decodable frames, "
                               f"fewer than the {video.length} counted when the folder was opened")
        return np.stack(out)

    def clip(self, index: int) -> np.ndarray:
        """Clip ``index`` as uint8 ``[F, H, W, C]``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip {index} out of range for {len(self)} clips")
        video, start = self.videos[self.clip_video[index]], int(self.clip_start[index])
        return self._decode(video, start, start + self.frames)

    def tensors(self, indices=None) -> tuple[Tensor, Tensor]:
        """Clips as float ``[B, C, F, H, W]`` in [-1, 1] and int64 labels ``[B]``, for the given indices (all by
        default). Each video is decoded once, over the frames its requested clips span."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), self.frames, self.resolution, self.resolution, self.channels), np.uint8)
        for v in np.unique(self.clip_video[indices]):
            rows = np.flatnonzero(self.clip_video[indices] == v)
            starts = self.clip_start[indices[rows]]
            first = int(starts.min())
            span = self._decode(self.videos[v], first, int(starts.max()) + self.frames)
            for row, start in zip(rows, starts, strict=True):
                out[row] = span[start - first:start - first + self.frames]
        x = torch.from_numpy(out).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        return x, torch.from_numpy(self.labels[indices])


def video_folder(path: str | Path, frames: int, resolution: int, channels: int = 3, *, stride: int | None = None,
                 strict: bool = False, min_frames: int | None = None, captions: bool = False) -> VideoFolder:
    """:class:`VideoFolder`, reporting what was left out: one warning that counts the skipped videos by
    category, or with ``strict=True`` a BadFileError listing them."""
    data = VideoFolder(path, frames, resolution, channels, stride=stride, min_frames=min_frames, captions=captions)
    report = data.report
    if report.counts:
        skipped = sum(n for k, n in report.counts.items() if k != "empty_class")
        message = f"{report.root}: skipped {skipped} of {report.videos} videos: {report.describe()}"
        if strict:
            raise BadFileError(f"{message}. Fix or remove these files, or drop strict to skip them with a warning")
        warnings.warn(message, stacklevel=2)
    return data

