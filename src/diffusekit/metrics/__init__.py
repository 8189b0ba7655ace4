"""Metrics for generated samples: a classifier that checks class-conditional samples show the requested class."""

from .classifier import (
    DigitCNN,
    TrainSettings,
    classify,
    conditional_accuracy,
    default_cache_dir,
    load_or_train_classifier,
    train_classifier,
)

__all__ = [
    "DigitCNN",
    "TrainSettings",
    "classify",
    "conditional_accuracy",
    "default_cache_dir",
    "load_or_train_classifier",
    "train_classifier",
]
