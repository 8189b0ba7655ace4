import errno
import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from diffusekit.models.checkpoint import (
    CheckpointError,
    latest_valid,
    load_checkpoint,
    prune,
    remove_partial_writes,
    save_checkpoint,
)


def _state(step):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    training = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "step": step,
                "sampler": {"position": 96, "seed": 0, "size": 10}}
    return model.state_dict(), {"fast": model.state_dict()}, training


def test_round_trip(tmp_path):
    model, emas, training = _state(3)
    path = save_checkpoint(tmp_path, 96, model, emas, training)
    nimg, model2, emas2, training2 = load_checkpoint(path)
    assert nimg == 96 and training2["step"] == 3 and torch.equal(training2["rng"], training["rng"])
    torch.testing.assert_close(model2["weight"], model["weight"])
    torch.testing.assert_close(emas2["fast"]["bias"], emas["fast"]["bias"])
    assert training2["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)


def test_damaged_newest_falls_back_with_a_warning(tmp_path):
    for nimg in (32, 64):
        save_checkpoint(tmp_path, nimg, *_state(nimg))
    newest = tmp_path / "ckpt-000000000064" / "weights.safetensors"
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    with pytest.warns(UserWarning, match="ckpt-000000000064.*checksum"):
        assert latest_valid(tmp_path).name == "ckpt-000000000032"
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "ckpt-000000000064")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = save_checkpoint(tmp_path, 8, *_state(1))
    with open(path / "state.pt", "wb") as f:
        pickle.dump({"step": Payload()}, f, protocol=2)
    # re-sign the file so only the loader's own refusal can stop it
    meta = json.loads((path / "meta.json").read_text())
    meta["sha256"]["state.pt"] = hashlib.sha256((path / "state.pt").read_bytes()).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_disk_full_leaves_previous_checkpoints_and_says_so(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 16, *_state(1))
    before = load_checkpoint(tmp_path / "ckpt-000000000016")[1]
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):  # half the file lands, then the device is full
        real_save(obj, path, *args, **kwargs)
        size = Path(path).stat().st_size
        os.truncate(path, size // 2)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"no space left .*ckpt-0+32.*intact \(newest: .*ckpt-0+16"):
        save_checkpoint(tmp_path, 32, *_state(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000000016"]
    assert latest_valid(tmp_path).name == "ckpt-000000000016"
    after = load_checkpoint(tmp_path / "ckpt-000000000016")[1]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_other_write_errors_propagate_unchanged(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(PermissionError):
        save_checkpoint(tmp_path, 32, *_state(2))
    assert list(tmp_path.iterdir()) == []


def test_remove_partial_writes_keeps_finished_checkpoints(tmp_path):
    save_checkpoint(tmp_path, 16, *_state(1))
    (tmp_path / ".tmp-ckpt-000000000032-123").mkdir()
    (tmp_path / ".tmp-ckpt-000000000032-123" / "weights.safetensors").write_bytes(b"half")
    removed = remove_partial_writes(tmp_path)
    assert [p.name for p in removed] == [".tmp-ckpt-000000000032-123"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000000016"]


def test_prune_keeps_newest_and_milestones(tmp_path):
    for nimg in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, nimg, *_state(0))
    prune(tmp_path, keep=2, milestone_every=20)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000000000020", "ckpt-000000000040", "ckpt-000000000050"]
