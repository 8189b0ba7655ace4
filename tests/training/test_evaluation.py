"""In-training evaluation: FID/KID and noise-level records, the best checkpoint, early stopping across resumes."""

import math

import pytest
import torch

from diffusekit.config import resolve
from diffusekit.data import load_training_data
from diffusekit.models.checkpoint import latest_valid, load_checkpoint
from diffusekit.monitor import read_metrics
from diffusekit.monitor.tensorboard import read_scalars
from diffusekit.training.evaluation import TrainingEvaluator
from diffusekit.training.rundir import RunDirectory


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "cache"))


def _config(*overrides):
    base = ["run.total_images=64", "optim.batch_size=16", "run.checkpoint_every=32", "run.log_every=32",
            "data.limit=256", "sample.steps=2", "eval.every=32", "eval.num_samples=8", "eval.reference_count=8",
            "eval.extractor=inception-fast", "eval.extractor_resolution=75", "eval.loss_every=32",
            "eval.loss_bins=4", "eval.loss_per_bin=4"]
    return resolve("tiny", overrides=base + list(overrides))


def _run(config, path, **kwargs):
    run_dir = RunDirectory(path, config)
    trainer = None
    try:
        data = load_training_data(config.data)
        from diffusekit.training.loop import Trainer

        trainer = Trainer(config, data, path)
        trainer.resume()
        run_dir.open(trainer.cur_nimg, trainer.device)
        trainer.run(hooks=run_dir, **kwargs)
    finally:
        run_dir.close()
    return trainer


def test_records_go_to_jsonl_and_tensorboard_and_the_best_checkpoint_is_kept(tmp_path):
    trainer = _run(_config(), tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    fids = [r for r in records if "fid" in r]
    noise = [r for r in records if "noise/train/mean" in r]
    assert [r["cur_nimg"] for r in fids] == [32, 64] and [r["cur_nimg"] for r in noise] == [32, 64]
    for r in fids:
        assert math.isfinite(r["fid"]) and r["fid"] > 0 and "kid" in r and r["extractor"] == "inception-fast-75"
    assert fids[0]["improved"] and fids[0]["best_fid"] == fids[0]["fid"]
    best = min(fids, key=lambda r: r["fid"])
    assert trainer.evaluator.best_fid == pytest.approx(best["fid"]) and trainer.evaluator.best_nimg == best["cur_nimg"]
    kept = sorted(p.name for p in (tmp_path / "run" / "best").iterdir())
    assert kept == [f"ckpt-{best['cur_nimg']:012d}"]  # only the best is kept
    # validation loss per bin, on MNIST's test split, beside the training loss and their gap
    keys = [k for k in noise[0] if k.startswith("noise/val/")]
    assert len(keys) == 5 and all(math.isfinite(noise[0][k]) for k in keys)
    assert noise[0]["noise/gap/mean"] == pytest.approx(noise[0]["noise/val/mean"] - noise[0]["noise/train/mean"])
    tags = {tag for tag, _, _ in read_scalars(tmp_path / "run" / "tensorboard")}
    assert {"eval/fid", "eval/kid", "noise/gap/mean", "train/loss"} <= tags
    # the checkpoint carries the evaluation state
    _, _, _, state = load_checkpoint(latest_valid(tmp_path / "run" / "checkpoints"))
    assert state["evaluation"]["best_fid"] == pytest.approx(best["fid"])


def test_early_stop_survives_resume_and_patience_can_be_raised(tmp_path, monkeypatch):
    import diffusekit.training.evaluation as evaluate  # where feature_metrics is looked up

    scripted = iter([3.0, 2.0, 2.5, 2.6, 1.0, 1.5, 1.6, 1.7])
    monkeypatch.setattr(TrainingEvaluator, "_prepare", lambda self, device: setattr(self, "_extractor", _Named()))
    monkeypatch.setattr(evaluate, "feature_metrics", lambda *a, **k: ({"fid": next(scripted)}, None))
    config = _config("run.total_images=256", "run.checkpoint_every=1000", "eval.patience=2", "eval.loss_every=null")
    trainer = _run(config, tmp_path / "run")
    assert trainer.cur_nimg == 128  # 3.0 (best), 2.0 (best), 2.5, 2.6: two without improvement
    assert latest_valid(tmp_path / "run" / "checkpoints").name == "ckpt-000000000128"  # saved at the stop
    assert [p.name for p in (tmp_path / "run" / "best").iterdir()] == ["ckpt-000000000064"]
    again = _run(config, tmp_path / "run")  # resuming a stopped run does nothing
    assert again.cur_nimg == 128 and again.evaluator.since_best == 2
    more = _run(_config("run.total_images=256", "run.checkpoint_every=1000", "eval.patience=5",
                        "eval.loss_every=null"), tmp_path / "run")
    assert more.cur_nimg == 256 and more.evaluator.best_fid == 1.0 and more.evaluator.best_nimg == 160
    fids = [r["fid"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "fid" in r]
    assert fids == [3.0, 2.0, 2.5, 2.6, 1.0, 1.5, 1.6, 1.7]


class _Named:
    """A stand-in feature extractor: its features are ignored by the scripted feature_metrics."""

    name, dim = "scripted", 4

    def __call__(self, batch):
        return torch.zeros(batch.shape[0], self.dim)


def test_best_tracking_counts_evaluations_and_ignores_nan():
    evaluator = TrainingEvaluator(_config("eval.patience=2"), data=None)
    assert evaluator.update_best(5.0, 10) and not evaluator.should_stop
    assert not evaluator.update_best(float("nan"), 20)
    assert not evaluator.update_best(6.0, 30) and evaluator.should_stop
    assert evaluator.state_dict() == {"best_fid": 5.0, "best_nimg": 10, "since_best": 2, "evaluations": 3}
    restored = TrainingEvaluator(_config(), data=None)
    restored.load_state_dict(evaluator.state_dict())
    assert restored.state_dict() == evaluator.state_dict()


def test_info_shows_the_last_evaluation(tmp_path, monkeypatch, capsys):
    import diffusekit.training.evaluation as evaluate  # where feature_metrics is looked up
    from diffusekit.cli import main

    monkeypatch.setattr(TrainingEvaluator, "_prepare", lambda self, device: setattr(self, "_extractor", _Named()))
    monkeypatch.setattr(evaluate, "feature_metrics", lambda *a, **k: ({"fid": 7.25}, None))
    _run(_config("eval.loss_every=null"), tmp_path / "run")
    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "last evaluation: 64 images, FID 7.250 (scripted), best 7.250 at 32 images" in out
    assert "last log: 64 images, loss" in out
