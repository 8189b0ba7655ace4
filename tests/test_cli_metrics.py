"""`diffusekit fid | ref-stats | eval` end to end (few images: the standard Inception runs at ~4 img/s on 2 cores)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffusekit.cli import main
from diffusekit.data import load
from diffusekit.metrics.inception import inception_weights_path
from diffusekit.metrics.stats import load_stats


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSEKIT_CACHE", str(tmp_path / "cache"))


def _folder(path, images):
    path.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(path / f"{i:03d}.png")
    return path


def _direct_fid(folder_a, folder_b):
    """FID computed independently: features the way pytorch-fid makes them (PIL RGB -> /255 -> bilinear 299 ->
    2x - 1 -> network), then the Frechet distance in closed form for sample covariances. With centred features
    A = Xa^T / sqrt(n - 1) the covariance is A A^T, and tr((Sa Sb)^1/2) is the nuclear norm of A^T B (an n x n
    matrix): exact, where scipy's sqrtm of the singular 2048 x 2048 product is slow and inaccurate."""
    net = torch.jit.load(str(inception_weights_path())).eval()

    def features(folder):
        batch = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
                 for p in sorted(folder.iterdir())]
        x = F.interpolate(torch.stack(batch), size=(299, 299), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return net(2 * x - 1).double().numpy()

    fa, fb = features(folder_a), features(folder_b)
    a = (fa - fa.mean(0)).T / np.sqrt(len(fa) - 1)
    b = (fb - fb.mean(0)).T / np.sqrt(len(fb) - 1)
    diff = fa.mean(0) - fb.mean(0)
    return diff @ diff + (a * a).sum() + (b * b).sum() - 2 * np.linalg.svd(a.T @ b, compute_uv=False).sum()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    train, test = load("mnist", "train"), load("mnist", "test")
    return _folder(root / "a", train.images[:12]), _folder(root / "b", test.images[:12])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fid_of_two_folders_agrees_with_a_direct_computation(folders, capsys, tmp_path):
    a, b = folders
    assert main(["fid", str(a), str(b), "--json", "--quiet", "--batch-size", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = _direct_fid(a, b)
    assert result["fid"] == pytest.approx(expected, rel=1e-3)
    assert result["n_a"] == result["n_b"] == 12 and result["extractor"] == "inception-v3-tf2015"
    assert result["comparable_to_published"] and result["preprocess"] == "pytorch"
    # statistics files stand in for folders and give the same number; a folder against itself gives 0
    assert main(["ref-stats", "mnist", "--split", "test", "--n", "12", "--out", str(tmp_path / "b.npz"),
                 "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    stats = load_stats(tmp_path / "b.npz")
    assert stats.count == 12 and stats.features.shape == (12, 2048)
    assert stats.meta["dataset"] == "mnist" and stats.meta["split"] == "test" and stats.meta["resolution"] == 28
    assert stats.meta["config_hash"] and stats.meta["preprocess"] == "pytorch"
    assert main(["fid", str(a), str(tmp_path / "b.npz"), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(result["fid"], rel=1e-9)
    assert main(["fid", str(tmp_path / "b.npz"), str(tmp_path / "b.npz")]) == 0
    assert capsys.readouterr().out.strip() == "FID: 0.0000"


def test_fid_refuses_statistics_from_other_settings(folders, capsys, tmp_path):
    a, _ = folders
    assert main(["ref-stats", "mnist", "--n", "4", "--out", str(tmp_path / "tf.npz"), "--preprocess", "tf",
                 "--quiet"]) == 0
    assert main(["fid", str(a), str(tmp_path / "tf.npz")]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["fid", "nowhere", "nowhere2"], "no such file or folder"),
    (["ref-stats", "mnist", "--out", "x.txt"], "written as .npz"),
    (["eval", "nowhere", "--metrics", "fid,speed"], "unknown speed"),
])
def test_errors_name_the_problem(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_eval_of_a_run_writes_results_and_memorization_grids(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--run-dir", str(run), "--images", "64", "--quiet",
                 "--set", "run.checkpoint_every=64"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--metrics", "fid,kid,precision_recall,memorization", "--n", "12", "--quiet",
                 "--extractor", "inception-fast", "--resolution", "75", "--memorization-space", "pixel",
                 "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 12 and result["extractor"] == "inception-fast-75" and not result["comparable_to_published"]
    assert np.isfinite(result["fid"]) and "kid_std" in result and 0 <= result["precision"] <= 1
    assert result["memorization"]["pixel"]["n"] == 12
    # the 12 samples of smallest ratio beside their 2 nearest training digits (16x16 tiles, 2-pixel borders)
    assert result["memorization"]["pixel"]["nearest_grid"] == str(out / "memorization-pixel-nearest.png")
    assert Image.open(out / "memorization-pixel-nearest.png").size == (3 * 18 + 2, 12 * 18 + 2)
    assert json.loads((out / "results.json").read_text())["fid"] == result["fid"]
    assert (out / "samples.png").exists()
    # per-sample seeds: the same command gives the same numbers
    assert main(["eval", str(run), "--metrics", "fid", "--n", "12", "--quiet", "--extractor", "inception-fast",
                 "--resolution", "75", "--out", str(tmp_path / "again"), "--json", "--batch-size", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(result["fid"], rel=1e-6)
    # guidance flags reach the evaluation and are recorded with the result
    assert main(["eval", str(run), "--metrics", "fid", "--n", "12", "--quiet", "--extractor", "inception-fast",
                 "--resolution", "75", "--out", str(tmp_path / "guided"), "--json", "--guidance", "2",
                 "--guidance-interval", "0.5", "5", "--threshold", "static"]) == 0
    guided = json.loads(capsys.readouterr().out)
    assert guided["guidance_settings"] == {"scale": 2.0, "interval": [0.5, 5.0], "threshold": "static"}
    assert guided["fid"] != result["fid"]
    # --out naming a file (or a path under one) is refused before any sampling, and the file is left alone
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for bad in (notes, notes / "sub"):
        assert main(["eval", str(run), "--metrics", "fid", "--n", "4", "--quiet", "--out", str(bad)]) == 2
        assert f"{notes} is a file, not a directory" in capsys.readouterr().err
    assert notes.read_text() == "keep me"
