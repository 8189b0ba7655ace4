"""Files from outside are never unpickled: a checkpoint or statistics file carrying a pickle payload is
refused with a clear error and the payload never runs; nothing opens a network connection."""

import hashlib
import json
import os
import pickle
import socket

import numpy as np
import pytest

from diffusekit.cli import main
from diffusekit.metrics.stats import load_stats

from .assets import inception_weights_available, require_inception_weights

needs_mnist = pytest.mark.usefixtures("mnist_installed")  # the tiny preset trains on MNIST
TINY = ["train", "--preset", "tiny", "--quiet", "--threads", "1", "--images", "64", "--set", "run.checkpoint_every=64"]


class Payload:
    """Unpickling this creates the file ``PWNED`` in the working directory."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert main([*TINY, "--run-dir", str(run)]) == 0
    return run


def _resign(checkpoint, name):
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["sha256"][name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "meta.json").write_text(json.dumps(meta))


@needs_mnist
@pytest.mark.parametrize("member", ["state.pt", "weights.safetensors"])
def test_a_checkpoint_with_a_pickle_payload_is_refused(tiny_run, tmp_path, monkeypatch, capsys, member):
    monkeypatch.chdir(tmp_path)
    checkpoint = tiny_run / "checkpoints" / "ckpt-000000000064"
    with open(checkpoint / member, "wb") as f:
        pickle.dump({"state": Payload()}, f)
    _resign(checkpoint, member)  # checksums match: only the loader's refusal can stop it
    code = main(["sample", str(tiny_run), "--n", "2", "--out", str(tmp_path / "x.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "refused to load" in err and member in err and "Traceback" not in err
    assert main([*TINY, "--run-dir", str(tiny_run), "--images", "128"]) == 2  # resuming refuses it too
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", ["object-array", "raw-pickle"])
def test_a_statistics_file_with_a_pickle_payload_is_refused(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "stats.npz"
    if kind == "object-array":
        payload = np.empty(1, dtype=object)
        payload[0] = Payload()
        np.savez(path, mu=payload, sigma=np.eye(2))
    else:
        path.write_bytes(pickle.dumps({"mu": Payload()}))
    with pytest.raises(ValueError, match="pickle"):
        load_stats(path)
    images = tmp_path / "images.npz"
    np.savez(images, images=np.zeros((2, 3, 8, 8), np.uint8))
    code = main(["fid", str(images), str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "pickle" in err and "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()


def test_every_loader_in_the_package_refuses_pickles():
    """A guard for new code: each np.load passes allow_pickle=False, each torch.load weights_only=True, and
    nothing imports pickle (TorchScript's jit.load reads only the installed Inception weights)."""
    from pathlib import Path

    import diffusekit

    for path in Path(diffusekit.__file__).parent.rglob("*.py"):
        text = path.read_text()
        for call in text.split("np.load(")[1:]:
            assert "allow_pickle=False" in call.split(")")[0] + call.split("\n")[0], path
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call.split("\n")[0], path
        assert "import pickle" not in text, path


@needs_mnist
def test_train_sample_and_fid_open_no_network_connection(tmp_path, monkeypatch):
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    run = tmp_path / "run"
    assert main([*TINY, "--run-dir", str(run)]) == 0
    assert main(["sample", str(run), "--n", "10", "--quiet", "--out", str(tmp_path / "s.npz")]) == 0
    if inception_weights_available():
        assert main(["fid", str(tmp_path / "s.npz"), str(tmp_path / "s.npz"), "--quiet"]) == 0
    assert attempts == []
    require_inception_weights()  # `fid` was left out without the weights: say so (a failure under CI)
