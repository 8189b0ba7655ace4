"""Classifier rejection sampling: which samples are redrawn, how often, and that round 0 is plain sampling."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from diffusekit.rejection import ROUND_SEED_STRIDE, generate_with_rejection, rejection_sample

N = 8
LABELS = torch.arange(N) % 3


def fake_draw(calls=None):
    """Image of sample i in round r: a 1x2x2 image holding i * 100 + r."""

    def draw(indices, r):
        if calls is not None:
            calls.append((indices.tolist(), r))
        return (indices * 100 + r).float().reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return draw


def fake_predict(images):
    """Sample i is read as its requested class from round i % 4 on, as the next class before."""
    code = images[:, 0, 0, 0].long()
    index, r = code // 100, code % 100
    return torch.where(r >= index % 4, LABELS[index], (LABELS[index] + 1) % 3)


def test_rejected_samples_are_redrawn_until_accepted():
    calls = []
    result = rejection_sample(fake_draw(calls), fake_predict, LABELS, max_rounds=10)
    assert calls == [(list(range(8)), 0), ([1, 2, 3, 5, 6, 7], 1), ([2, 3, 6, 7], 2), ([3, 7], 3)]
    assert result.rounds_used.tolist() == [1, 2, 3, 4, 1, 2, 3, 4]
    assert result.round_draws == [8, 6, 4, 2] and result.draws == 20
    assert result.accepted.all() and torch.equal(result.predicted, LABELS) and torch.equal(result.labels, LABELS)
    assert result.first_round_acceptance == pytest.approx(2 / 8)
    assert result.acceptance_rate == pytest.approx(8 / 20)
    # each image is its last (accepted) draw; first-round acceptances are the plain round-0 draws
    assert result.images[:, 0, 0, 0].tolist() == [i * 100 + i % 4 for i in range(N)]
    plain = fake_draw()(torch.arange(N), 0)
    first = result.rounds_used == 1
    assert torch.equal(result.images[first], plain[first])
    stats = result.describe()
    assert stats["draws_per_sample"] == pytest.approx(20 / 8) and stats["unaccepted"] == []
    assert json.loads(json.dumps(stats)) == stats


def test_max_rounds_keeps_the_last_draw_of_unaccepted_samples():
    calls = []
    result = rejection_sample(fake_draw(calls), fake_predict, LABELS, max_rounds=2)
    assert [r for _, r in calls] == [0, 1] and result.round_draws == [8, 6]
    assert result.accepted.tolist() == [True, True, False, False, True, True, False, False]
    assert result.rounds_used.tolist() == [1, 2, 2, 2, 1, 2, 2, 2]
    assert result.images[:, 0, 0, 0].tolist() == [0, 101, 201, 301, 400, 501, 601, 701]
    assert torch.equal(result.predicted[~result.accepted], (LABELS[~result.accepted] + 1) % 3)
    assert result.acceptance_rate == pytest.approx(4 / 14) and result.describe()["unaccepted"] == [2, 3, 6, 7]
    once = rejection_sample(fake_draw(), fake_predict, LABELS, max_rounds=1)
    assert once.round_draws == [8] and once.accepted.sum() == 2 and (once.rounds_used == 1).all()
    assert once.first_round_acceptance == once.acceptance_rate == pytest.approx(2 / 8)


@pytest.mark.parametrize("kwargs, labels, message", [
    ({"max_rounds": 0}, LABELS, "max_rounds must be an integer >= 1"),
    ({"max_rounds": 2.5}, LABELS, "max_rounds must be an integer >= 1"),
    ({}, None, "needs class labels"),
    ({}, LABELS.reshape(2, 4), "non-empty 1-D tensor of class indices"),
    ({}, torch.zeros(0, dtype=torch.long), "non-empty 1-D tensor of class indices"),
    ({}, LABELS.float(), "non-empty 1-D tensor of class indices"),
])
def test_bad_input_is_refused(kwargs, labels, message):
    with pytest.raises(ValueError, match=message):
        rejection_sample(fake_draw(), fake_predict, labels, **kwargs)


def test_draw_and_predict_must_answer_for_every_index():
    with pytest.raises(ValueError, match="draw returned"):
        rejection_sample(lambda idx, r: torch.zeros(len(idx) - 1, 1, 2, 2), fake_predict, LABELS)
    with pytest.raises(ValueError, match="predict returned shape"):
        rejection_sample(fake_draw(), lambda images: torch.zeros(len(images), 3), LABELS)


# -- generate_with_rejection on a tiny untrained network ---------------------------------------------------
class StubClassifier(nn.Module):
    """Class = floor(1000 * image sum) mod 3: an arbitrary but fixed reading of each image."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # classify() looks up the device and dtype of a parameter

    def forward(self, x):
        code = torch.floor(x.double().sum((1, 2, 3)) * 1000).long() % 3
        return nn.functional.one_hot(code, 3).float() * self.scale


@pytest.fixture(scope="module")
def tiny():
    from diffusekit.config import resolve
    from diffusekit.models.build import build_denoiser, build_network

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = resolve("tiny")
    # the preset's attention at 8x8 is no level of a 28x28 U-Net
    config = replace(config, network=replace(config.network, options={"attn_resolutions": [14]}))
    network = build_network(config.network, (1, 28, 28), num_classes=3).float().eval()
    return config, build_denoiser(config, network)


def test_generate_with_rejection_redraws_exactly_the_rejected(tiny):
    from diffusekit.generate import generate
    from diffusekit.guidance import GuidanceSettings
    from diffusekit.metrics import classify

    _, denoiser = tiny
    stub = StubClassifier()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    common = dict(num_classes=3, steps=2, guidance=GuidanceSettings(scale=2.0, threshold="static"), seed=3,
                  batch_size=4)
    result = generate_with_rejection(denoiser, 6, (1, 28, 28), labels=labels, classifier=stub, max_rounds=3,
                                     **common)
    plain = generate(denoiser, 6, (1, 28, 28), labels=labels, **common)
    first_pred = classify(stub, plain)
    assert torch.equal(result.accepted & (result.rounds_used == 1), first_pred == labels)
    assert 0 < result.round_draws[1] < 6  # this seed rejects some, not all, first-round samples
    first = result.rounds_used == 1
    assert torch.equal(result.images[first], plain[first])  # accepted first-round samples are plain samples
    redo = torch.nonzero(first_pred != labels).flatten()
    second = generate(denoiser, len(redo), (1, 28, 28), labels=labels[redo],
                      **{**common, "seed": 3 + ROUND_SEED_STRIDE})
    now = result.rounds_used[redo] == 2
    assert torch.equal(result.images[redo[now]], second[now])
    assert torch.equal(result.predicted, classify(stub, result.images))
    assert torch.equal(result.accepted, result.predicted == labels)
    assert result.draws == int(result.rounds_used.sum()) and result.round_draws[0] == 6
    again = generate_with_rejection(denoiser, 6, (1, 28, 28), labels=labels, classifier=stub, max_rounds=3, **common)
    assert torch.equal(again.images, result.images)


def test_generate_with_rejection_errors(tiny):
    _, denoiser = tiny
    stub = StubClassifier()
    with pytest.raises(ValueError, match="class-conditional model"):
        generate_with_rejection(denoiser, 2, (1, 28, 28), labels=torch.zeros(2), num_classes=0, classifier=stub)
    with pytest.raises(ValueError, match="needs class labels"):
        generate_with_rejection(denoiser, 2, (1, 28, 28), labels=None, num_classes=3, classifier=stub)
    with pytest.raises(ValueError, match="labels must be 2 class indices"):
        generate_with_rejection(denoiser, 2, (1, 28, 28), labels=torch.zeros(3), num_classes=3, classifier=stub)
    with pytest.raises(ValueError, match="max_rounds"):
        generate_with_rejection(denoiser, 2, (1, 28, 28), labels=torch.zeros(2), num_classes=3, classifier=stub,
                                max_rounds=0)


# -- the CLI: `sample --reject` with the model and the classifier stubbed ---------------------------------------
@pytest.fixture
def stubbed_cli(tiny, monkeypatch, tmp_path):
    import diffusekit.cli.sample as cli_sample
    from diffusekit.generate import LoadedModel

    config, denoiser = tiny
    loaded = LoadedModel(denoiser, config, (1, 28, 28), 3, ["a", "b", "c"], 0, tmp_path / "ckpt", "ema")
    monkeypatch.setattr(cli_sample, "load_model", lambda *a, **k: loaded)
    info = {"test_accuracy": 0.5, "weights": "stub.safetensors", "key": {"num_classes": 3}}
    monkeypatch.setattr(cli_sample, "load_or_train_classifier", lambda *a, **k: (StubClassifier(), info))
    return loaded


def test_cli_sample_reject_records_the_statistics(stubbed_cli, tmp_path, capsys):
    from diffusekit.cli import main

    common = ["sample", "run", "--n", "6", "--steps", "2", "--guidance", "2", "--threshold", "static", "--seed", "3",
              "--quiet", "--threads", "1"]
    assert main([*common, "--reject", "--reject-rounds", "3", "--out", str(tmp_path / "r.npz")]) == 0
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert main([*common, "--out", str(tmp_path / "plain.npz")]) == 0
    data, plain = np.load(tmp_path / "r.npz"), np.load(tmp_path / "plain.npz")
    meta = json.loads(str(data["meta"]))["rejection"]
    assert meta["max_rounds"] == 3 and meta["classifier"]["dataset"] == "mnist" and meta["n"] == 6
    assert line["rejection"]["draws"] == meta["draws"] == sum(meta["round_draws"]) > 6
    assert line["rejection"]["unaccepted"] == len(meta["unaccepted"])
    assert data["accepted"].dtype == bool and data["accepted"].sum() == meta["accepted"]
    assert data["rounds_used"].sum() == meta["draws"] and 0 < meta["first_round_acceptance"] < 1
    first = data["rounds_used"] == 1
    np.testing.assert_array_equal(data["images"][first], plain["images"][first])
    assert "rejection" not in json.loads(str(plain["meta"])) and "accepted" not in plain
    assert data["labels"].tolist() == plain["labels"].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("change, argv, message", [
    ({}, ["--reject-rounds", "3"], "--reject-rounds needs --reject"),
    ({}, ["--reject", "--reject-rounds", "0"], "--reject-rounds must be >= 1"),
    ({"num_classes": 0}, ["--reject"], "needs a class-conditional model"),
    ({"image_shape": (1, 16, 16)}, ["--reject"], "draws 1x16x16"),
    ({"data": "/some/folder"}, ["--reject"], "'/some/folder' is not one"),
])
def test_cli_reject_errors(stubbed_cli, tmp_path, capsys, monkeypatch, change, argv, message):
    from diffusekit.cli import main

    if "num_classes" in change:
        monkeypatch.setattr(stubbed_cli, "num_classes", 0)
        monkeypatch.setattr(stubbed_cli, "class_names", [])
    if "image_shape" in change:
        monkeypatch.setattr(stubbed_cli, "image_shape", change["image_shape"])
    if "data" in change:
        monkeypatch.setattr(stubbed_cli.config.data, "name", change["data"])
    code = main(["sample", "run", "--n", "2", "--steps", "2", "--quiet", "--out", str(tmp_path / "x.npz"), *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_help_describes_the_flags(capsys):
    from diffusekit.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--reject " in text and "--reject-rounds N" in text and "default 10" in text
