"""`diffusekit restore` end to end on a tiny model (a few seconds of training on MNIST digits at 16x16)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusekit.cli import main
from diffusekit.cli.restore import check_gradients
from diffusekit.config import resolve
from diffusekit.data import ImageArrays, load
from diffusekit.data.transform import resize_arrays
from diffusekit.errors import InverseProblemError
from diffusekit.training.make import train

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
    (["--task", "inpaint", "--option", "jump_length=3"], "--option jump_length: method pocs has no option jump_length"),
    (["--task", "inpaint", "--option", "dps.scale=3"], "--option dps.scale: dps is not a --method of this command"),
    (["--task", "inpaint", "--guidance", "2"], "--guidance: method pocs has no step size or weight"),
    (["--task", "inpaint", "--particles", "2"], "--particles: method pocs has no option particles"),
    (["--task", "inpaint", "--method", "magic"], "--method 'magic': unknown; choose from replacement,"),
    (["--task", "inpaint", "--method", "smc", "--option", "particles=many"],
     "--option particles=many: smc's particles must be an integer"),
    (["--task", "inpaint", "--method", "ccdf", "--option", "init=0"], "ccdf's init is an array"),
    (["--task", "inpaint", "--method", "dps", "--guidance", "nan"], "--guidance must be a finite number"),
], ids=["factor", "measurement-shape", "stray-flag", "unknown-option", "other-method", "guidance", "particles",
        "method", "option-type", "tensor-option", "non-finite-guidance"])
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


def test_every_kind_of_method_option_reaches_its_method(run, digits, tmp_path, capsys):
    path, _ = digits
    out = tmp_path / "all.npz"
    assert restore(run, "--task", "inpaint", "--degrade", "--input", str(path), "--out", str(out),
                   "--method", "dps,smc,ccdf,repaint", "--guidance", "0.5", "--particles", "2",
                   "--option", "t0=0.5", "--option", "repaint.resamples=2", "--option", "repaint.jump_length=1") == 0
    data = np.load(out)
    meta = json.loads(str(data["meta"]))
    assert meta["options"] == {"dps": {"scale": 0.5}, "smc": {"particles": 2}, "ccdf": {"t0": 0.5},
                               "repaint": {"resamples": 2, "jump_length": 1}}
    for method in ("dps", "smc", "ccdf", "repaint"):
        assert data[f"images_{method}"].shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(data["images"], data["images_dps"])  # the first method
    scores = meta["scores"]
    # NFE per image: 3 steps; smc runs 2 particles per image; ccdf starts halfway down the grid; repaint
    # resamples each one-step jump twice
    assert scores["dps"]["nfe_per_image"] == 3 and scores["smc"]["nfe_per_image"] == 6
    assert scores["ccdf"]["nfe_per_image"] < 3 and scores["repaint"]["nfe_per_image"] > 3
    printed = capsys.readouterr().out
    assert all(f"| {m} |" in printed for m in ("dps", "smc", "ccdf", "repaint", "(measurement, lifted)"))


def test_a_gradient_method_on_a_model_without_gradients_is_refused():
    def frozen(x, t, cond):  # a denoiser run without autograd, e.g. one compiled for inference only
        with torch.no_grad():
            return x * 0.5
    with pytest.raises(InverseProblemError, match="method dps differentiates .* gives no gradients"):
        check_gradients(frozen, None, (1, 4, 4), None, "dps")
    check_gradients(lambda x, t, cond: x * 0.5, None, (1, 4, 4), None, "dps")  # one that does is let through


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, digits):
    """A tiny latent model (2x8x8 latents of a 16x16 autoencoder), trained for a few seconds."""
    root = tmp_path_factory.mktemp("latent")
    data = resize_arrays(load("mnist", "test"), 16, 1)
    data = ImageArrays(data.images[:24], data.labels[:24], 10, data.class_names)
    train(resolve("tiny", overrides=[
        "network.kind=autoencoder", "network.preset=f4", "autoencoder.gan_weight=0",
        "network.options={block_out_channels: [8, 8], norm_num_groups: 4, latent_channels: 2}",
        "run.total_images=16", "optim.batch_size=8", "run.checkpoint_every=16", "eval.validation=none",
        "ema.half_lives={ema: 64}", "autoencoder.stats_images=16"]), data, root / "ae")
    train(resolve("tiny", overrides=[
        f"latent.autoencoder={root / 'ae'}", f"latent.cache_dir={root / 'cache'}", "run.total_images=16",
        "optim.batch_size=8", "run.checkpoint_every=16", "eval.validation=none",
        "network.options={model_channels: 16, channel_mult: [1], attn_resolutions: []}"]), data, root / "latent")
    return root / "latent"


def test_a_latent_model_restores_through_its_decoder_and_refuses_pixel_methods(latent_run, digits, tmp_path, capsys):
    path, _ = digits
    out = tmp_path / "latent.npz"
    common = ["--task", "super-resolution", "--factor", "2", "--degrade", "--input", str(path)]
    assert restore(latent_run, *common, "--method", "dps", "--out", str(out)) == 0
    images = np.load(out)["images"]
    assert images.shape == (4, 16, 16, 1)  # decoded: the operator measured images, not latents
    capsys.readouterr()
    assert restore(latent_run, *common, "--method", "pocs", "--out", str(tmp_path / "no.npz")) == 2
    assert "method 'pocs' acts on the pixels of the sample itself" in _error(capsys)
    assert not (tmp_path / "no.npz").exists()
