"""The latent benchmark's budget accounting: a run's images become minutes at the measured training speeds."""

import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "latent_emoji.py"
_spec = importlib.util.spec_from_file_location("benchmark_latent_emoji", PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)

SPEED = {"kind": "speed", "train_img_per_s": {"emoji-ae": 40.0, "emoji-ae-gan": 20.0, "emoji-latent": 100.0,
                                              "emoji": 25.0}, "cache_encode_s": 30.0}


def test_a_pixel_run_costs_its_images_at_the_pixel_speed():
    row = {"space": "pixel", "images": 30_000}
    assert bench.budget_minutes(row, SPEED) == pytest.approx(30_000 / 25 / 60, abs=0.05)


def test_a_latent_run_adds_its_autoencoder_before_and_after_the_gan_start_and_the_cache():
    row = {"space": "latent", "images": 60_000, "autoencoder_images": 12_000, "autoencoder_gan_start_images": 4_000}
    seconds = 60_000 / 100 + 4_000 / 40 + 8_000 / 20 + 30
    assert bench.budget_minutes(row, SPEED) == pytest.approx(seconds / 60, abs=0.05)
    # no GAN term: every autoencoder image at the GAN-free speed
    row.update(autoencoder_gan_start_images=None)
    assert bench.budget_minutes(row, SPEED) == pytest.approx((600 + 12_000 / 40 + 30) / 60, abs=0.05)


def test_no_budget_without_a_speed_row_or_an_autoencoder_row():
    assert bench.budget_minutes({"space": "pixel", "images": 1}, None) is None
    assert bench.budget_minutes({"space": "latent", "images": 1, "autoencoder_images": None}, SPEED) is None
