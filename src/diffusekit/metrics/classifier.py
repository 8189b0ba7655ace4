"""A small MNIST-style CNN classifier, to check that class-conditional samples show the requested class.

``load_or_train_classifier()`` trains :class:`DigitCNN` on a built-in dataset's training split (a few
minutes on 2 CPU cores), reports its accuracy on the test split and caches both; ``classify`` labels
generated images and ``conditional_accuracy`` scores the labels against the requested classes.

Inputs everywhere are float NCHW images in [-1, 1] with one channel, 28x28; 32x32 images (MNIST padded
to 32 for a U-Net) are center-cropped to 28x28.

Training: AdamW with a one-cycle learning rate, label smoothing 0.1, and random shifts of up to
``max_shift`` pixels (padding with background), which makes the classifier less sensitive to where a
generated digit sits. Given a seed (and the same torch build and thread count) training is
deterministic: the initial weights, dropout, batch order and shifts all come from that seed.

The cache (``cache_dir``, by default ``$DIFFUSEKIT_CACHE/classifiers`` or
``~/.cache/diffusekit/classifiers``) holds ``<dataset>-cnn.safetensors`` and ``<dataset>-cnn.json``.
The JSON's ``key`` names the dataset, the sha256 of the training and test data (images and labels), the
torch version, the architecture and the training settings; a cached model is reused only when the key
matches and the weights file has the sha256 recorded beside it, and is retrained (and overwritten)
otherwise. Both files are written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .._files import atomic_write, cache_dir, file_digest
from ..data.builtin import ImageArrays, load

__all__ = [
    "ARCHITECTURE",
    "DigitCNN",
    "TrainSettings",
    "classify",
    "conditional_accuracy",
    "data_sha256",
    "default_cache_dir",
    "load_or_train_classifier",
    "train_classifier",
]

ARCHITECTURE = "DigitCNN-v1"  # bump when DigitCNN changes, so that cached weights are retrained
IMAGE_SIZE = 28


class DigitCNN(nn.Module):
    """conv-pool x3 (widths ``w, 2w, 4w``, BatchNorm, ReLU) -> fc(128) -> dropout -> fc(num_classes).

    Takes float ``[N, 1, 28, 28]`` in [-1, 1]; returns logits ``[N, num_classes]``.
    """

    def __init__(self, num_classes: int = 10, width: int = 24, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        chans = (1, width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]  # 28 -> 14 -> 7 -> 3
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 9, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class TrainSettings:
    """Everything besides the data that decides the trained weights (part of the cache key)."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    max_shift: int = 2
    width: int = 24
    hidden: int = 128
    dropout: float = 0.3
    seed: int = 0


def _check_images(images: Tensor) -> Tensor:
    """Validate float NCHW one-channel images; center-crop 32x32 to 28x28."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [-1, 1], got dtype {images.dtype} (convert uint8 with x / 127.5 - 1)")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be [N, 1, H, W] (NCHW, one channel), got shape {tuple(images.shape)}")
    size = tuple(images.shape[2:])
    if size == (32, 32):
        images = images[:, :, 2:30, 2:30]
    elif size != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be 28x28 (or 32x32, center-cropped to 28x28), got {size[0]}x{size[1]}")
    return images


def _uint8_nchw(data: ImageArrays) -> Tensor:
    images = np.asarray(data.images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise ValueError(f"expected uint8 images [N, 28, 28, 1], got {images.dtype} {images.shape}")
    return torch.tensor(images).permute(0, 3, 1, 2).contiguous()  # a copy: the arrays may be read-only


def _to_float(x: Tensor) -> Tensor:
    return x.float() / 127.5 - 1


def _random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each uint8 ``[B, 1, H, W]`` image by up to ``max_shift`` pixels, filling with 0 (background)."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, :, None]  # [B, H, 1]
    cols = (dx + torch.arange(w))[:, None, :]  # [B, 1, W]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def _logits(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    param = next(model.parameters())
    return torch.cat([model(images[i:i + batch_size].to(param.device, param.dtype)).float().cpu()
                      for i in range(0, len(images), batch_size)])


def _accuracy(model: nn.Module, data: ImageArrays, batch_size: int = 1000) -> float:
    images, labels = _to_float(_uint8_nchw(data)), torch.as_tensor(np.asarray(data.labels, dtype=np.int64))
    return (_logits(model, images, batch_size).argmax(1) == labels).float().mean().item()


def train_classifier(train: ImageArrays, test: ImageArrays, epochs: int = TrainSettings.epochs,
                     batch_size: int = TrainSettings.batch_size, seed: int = 0,
                     log: Callable[[str], Any] | None = print, **settings: Any) -> tuple[nn.Module, float]:
    """Train a :class:`DigitCNN` on ``train``; return it in eval mode and its accuracy on ``test``.

    ``settings`` are further :class:`TrainSettings` fields (``lr``, ``max_shift``, ``width``, ...).
    """
    cfg = TrainSettings(epochs=epochs, batch_size=batch_size, seed=seed, **settings)
    log = log or (lambda _msg: None)
    images, labels = _uint8_nchw(train), torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    n = len(images)
    steps_per_epoch = -(-n // cfg.batch_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = DigitCNN(train.num_classes, cfg.width, cfg.hidden, cfg.dropout)
        model = model.to(torch.float32, memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total_steps = cfg.epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps)
        start = time.perf_counter()
        for epoch in range(cfg.epochs):
            model.train()
            order = torch.randperm(n, generator=generator)
            total_loss = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                x = _to_float(_random_shift(images[idx], cfg.max_shift, generator))
                x = x.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(model(x), labels[idx], label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += loss.item() * len(idx)
            model.eval()
            log(f"classifier epoch {epoch + 1}/{cfg.epochs}: train loss {total_loss / n:.4f}, "
                f"test accuracy {_accuracy(model, test):.4f} ({time.perf_counter() - start:.0f} s)")
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, _accuracy(model, test)


def classify(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """Predicted labels (int64 ``[N]``, on ``images.device``) for float ``[N, 1, H, W]`` images in [-1, 1].

    ``H x W`` must be 28x28, or 32x32, which is center-cropped to 28x28 (rows and columns 2..29).
    Values are clamped to [-1, 1]; values far outside it (``|x| > 2``, e.g. images in [0, 255]) or
    non-finite values raise ``ValueError``.
    """
    images = _check_images(images)
    if len(images) == 0:
        return torch.zeros(0, dtype=torch.int64, device=images.device)
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    if images.abs().max() > 2:
        raise ValueError(f"images must be in [-1, 1], got values in [{images.min():.3g}, {images.max():.3g}]")
    was_training = model.training
    model.eval()
    try:
        predicted = _logits(model, images.clamp(-1, 1), batch_size).argmax(1)
    finally:
        model.train(was_training)
    return predicted.to(images.device)


def conditional_accuracy(predicted: Tensor | np.ndarray | Sequence[int], requested: Tensor | np.ndarray | Sequence[int],
                         num_classes: int) -> dict[str, Any]:
    """Score predicted labels against the requested classes.

    Returns ``overall`` (fraction of all samples classified as requested), ``per_class`` (that fraction
    among the samples requested for each class; ``None`` for a class with none), ``min_class`` (the
    smallest of those), ``counts`` and ``correct`` (per requested class), ``total``, ``num_correct``,
    and ``confusion`` (``confusion[requested][predicted]`` counts, as lists).
    """
    pred = np.asarray(predicted.cpu() if isinstance(predicted, Tensor) else predicted)
    req = np.asarray(requested.cpu() if isinstance(requested, Tensor) else requested)
    if pred.ndim != 1 or pred.shape != req.shape:
        raise ValueError(f"predicted and requested must be 1-D of equal length, got {pred.shape} and {req.shape}")
    if len(pred) == 0:
        raise ValueError("no samples to score")
    for name, values in (("predicted", pred), ("requested", req)):
        if not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"{name} labels must be integers, got dtype {values.dtype}")
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} labels must be in [0, {num_classes}), got [{values.min()}, {values.max()}]")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (req, pred), 1)
    counts = confusion.sum(1)
    correct = np.diag(confusion)
    per_class = [float(c / n) if n else None for c, n in zip(correct, counts, strict=True)]
    return {
        "overall": float(correct.sum() / len(pred)),
        "per_class": per_class,
        "min_class": min(a for a in per_class if a is not None),
        "counts": counts.tolist(),
        "correct": correct.tolist(),
        "total": int(len(pred)),
        "num_correct": int(correct.sum()),
        "confusion": confusion.tolist(),
    }


def data_sha256(data: ImageArrays) -> str:
    """sha256 of the images' bytes followed by the labels' bytes (uint8 images, int64 labels)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(data.images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$DIFFUSEKIT_CACHE/classifiers`` if that variable is set, else ``~/.cache/diffusekit/classifiers``."""
    return cache_dir("classifiers")


def _load_cached(weights: Path, meta_path: Path, key: dict[str, Any], cfg: TrainSettings,
                 num_classes: int) -> tuple[nn.Module, dict[str, Any]] | None:
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or meta.get("weights_sha256") != file_digest(weights):
            return None
        model = DigitCNN(num_classes, cfg.width, cfg.hidden, cfg.dropout).float()
        model.load_state_dict(load_file(str(weights)))
    except (OSError, ValueError, RuntimeError, KeyError):  # missing, torn or stale files: retrain
        return None
    return model.eval(), meta


def load_or_train_classifier(dataset: str = "mnist", cache_dir: str | Path | None = None, *,
                             train: ImageArrays | None = None, test: ImageArrays | None = None,
                             settings: TrainSettings | None = None,
                             log: Callable[[str], Any] | None = print) -> tuple[nn.Module, dict[str, Any]]:
    """The cached classifier for ``dataset`` if its cache key matches, else a freshly trained (and cached) one.

    ``train``/``test`` replace ``load(dataset, "train" / "test")`` (``dataset`` then only names the cache
    files). Returns the eval-mode model and the metadata dict: ``test_accuracy``, ``dataset``,
    ``train_seconds``, ``cached`` (whether it was loaded), ``weights`` (path), ``key`` and more.
    """
    cfg = settings or TrainSettings()
    log = log or (lambda _msg: None)
    train = train if train is not None else load(dataset, "train")
    test = test if test is not None else load(dataset, "test")
    key = {
        "dataset": dataset,
        "train_sha256": data_sha256(train),
        "test_sha256": data_sha256(test),
        "num_classes": train.num_classes,
        "torch_version": torch.__version__,
        "architecture": ARCHITECTURE,
        "settings": asdict(cfg),
    }
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    weights, meta_path = directory / f"{dataset}-cnn.safetensors", directory / f"{dataset}-cnn.json"
    cached = _load_cached(weights, meta_path, key, cfg, train.num_classes)
    if cached is not None:
        model, meta = cached
        log(f"classifier loaded from {weights} (test accuracy {meta['test_accuracy']:.4f})")
        return model, {**meta, "cached": True, "weights": str(weights)}

    log(f"training the {dataset} classifier ({len(train)} images, {cfg.epochs} epochs); cache: {directory}")
    start = time.perf_counter()
    fields = asdict(cfg)
    epochs, batch_size, seed = fields.pop("epochs"), fields.pop("batch_size"), fields.pop("seed")
    model, accuracy = train_classifier(train, test, epochs, batch_size, seed, log, **fields)
    seconds = time.perf_counter() - start
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"architecture": ARCHITECTURE}))
    meta = {
        "test_accuracy": accuracy,
        "dataset": dataset,
        "train_size": len(train),
        "test_size": len(test),
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "weights_sha256": file_digest(weights),
        "key": key,
    }
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    log(f"classifier test accuracy {accuracy:.4f} after {seconds:.0f} s; saved to {weights}")
    return model, {**meta, "cached": False, "weights": str(weights)}
