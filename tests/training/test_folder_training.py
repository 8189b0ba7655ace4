"""A built-in colour dataset written out as a folder of files and trained through the folder path, in each storage;
stopped and resumed runs are bit-identical; the held-out split feeds the validation loss."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusekit.config import resolve
from diffusekit.data import load, load_training_data
from diffusekit.training.evaluation import TrainingEvaluator
from diffusekit.training.make import train

from ..assets import require_twemoji
from .resume_check import assert_resume_is_bit_identical

require_twemoji()


@pytest.fixture(scope="module")
def emoji_folder(tmp_path_factory):
    """24 emoji in two class folders (even / odd index) as PNG files."""
    root = tmp_path_factory.mktemp("emoji")
    images = load("emoji").images[:24]
    for i, image in enumerate(images):
        folder = root / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return root, images


@pytest.fixture(autouse=True)
def _cache_here(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "cache"))


def _config(root, *overrides):
    return resolve("tiny", overrides=[
        f"data.name={root}", "data.resolution=8", "data.channels=3", "run.total_images=96", "optim.batch_size=16",
        "run.checkpoint_every=32", "run.log_every=32", "eval.loss_every=null", "network.options={dropout: 0.1}",
        *overrides])


@pytest.mark.parametrize("storage", ["memory", "stream", "cache"])
def test_a_folder_trains_in_every_storage_with_the_same_batches(tmp_path, emoji_folder, storage):
    root, images = emoji_folder
    config = _config(root, f"data.storage={storage}", "data.xflip=true")
    data = load_training_data(config.data)
    assert len(data) == 48 and data.class_names == ("even", "odd")
    # the folder's first image is emoji 0 box-filtered 72 -> 8 (BOX: the mean of each 9x9 block), then mirrored
    expected = images[0].reshape(8, 9, 8, 9, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(data.images[np.array([0])][0].astype(np.float64) - expected).max() <= 1
    assert np.array_equal(data.images[np.array([24])][0], data.images[np.array([0])][0][:, ::-1])
    trainer = train(config, data, tmp_path / "run")
    assert trainer.cur_nimg == 96
    if storage == "memory":
        return
    reference = train(_config(root, "data.xflip=true"), load_training_data(_config(root, "data.xflip=true").data),
                      tmp_path / "memory")
    for key, value in reference.network.state_dict().items():  # the same pixels: the same run
        assert torch.equal(value, trainer.network.state_dict()[key]), key


@pytest.mark.parametrize("storage", ["stream", "cache"])
def test_a_stopped_and_resumed_folder_run_is_bit_identical(tmp_path, emoji_folder, storage):
    root, _ = emoji_folder
    config = _config(root, f"data.storage={storage}", "data.workers=1", "data.fit=random_crop")
    data = load_training_data(config.data)
    whole = train(config, data, tmp_path / "whole")
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 40, "ckpt-000000000032")


def test_the_held_out_split_is_the_validation_set(emoji_folder):
    root, _ = emoji_folder
    config = _config(root, "data.val_fraction=0.25", "data.storage=stream")
    train_data = load_training_data(config.data)
    held = TrainingEvaluator(config, train_data)._validation_data()
    assert held is not None and len(held) + len(train_data) == 24 and len(held) > 0
    without = TrainingEvaluator(_config(root), train_data, log=(logged := []).append)._validation_data()
    assert without is None and "data.val_fraction or data.val_dir" in logged[0]
