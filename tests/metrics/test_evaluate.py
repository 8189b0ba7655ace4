"""Evaluation sampling: per-sample seeds make results reproducible and shardable across ranks."""

import pytest
import torch

from diffusekit.config import resolve
from diffusekit.metrics.evaluate import SamplingSettings, sample_for_evaluation, shard_batches
from diffusekit.models.build import build_denoiser, build_network


def test_shards_partition_the_batches():
    assert shard_batches(10, 3) == [(0, 3), (3, 3), (6, 3), (9, 1)]
    shards = [shard_batches(10, 3, r, 3) for r in range(3)]
    assert sorted(b for s in shards for b in s) == shard_batches(10, 3)
    with pytest.raises(ValueError, match="rank"):
        shard_batches(10, 3, 3, 3)


@pytest.mark.parametrize("sampler", ["multistep", "euler_maruyama"])
def test_ranks_together_draw_exactly_the_single_process_samples(sampler):
    torch.manual_seed(0)
    config = resolve("tiny")
    network = build_network(config.network, (1, 8, 8), num_classes=3).float().eval()
    denoiser = build_denoiser(config, network)
    settings = SamplingSettings(sampler=sampler, steps=3, guidance=2.0, options={}, seed=5, batch_size=4)
    whole, labels, index = sample_for_evaluation(denoiser, (1, 8, 8), 3, 10, settings)
    assert whole.dtype == torch.uint8 and whole.shape == (10, 1, 8, 8) and index.tolist() == list(range(10))
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # class-balanced, class-major
    parts = [sample_for_evaluation(denoiser, (1, 8, 8), 3, 10, settings, rank=r, world_size=2) for r in range(2)]
    images = torch.cat([p[0] for p in parts])
    order = torch.cat([p[2] for p in parts]).argsort()
    assert torch.equal(images[order], whole)
    assert torch.equal(torch.cat([p[1] for p in parts])[order], labels)
    again, _, _ = sample_for_evaluation(denoiser, (1, 8, 8), 3, 10, settings)
    assert torch.equal(again, whole)


def test_settings_follow_the_run_and_drop_options_of_another_sampler():
    sample = resolve("mnist").sample
    same = SamplingSettings.from_config(sample, steps=4)
    assert same.sampler == "multistep" and same.steps == 4 and same.options == {"order": 2, "corrector": True}
    other = SamplingSettings.from_config(sample, sampler="heun")
    assert other.options == {} and other.guidance.scale == sample.guidance
    # the CLI passes every flag, unset ones as None: the run's options still go with another sampler
    assert SamplingSettings.from_config(sample, sampler="heun", options=None, steps=None).options == {}
    assert SamplingSettings.from_config(sample, sampler=None, options=None).options == {"order": 2, "corrector": True}
    assert SamplingSettings.from_config(sample, sampler="heun", options={"s_churn": 1}).options == {"s_churn": 1}


def test_preview_grid_shows_a_row_per_class():
    from diffusekit.metrics.evaluate import preview_grid

    images = torch.arange(30, dtype=torch.uint8).reshape(30, 1, 1, 1).expand(30, 1, 2, 2).contiguous()
    labels = torch.tensor([0] * 12 + [1] * 12 + [2] * 6)
    grid = preview_grid(images, labels, per_class=4)
    assert grid.shape == (3 * 4 + 2, 4 * 4 + 2, 1)  # 3 rows of 4, 2-pixel padding
    assert grid[2, 2, 0] == 0 and grid[6, 2, 0] == 12 and grid[10, 2, 0] == 24  # first image of each class


def test_a_run_configured_with_the_former_sampler_name_keeps_its_options_under_the_new_one():
    sample = resolve("mnist", overrides=["sample.sampler=edm_churn", "sample.options={S_churn: 10}"]).sample
    sample.sampler = "edm"  # as stored by a run made before the rename
    assert SamplingSettings.from_config(sample, sampler="edm_churn").options == {"S_churn": 10}
    assert SamplingSettings.from_config(sample, sampler="heun").options == {}
