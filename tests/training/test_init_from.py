"""Fine-tuning (run.init_from): what a new run takes over from another run's checkpoint, exactly, and its report."""

import json

import numpy as np
import pytest
import torch

from diffusekit._files import file_digest
from diffusekit.config import resolve
from diffusekit.data import ImageArrays
from diffusekit.errors import UsageError
from diffusekit.models.checkpoint import load_checkpoint
from diffusekit.training.loop import Trainer
from diffusekit.training.make import make_trainer, train

from .resume_check import assert_resume_is_bit_identical

SOURCE = "ckpt-000000000032"
# the source network: the tiny U-Net at 8x8 with self-attention at 4x4 and a learned relative position bias there
NETWORK = "network.options={dropout: 0.0, attn_resolutions: [4], attention_position: relative}"


def _data(n=24, size=8, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    labels = np.arange(n) % classes
    return ImageArrays(images, labels.astype(np.int64), classes, tuple("abcdefgh"[:classes]))


def _config(*overrides):
    base = ["run.total_images=32", "optim.batch_size=16", "run.checkpoint_every=32", "optim.lr=1e-3",
            "ema.half_lives={fast: 100, slow: 1000}", NETWORK, "run.log_every=32"]
    return resolve("tiny", overrides=base + list(overrides))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A run trained for 32 images (two steps) on 2 classes of 8x8 images; returns its directory."""
    run = tmp_path_factory.mktemp("source") / "run"
    train(_config(), _data(), run)
    return run


def _states(run, checkpoint=SOURCE):
    _, model, emas, state = load_checkpoint(run / "checkpoints" / checkpoint)
    return model, emas, state


def test_new_classes_and_data_take_every_tensor_but_the_class_table(source, tmp_path):
    model, emas, _ = _states(source)
    config = _config(f"run.init_from={source}", "optim.lr=5e-4")
    data = _data(classes=3, seed=1)
    trainer = Trainer(config, data, tmp_path / "new")
    report = trainer.init_report
    assert report.weights == "fast" and report.source.endswith(SOURCE) and report.source_images == 32
    assert report.mismatched == [{"name": "map_class.table.weight", "source": [3, 8], "target": [4, 8]}]
    assert report.missing == [] and report.unexpected == [] and report.optimizer == "fresh"
    assert report.copied == report.total - 1 == len(model) - 1
    assert report.notes == ["2 classes in the source, 3 here"]
    # the copied tensors are the source's default EMA (the first configured: fast), bit for bit
    weights = trainer.network.state_dict()
    for name, tensor in emas["fast"].items():
        if name != "map_class.table.weight":
            assert torch.equal(weights[name], tensor), name
    # the class table is what the network initialises (the same seed builds the same one without init_from)
    fresh = Trainer(_config("optim.lr=5e-4"), data, tmp_path / "fresh")
    assert torch.equal(weights["map_class.table.weight"], fresh.network.state_dict()["map_class.table.weight"])
    # every EMA starts from the loaded weights; counters, optimizer and data order start from nothing
    for ema in trainer.emas.emas.values():
        for name, tensor in ema.model.state_dict().items():
            assert torch.equal(tensor, weights[name]), name
    assert trainer.cur_nimg == 0 and trainer._data_position == 0 and trainer.optimizer.state_dict()["state"] == {}


def test_init_weights_chooses_the_raw_weights_or_a_named_ema(source, tmp_path):
    model, emas, _ = _states(source)
    for choice, expected in (("model", model), ("slow", emas["slow"])):
        trainer = Trainer(_config(f"run.init_from={source}", f"run.init_weights={choice}"), _data(), tmp_path / choice)
        assert trainer.init_report.complete and trainer.init_report.weights == choice
        weights = trainer.network.state_dict()
        assert all(torch.equal(weights[name], tensor) for name, tensor in expected.items())
    assert not torch.equal(model["stem.weight"], emas["slow"]["stem.weight"])  # the choice mattered
    with pytest.raises(UsageError, match="run.init_weights: .* has no EMA named 'nope'; it has fast, slow"):
        Trainer(_config(f"run.init_from={source}", "run.init_weights=nope"), _data(), tmp_path / "nope")


def test_a_label_free_run_leaves_the_class_table_unused(source, tmp_path):
    trainer = Trainer(_config(f"run.init_from={source / 'checkpoints' / SOURCE}", "data.conditional=false"), _data(),
                      tmp_path / "new")
    assert trainer.init_report.unexpected == ["map_class.table.weight"]
    assert trainer.init_report.missing == [] and trainer.init_report.mismatched == []


def test_a_larger_resolution_keeps_the_convolutions_and_starts_the_relative_bias_fresh(source, tmp_path):
    _, emas, _ = _states(source)
    network = "network.options={dropout: 0.0, attn_resolutions: [8], attention_position: relative}"
    trainer = Trainer(_config(f"run.init_from={source}", network), _data(size=16), tmp_path / "new")
    report = trainer.init_report
    # attention moves with the resolution (4x4 of 8x8 -> 8x8 of 16x16): the same blocks; each relative bias
    # table has (2 side - 1)^2 offsets
    assert report.mismatched == [{"name": f"{block}.attention.relative_bias.table", "source": [1, 7, 7],
                                  "target": [1, 15, 15]} for block in ("encoder.2", "decoder.0", "decoder.3")]
    assert report.missing == [] and report.unexpected == []
    assert report.notes == ["resolution 8 in the source, 16 here"]
    assert torch.equal(trainer.network.state_dict()["stem.weight"], emas["fast"]["stem.weight"])
    assert torch.equal(trainer.network.state_dict()["encoder.2.attention.relative_bias.table"],
                       torch.zeros(1, 15, 15))  # as RelativeBias2d starts


def test_init_optimizer_takes_the_moments_and_keeps_this_runs_learning_rate(source, tmp_path):
    _, _, state = _states(source)
    trainer = Trainer(_config(f"run.init_from={source}", "run.init_optimizer=true", "optim.lr=5e-4"), _data(),
                      tmp_path / "new")
    assert trainer.init_report.optimizer == "source"
    loaded = trainer.optimizer.state_dict()
    for index, values in state["optimizer"]["state"].items():
        assert torch.equal(loaded["state"][index]["exp_avg"], values["exp_avg"])
        assert torch.equal(loaded["state"][index]["exp_avg_sq"], values["exp_avg_sq"])
        assert float(loaded["state"][index]["step"]) == 2.0  # two steps of 16 images
    assert loaded["param_groups"][0]["lr"] == 5e-4
    assert trainer.cur_nimg == 0
    with pytest.raises(UsageError, match=r"match the source's: map_class.table.weight is \[3, 8\] in the source, "
                                         r"\[4, 8\] here"):
        Trainer(_config(f"run.init_from={source}", "run.init_optimizer=true"), _data(classes=3), tmp_path / "x")
    with pytest.raises(UsageError, match="holds 146 parameters, this network has 145 "
                                         r"\(map_class.table.weight of the source is not used here\)"):
        Trainer(_config(f"run.init_from={source}", "run.init_optimizer=true", "data.conditional=false"), _data(),
                tmp_path / "y")


def test_a_fine_tuning_run_resumes_bit_identical_and_leaves_its_source_alone(source, tmp_path):
    files = sorted(p for p in source.rglob("*") if p.is_file())
    before = {p: file_digest(p) for p in files}
    config = _config(f"run.init_from={source}", "run.total_images=96", "optim.accumulation=2",
                     "network.options={dropout: 0.1, attn_resolutions: [4], attention_position: relative}")
    data = _data(classes=3, seed=2)
    whole = train(config, data, tmp_path / "whole")
    report = json.loads((tmp_path / "whole" / "init_from.json").read_text())
    assert report["mismatched"][0]["name"] == "map_class.table.weight" and report["copied"] == 145
    # stopped at 48 images, the checkpoint at 32; the restart resumes from it and does not initialise again
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 48, "ckpt-000000000032")
    assert Trainer(config, data, tmp_path / "split").init_report is None
    assert sorted(p for p in source.rglob("*") if p.is_file()) == files
    assert {p: file_digest(p) for p in files} == before


def test_an_autoencoder_run_starts_from_another_autoencoders_weights_with_a_fresh_discriminator(tmp_path):
    settings = ["network.kind=autoencoder", "network.preset=f4", "eval.validation=none", "autoencoder.disc_layers=2",
                "network.options={block_out_channels: [8, 8], norm_num_groups: 4, latent_channels: 2}",
                "autoencoder.disc_channels=8", "optim.batch_size=8", "run.total_images=8", "run.checkpoint_every=8",
                "autoencoder.stats_images=8", "ema.half_lives={ema: 64}"]
    data = _data(n=16, size=16)
    train(resolve("tiny", overrides=settings), data, tmp_path / "source")
    _, emas, _ = _states(tmp_path / "source", "ckpt-000000000008")
    config = resolve("tiny", overrides=[*settings, f"run.init_from={tmp_path / 'source'}"])
    trainer = make_trainer(config, _data(n=16, size=16, seed=3), tmp_path / "new")
    assert trainer.init_report.complete and trainer.init_report.weights == "ema"
    weights = trainer.network.state_dict()
    assert all(torch.equal(weights[name], tensor) for name, tensor in emas["ema"].items())
    fresh = make_trainer(resolve("tiny", overrides=settings), data, tmp_path / "fresh")
    for name, tensor in fresh.discriminator.state_dict().items():
        assert torch.equal(trainer.discriminator.state_dict()[name], tensor), name
