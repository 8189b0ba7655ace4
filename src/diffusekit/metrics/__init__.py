"""Evaluation: FID / KID with the standard Inception-v3, precision/recall, memorization, per-noise-level losses,
a digit classifier for class-conditional MNIST samples, and video metrics (docs/evaluation.md)."""

from .classifier import (
    DigitCNN,
    TrainSettings,
    classify,
    conditional_accuracy,
    default_cache_dir,
    load_or_train_classifier,
    train_classifier,
)
from .clips import as_uint8_clips
from .evaluate import SamplingSettings, feature_metrics, memorization_metrics, sample_for_evaluation, shard_batches
from .features import compute_stats, dataset_reference_stats, folder_images
from .fid import fid_from_stats, frechet_distance
from .inception import FeatureExtractorNotInstalled, InceptionV3, get_extractor, quantize
from .kid import kid
from .memorization import MemorizationResult, memorization_check, nearest_neighbours, write_memorization_grid
from .motion import digit_centroids, digit_crops, identity_agreement, motion_smoothness
from .noise_levels import NoiseLevelBins, NoiseLevelProbe
from .precision_recall import precision_recall
from .stats import FeatureStats, RunningStats, load_stats
from .video import (
    clip_frame_features,
    flicker,
    flicker_ratio,
    frame_fid,
    frame_kid,
    fvd_proxy,
    pooled_clip_features,
    video_report,
)

__all__ = [
    "DigitCNN", "TrainSettings", "classify", "conditional_accuracy", "default_cache_dir", "load_or_train_classifier",
    "train_classifier",
    "SamplingSettings", "feature_metrics", "memorization_metrics", "sample_for_evaluation", "shard_batches",
    "compute_stats", "dataset_reference_stats", "folder_images",
    "fid_from_stats", "frechet_distance", "FeatureExtractorNotInstalled", "InceptionV3", "get_extractor", "quantize",
    "kid", "MemorizationResult", "memorization_check", "nearest_neighbours", "write_memorization_grid",
    "NoiseLevelBins", "NoiseLevelProbe", "precision_recall", "FeatureStats", "RunningStats", "load_stats",
    "as_uint8_clips", "clip_frame_features", "frame_fid", "frame_kid", "pooled_clip_features", "fvd_proxy", "flicker",
    "flicker_ratio", "video_report", "digit_centroids", "digit_crops", "identity_agreement", "motion_smoothness",
]
