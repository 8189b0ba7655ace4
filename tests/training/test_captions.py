"""Caption-conditioned training (data.captions): the caption table, a tiny text-only run, its exact resume, and
sampling it with --prompt."""

import json

import numpy as np
import pytest
import torch

from diffusekit.cli import main
from diffusekit.config import ConfigError, resolve
from diffusekit.data.captions import captions_for
from diffusekit.models.build import network_conditioning
from diffusekit.text import TextEncoder
from diffusekit.training.captions import CaptionTable, caption_table
from diffusekit.training.make import train

from ..assets import require_text_encoder
from .resume_check import assert_resume_is_bit_identical

require_text_encoder()
needs_mnist = pytest.mark.usefixtures("mnist_installed")  # the tiny preset trains on MNIST
CONFIG = ["data.captions=true", "data.limit=64", "run.total_images=96", "run.checkpoint_every=32",
          "optim.batch_size=16", "run.log_every=32", "network.options={dropout: 0.1}", "eval.every=null"]


def test_caption_table_matches_direct_encoding():
    per_class = captions_for("mnist")
    table = caption_table("mnist")
    assert table.captions == [c for captions in per_class for c in captions]
    assert table.count.tolist() == [len(c) for c in per_class] and table.num_classes == 10
    rows = [table.start[7] + j for j in range(len(per_class[7]))]
    direct = TextEncoder().encode(per_class[7])
    length = direct.states.shape[1]
    for j, row in enumerate(rows):
        assert table.captions[row] == per_class[7][j]
        assert torch.equal(table.mask[row, :length], direct.mask[j]) and not table.mask[row, length:].any()
        torch.testing.assert_close(table.states[row, :length], direct.states[j], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(table.pooled[row], direct.pooled[j], atol=1e-5, rtol=1e-5)


def test_pick_draws_captions_of_the_right_class():
    table = CaptionTable(["a", "b", "c"], torch.zeros(3, 1, 2), torch.ones(3, 1, dtype=torch.bool),
                         torch.zeros(3, 2), torch.tensor([0, 1]), torch.tensor([1, 2]))
    labels = torch.tensor([0, 1] * 200)
    rows = table.pick(labels, torch.Generator().manual_seed(0))
    assert (rows[labels == 0] == 0).all()
    ones = rows[labels == 1]
    assert set(ones.tolist()) == {1, 2} and 60 < int((ones == 1).sum()) < 140


def test_config_checks():
    config = resolve("tiny", overrides=["data.captions=true"])
    assert network_conditioning(config, (1, 16, 16)) == {"text_dim": 384}
    assert resolve("mnist-text").data.captions
    with pytest.raises(ConfigError, match="data.captions: dataset 'tiles' has no captions"):
        resolve("tiny", overrides=["data.captions=true", "data.name=tiles"])
    with pytest.raises(ConfigError, match="data.conditional"):
        resolve("tiny", overrides=["data.captions=true", "data.conditional=false"])


@needs_mnist
def test_text_run_resumes_bit_identically_and_samples_with_prompts(tmp_path, capsys):
    from diffusekit.data import load_training_data

    config = resolve("tiny", overrides=CONFIG)
    data = load_training_data(config.data)
    whole = train(config, data, tmp_path / "whole")
    assert whole.num_classes == 0 and whole.info["num_classes"] == 0 and whole.network.text_dim == 384
    # the text condition reaches the network: the null text and a caption give different outputs
    x, t = torch.zeros(2, 1, 16, 16), torch.full((2,), 0.5)
    cond = whole.captions.condition(torch.tensor([0, 0]))
    cond["text_null"] = torch.tensor([False, True])
    whole.network.eval()
    out = whole.network(x, t, cond)
    assert not torch.allclose(out[0], out[1])

    assert whole.cur_nimg == 96
    # stopped at 48 images, the last checkpoint at 32: 16 images are redone
    assert_resume_is_bit_identical(whole, config, data, tmp_path / "split", 48, "ckpt-000000000032")

    run = str(tmp_path / "whole")
    out = tmp_path / "seven.npz"
    common = ["--steps", "2", "--threads", "1", "--quiet"]
    assert main(["sample", run, "--prompt", "a handwritten seven", "--n", "2", "--out", str(out), *common]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (2, 1, 16, 16) and np.isfinite(f["images"]).all()
        assert json.loads(str(f["meta"]))["prompts"] == ["a handwritten seven"]
    grid = tmp_path / "two.png"
    assert main(["sample", run, "--prompt", "a handwritten seven", "--prompt", "the digit 1", "--n", "4",
                 "--guidance", "2", "--out", str(grid), *common]) == 0
    assert grid.is_file()
    capsys.readouterr()
    assert main(["sample", run, "--n", "2", "--out", str(tmp_path / "x.png"), *common]) == 2
    assert "text-conditioned (data.captions): give what to draw with --prompt" in capsys.readouterr().err


@needs_mnist
def test_prompt_to_a_run_without_text_is_refused(tmp_path, capsys):
    from diffusekit.data import load_training_data

    config = resolve("tiny", overrides=[*CONFIG[1:], "data.captions=false", "run.total_images=16",
                                        "run.checkpoint_every=16"])
    train(config, load_training_data(config.data), tmp_path)
    capsys.readouterr()
    assert main(["sample", str(tmp_path), "--prompt", "a seven", "--n", "2", "--out", str(tmp_path / "x.png"),
                 "--quiet"]) == 2
    assert "is not text-conditioned" in capsys.readouterr().err


@needs_mnist
def test_cli_text_run_writes_a_guided_grid_with_a_row_per_class(tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    sets = [a for pair in (("--set", s) for s in CONFIG + ["run.total_images=32", "sample.guidance=2.0"])
            for a in pair]
    assert main(["train", "--preset", "tiny", "--quiet", "--threads", "1", "--run-dir", str(run), *sets]) == 0
    grid = Image.open(run / "samples" / "grid-000000000032.png")
    assert grid.size == (2 + 2 * 18, 2 + 10 * 18)  # 10 caption rows (the first caption of each class) x 2 columns
