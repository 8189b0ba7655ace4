from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusekit.data import ImageArrays
from diffusekit.metrics import classifier as clf
from diffusekit.metrics import classify, conditional_accuracy, load_or_train_classifier
from diffusekit.metrics.classifier import DigitCNN, TrainSettings, data_sha256

TINY = TrainSettings(epochs=1, batch_size=50, width=4, hidden=16)


def _arrays(n: int, seed: int) -> ImageArrays:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    return ImageArrays(images, labels, 10, tuple(str(d) for d in range(10)))


@pytest.fixture
def model() -> DigitCNN:
    torch.manual_seed(0)
    return DigitCNN(width=4, hidden=16)


def test_classify_shapes_and_crop(model):
    x = torch.rand(7, 1, 32, 32) * 2 - 1
    predicted = classify(model, x, batch_size=3)
    assert predicted.shape == (7,) and predicted.dtype == torch.int64
    assert ((predicted >= 0) & (predicted < 10)).all()
    # 32x32 is the 28x28 center crop
    assert torch.equal(predicted, classify(model, x[:, :, 2:30, 2:30].contiguous()))
    # batching does not change the answer; an empty batch gives an empty result
    assert torch.equal(classify(model, x[:, :, 2:30, 2:30], batch_size=500), predicted)
    assert classify(model, torch.zeros(0, 1, 28, 28)).shape == (0,)


def test_classify_restores_training_mode(model):
    model.train()
    classify(model, torch.zeros(2, 1, 28, 28))
    assert model.training
    model.eval()
    classify(model, torch.zeros(2, 1, 28, 28))
    assert not model.training


@pytest.mark.parametrize(("images", "error"), [
    (torch.zeros(2, 28, 28), ValueError),  # no channel dim
    (torch.zeros(2, 28, 28, 1), ValueError),  # NHWC
    (torch.zeros(2, 3, 28, 28), ValueError),  # RGB
    (torch.zeros(2, 1, 64, 64), ValueError),  # other size
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), TypeError),
    (torch.full((2, 1, 28, 28), 255.0), ValueError),  # [0, 255]
    (torch.full((2, 1, 28, 28), float("nan")), ValueError),
    (np.zeros((2, 1, 28, 28), dtype=np.float32), TypeError),
])
def test_classify_rejects_bad_input(model, images, error):
    with pytest.raises(error):
        classify(model, images)


def test_conditional_accuracy_exact():
    requested = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    predicted = [0, 0, 0, 1, 1, 1, 2, 0, 2, 2]
    result = conditional_accuracy(torch.tensor(predicted), np.array(requested), 4)
    assert result["overall"] == pytest.approx(0.8)
    assert result["per_class"] == [0.75, 1.0, 0.75, None]
    assert result["min_class"] == 0.75
    assert result["counts"] == [4, 2, 4, 0]
    assert result["correct"] == [3, 2, 3, 0]
    assert result["total"] == 10 and result["num_correct"] == 8
    assert result["confusion"] == [[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    json.dumps(result)  # plain Python types only


@pytest.mark.parametrize(("predicted", "requested", "error"), [
    ([0, 1], [0], ValueError),
    ([], [], ValueError),
    ([0, 10], [0, 1], ValueError),
    ([0, 1], [-1, 1], ValueError),
    ([0.0, 1.0], [0, 1], TypeError),
])
def test_conditional_accuracy_rejects_bad_input(predicted, requested, error):
    with pytest.raises(error):
        conditional_accuracy(np.array(predicted), np.array(requested), 10)


def test_train_classifier_is_deterministic():
    train, test = _arrays(100, 0), _arrays(50, 1)
    fields = {"width": 4, "hidden": 16}
    a, acc_a = clf.train_classifier(train, test, epochs=1, batch_size=50, seed=3, log=None, **fields)
    b, acc_b = clf.train_classifier(train, test, epochs=1, batch_size=50, seed=3, log=None, **fields)
    assert acc_a == acc_b and not a.training
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name


def test_random_shift_moves_content_within_bounds():
    x = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 14, 14] = 255
    shifted = clf._random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and shifted.dtype == torch.uint8
    rows, cols = (shifted[:, 0] == 255).nonzero()[:, 1:].T
    assert len(rows) == 64 and rows.sub(14).abs().max() <= 2 and cols.sub(14).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5  # several different shifts


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    calls = []
    real_train = clf.train_classifier

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(clf, "train_classifier", counting_train)
    train, test = _arrays(200, 0), _arrays(50, 1)
    kwargs = {"cache_dir": tmp_path, "train": train, "test": test, "settings": TINY, "log": None}

    model, meta = load_or_train_classifier("tiny", **kwargs)
    assert len(calls) == 1 and not meta["cached"]
    stored = json.loads((tmp_path / "tiny-cnn.json").read_text())
    assert stored["key"]["train_sha256"] == data_sha256(train)
    assert stored["key"]["torch_version"] == torch.__version__
    assert stored["key"]["settings"]["epochs"] == 1 and stored["test_accuracy"] == meta["test_accuracy"]
    assert not list(tmp_path.glob("*.tmp"))  # temporary files were renamed or removed

    again, meta2 = load_or_train_classifier("tiny", **kwargs)
    assert len(calls) == 1 and meta2["cached"] and meta2["test_accuracy"] == meta["test_accuracy"]
    x = torch.rand(5, 1, 28, 28, dtype=torch.float32) * 2 - 1
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)

    changed = ImageArrays(train.images.copy(), train.labels, 10, train.class_names)
    changed.images[0, 0, 0, 0] ^= 1  # one bit of the training data: a new hash
    load_or_train_classifier("tiny", **{**kwargs, "train": changed})
    assert len(calls) == 2
    load_or_train_classifier("tiny", **{**kwargs, "train": changed})
    assert len(calls) == 2

    load_or_train_classifier("tiny", **{**kwargs, "train": changed, "settings": TrainSettings(**{
        **TINY.__dict__, "seed": 1})})
    assert len(calls) == 3  # other settings retrain too


def test_cache_retrains_on_damaged_files(tmp_path, monkeypatch):
    calls = []
    real_train = clf.train_classifier
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    kwargs = {"cache_dir": tmp_path, "train": _arrays(100, 0), "test": _arrays(20, 1), "settings": TINY, "log": None}
    load_or_train_classifier("tiny", **kwargs)
    (tmp_path / "tiny-cnn.json").write_text("{not json")
    load_or_train_classifier("tiny", **kwargs)
    assert len(calls) == 2
    weights = tmp_path / "tiny-cnn.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # torn weights: sha256 mismatch
    load_or_train_classifier("tiny", **kwargs)
    assert len(calls) == 3
    _, meta = load_or_train_classifier("tiny", **kwargs)
    assert len(calls) == 3 and meta["cached"]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path))
    assert clf.default_cache_dir() == tmp_path / "classifiers"
    monkeypatch.delenv("DIFFUSEKIT_CACHE")
    assert clf.default_cache_dir().parts[-3:] == (".cache", "diffusekit", "classifiers")


def _demo_quality():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_quality.py"
    spec = importlib.util.spec_from_file_location("demo_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_quality_layouts():
    to_tensor = _demo_quality().images_from_array
    u8 = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8)
    expected = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(to_tensor(u8), expected)  # uint8 NHWC
    assert torch.equal(to_tensor(u8.transpose(0, 3, 1, 2)), expected)  # uint8 NCHW
    assert torch.equal(to_tensor(expected.numpy()), expected)  # float NCHW
    assert torch.equal(to_tensor(expected.double().permute(0, 2, 3, 1).numpy()), expected)  # float NHWC
    with pytest.raises(ValueError):
        to_tensor(u8[..., 0])


@pytest.mark.parametrize(("wrong", "passed"), [
    ([], True),
    ([0, 1, 2], True),  # class 0 at 97%: just passes
    ([0, 1, 2, 3], False),  # class 0 at 96%
    ([c * 100 + i for c in range(6) for i in range(2)], False),  # every class >= 98%, overall 98.8%
])
def test_demo_quality_main(tmp_path, monkeypatch, wrong, passed):
    demo = _demo_quality()
    labels = np.repeat(np.arange(10), 100)
    np.savez(tmp_path / "samples.npz", images=np.zeros((1000, 1, 28, 28), np.float32) - 1, labels=labels)
    predicted = torch.from_numpy(labels.copy())
    predicted[wrong] = (predicted[wrong] + 1) % 10
    meta = {"test_accuracy": 0.995, "cached": True, "weights": "w", "weights_sha256": "s", "train_seconds": 1.0,
            "key": {}}
    monkeypatch.setattr(demo, "load_or_train_classifier", lambda *a, **k: (None, meta))
    monkeypatch.setattr(demo, "classify", lambda model, images: predicted)
    out = tmp_path / "out.json"
    code = demo.main([str(tmp_path / "samples.npz"), "--json", str(out), "--threads", str(torch.get_num_threads())])
    record = json.loads(out.read_text())
    assert record["overall"] == pytest.approx(1 - len(wrong) / 1000)
    assert record["classifier"]["test_accuracy"] == 0.995 and len(record["samples_sha256"]) == 64
    assert record["passed"] is passed and code == (0 if passed else 1)
