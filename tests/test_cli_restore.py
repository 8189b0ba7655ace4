"""`diffusekit restore` end to end on a tiny model (a few seconds of training on MNIST digits at 16x16)."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusekit.cli import main
from diffusekit.data import load
from diffusekit.data.transform import resize_arrays

from .assets import require_mnist

require_mnist()  # the tiny preset trains on MNIST

TRAIN = ["train", "--preset", "tiny", "--quiet", "--threads", "1", "--set", "run.checkpoint_every=64",
         "--set", "run.log_every=32", "--set", "run.sample_every=128", "--images", "64"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("restore") / "run"
    assert main([*TRAIN, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Four MNIST test digits at the tiny model's 16x16, as a uint8 NHWC .npz (what `restore --input` reads)."""
    pixels = resize_arrays(load("mnist", "test"), 16, 1).images[:4]
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, images=pixels)
    return path, pixels


def restore(run, *flags):
    return main(["restore", str(run), "--steps", "3", "--quiet", "--threads", "1", *flags])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_degraded_inpainting_by_pocs_keeps_the_observed_pixels_and_reports_scores(run, digits, tmp_path, capsys):
    path, pixels = digits
    out = tmp_path / "pocs.npz"
    assert restore(run, "--task", "inpaint", "--mask", "box", "--method", "pocs", "--degrade", "--input", str(path),
                   "--out", str(out), "--out", str(tmp_path / "pocs.png")) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "| pocs |" in printed
    psnr = float(printed.split("| pocs |")[1].split("|")[0])
    assert 5 < psnr < 60
    data = np.load(out)
    assert data["images"].shape == (4, 16, 16, 1) and data["images"].dtype == np.uint8
    np.testing.assert_array_equal(data["images_pocs"], data["images"])
    np.testing.assert_array_equal(data["truth"], pixels)
    mask = data["mask"]
    assert mask.shape == (16, 16) and mask.dtype == bool
    # box: the centre 8x8 square missing, the rest observed
    expected = np.ones((16, 16), bool)
    expected[4:12, 4:12] = False
    np.testing.assert_array_equal(mask, expected)
    # noiseless measurements: the observed pixels come back exactly, to uint8 rounding
    np.testing.assert_array_equal(data["images"][:, mask], pixels[:, mask])
    assert data["measurements"].shape == (4, 1, 16, 16) and data["measurements"].dtype == np.float32
    np.testing.assert_array_equal(data["measurements"][:, 0][:, ~mask], 0)  # unobserved entries are zero
    meta = json.loads(str(data["meta"]))
    assert meta["task"] == "inpaint" and meta["methods"] == ["pocs"] and meta["degrade"] is True
    assert set(meta["scores"]["pocs"]) >= {"psnr", "ssim", "residual", "nfe_per_image", "s_per_image"}
    assert meta["scores"]["pocs"]["residual"] < 1e-4
    # the grid: measurement, restoration, truth rows of 4 images of 16 px, 2 px padding
    assert Image.open(tmp_path / "pocs.png").size == (2 + 4 * 18, 2 + 3 * 18)


def test_super_resolution_from_low_resolution_images_and_several_methods(run, digits, tmp_path, capsys):
    _, pixels = digits
    low = pixels.reshape(4, 4, 4, 4, 4, 1).mean((2, 4)).round().astype(np.uint8)  # 4x4 box averages
    folder = tmp_path / "low"
    folder.mkdir()
    for i, image in enumerate(low):
        Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
    out = tmp_path / "sr.npz"
    assert restore(run, "--task", "super-resolution", "--factor", "4", "--method", "ilvr,replacement",
                   "--input", str(folder), "--out", str(out)) == 0
    data = np.load(out)
    assert set(data.files) == {"images", "images_ilvr", "images_replacement", "measurements", "meta"}
    assert data["measurements"].shape == (4, 1, 4, 4)
    np.testing.assert_allclose((data["measurements"] + 1) * 127.5, low.transpose(0, 3, 1, 2), atol=1e-4)
    assert data["images"].shape == (4, 16, 16, 1)
    assert "PSNR" in capsys.readouterr().out  # the table; no truth: PSNR and SSIM are "-"


def test_an_output_naming_the_input_is_refused_and_the_input_kept(run, digits, tmp_path, capsys):
    path, _ = digits
    copy = tmp_path / "in.npz"
    copy.write_bytes(path.read_bytes())
    before = copy.read_bytes()
    assert restore(run, "--task", "inpaint", "--method", "pocs", "--input", str(copy), "--out", str(copy)) == 2
    assert "inputs are never overwritten" in _error(capsys)
    assert copy.read_bytes() == before
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "a.png")
    assert restore(run, "--task", "inpaint", "--method", "pocs", "--input", str(folder),
                   "--out", str(folder / "out.png")) == 2
    assert "is inside the input" in _error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_existing_outputs_are_replaced(run, digits, tmp_path):
    path, _ = digits
    out = tmp_path / "again.npz"
    out.write_bytes(b"old")
    assert restore(run, "--task", "deblur", "--method", "pocs", "--degrade", "--input", str(path),
                   "--out", str(out)) == 0
    assert np.load(out)["images"].shape == (4, 16, 16, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["again.npz"]  # no temporary file left behind


@pytest.mark.parametrize("flags, message", [
    (["--task", "super-resolution", "--factor", "3"], "3"),  # 3 does not divide 16
    (["--task", "super-resolution"], "1x16x16 images, but the model's super-resolution measurements are 1x4x4"),
    (["--task", "inpaint", "--factor", "2"], "--factor does not apply to --task inpaint"),
    (["--task", "inpaint", "--option", "jump_length=3"], "not an option of method pocs"),
    (["--task", "inpaint", "--guidance", "2"], "method pocs has no step size"),
    (["--task", "inpaint", "--particles", "2"], "method pocs draws no particles"),
], ids=["factor", "measurement-shape", "stray-flag", "unknown-option", "guidance", "particles"])
def test_bad_requests_are_one_line_errors(run, digits, tmp_path, capsys, flags, message):
    path, _ = digits
    out = tmp_path / "x.npz"
    assert restore(run, "--method", "pocs", "--input", str(path), "--out", str(out), *flags) == 2
    assert message in _error(capsys)
    assert not out.exists()


def test_a_mask_of_another_shape_and_an_empty_mask_are_refused(run, digits, tmp_path, capsys):
    path, _ = digits
    small = tmp_path / "small.npy"
    np.save(small, np.ones((8, 8), bool))
    assert restore(run, "--task", "inpaint", "--mask", str(small), "--method", "pocs", "--input", str(path),
                   "--out", str(tmp_path / "x.npz")) == 2
    err = _error(capsys)
    assert "(8, 8)" in err and "(1, 16, 16)" in err
    empty = tmp_path / "empty.png"  # white = missing: all of it
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(empty)
    assert restore(run, "--task", "inpaint", "--mask", str(empty), "--method", "pocs", "--input", str(path),
                   "--out", str(tmp_path / "x.npz")) == 2
    assert "observes nothing" in _error(capsys)
