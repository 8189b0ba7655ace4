"""models.transfer: which sources are refused (by name), what a network of another kind or conditioning takes over."""

import pytest
import torch

from diffusekit.config import resolve, to_dict
from diffusekit.errors import BadFileError, MissingFileError
from diffusekit.models import TEXT_DIM, build_network, read_source, transfer_weights
from diffusekit.models.checkpoint import load_checkpoint, save_checkpoint

INFO = {"image_shape": [1, 8, 8], "num_classes": 2, "class_names": ["a", "b"]}
UNET = "network.options={attn_resolutions: [4]}"


def _checkpoint(directory, config, info=INFO):
    """A checkpoint of ``config``'s network as initialised (seed 0), its one EMA (``ema``) the same weights."""
    torch.manual_seed(0)
    network = build_network(config.network, tuple(info["image_shape"]), info["num_classes"])
    state = {"config": to_dict(config), "data_info": info, "optimizer": {}}
    return save_checkpoint(directory, 0, network.state_dict(), {"ema": network.state_dict()}, state)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The checkpoint of an untrained tiny U-Net for 2 classes of 1x8x8 images (its weights: the initialisation)."""
    return _checkpoint(tmp_path_factory.mktemp("source") / "run" / "checkpoints", resolve("tiny", overrides=[UNET]))


def _relabelled(source, tmp_path, *, network: str | None = None, image_shape=None, latent=None):
    """A copy of ``source`` whose stored config / data description says it is another kind of model."""
    cur_nimg, model, emas, state = load_checkpoint(source)
    config = to_dict(resolve("tiny", overrides=[UNET]))
    if network is not None:
        config["network"]["kind"] = network
    state["config"] = config
    state["data_info"] = {**INFO, **({"image_shape": image_shape} if image_shape else {}),
                          **({"latent": latent} if latent else {})}
    return save_checkpoint(tmp_path / "relabelled", cur_nimg, model, emas, state)


def test_added_text_and_augmentation_inputs_are_new_and_the_rest_is_copied(source):
    config = resolve("tiny", overrides=[UNET, "data.augment=0.5"])
    network = build_network(config.network, (1, 8, 8), 2, text_dim=TEXT_DIM, augment_dim=9)
    report = transfer_weights(network, read_source(source), config, INFO)
    cross = [f"{block}.cross_attention.{p}" for block in ("encoder.2", "decoder.0", "decoder.3")
             for p in ("norm.weight", "norm.bias", "q.weight", "q.bias", "kv.weight", "kv.bias", "proj.weight",
                       "proj.bias")]
    text = ["map_text.null_text", "map_text.null_pooled", "map_text.map_pooled.weight", "map_text.map_pooled.bias"]
    assert sorted(report.missing) == sorted([*cross, *text, "map_extra.map_augment.weight"])
    assert report.unexpected == [] and report.mismatched == [] and report.copied == 143
    _, _, emas, _ = load_checkpoint(source)
    weights = network.state_dict()
    assert all(torch.equal(weights[name], tensor) for name, tensor in emas["ema"].items())


def test_an_image_unet_starts_a_video_unet_that_draws_each_frame_as_the_image_net(source):
    video_info = {**INFO, "image_shape": [1, 4, 8, 8]}
    config = resolve("tiny", overrides=["network.kind=video_unet", "network.preset=tiny", "video.frames=4",
                                        "data.name=moving-mnist", "network.options={attn_resolutions: [4], "
                                        "temporal_resolutions: [4], num_heads: 1}"])
    video = build_network(config.network, (1, 4, 8, 8), 2)
    report = transfer_weights(video, read_source(source), config, video_info)
    # temporal attention follows the blocks at 4x4: encoder.1 (the downsampling), encoder.2, decoder.0-3
    assert report.missing == [f"temporal.{i}.{p}" for i in range(1, 7) for p in (
        "relative_bias", "norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias")]
    assert report.unexpected == [] and report.mismatched == [] and report.copied == 143
    image = build_network(resolve("tiny", overrides=[UNET]).network, (1, 8, 8), 2)
    _, _, emas, _ = load_checkpoint(source)
    image.load_state_dict(emas["ema"])
    clips = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise, labels = torch.tensor([0.3, -1.0]), torch.tensor([0, 1])
    with torch.no_grad():
        out = video(clips, noise, {"labels": labels})
        for frame in range(4):  # the temporal branches start at zero: each frame is the image U-Net's output
            expected = image(clips[:, :, frame], noise, {"labels": labels})
            torch.testing.assert_close(out[:, :, frame], expected, rtol=0, atol=1e-6)


def test_a_dit_at_another_resolution_rebuilds_its_fixed_positions(tmp_path):
    config = resolve("tiny", overrides=["network.kind=dit", "network.options={}"])
    checkpoint = _checkpoint(tmp_path, config)
    info = {**INFO, "image_shape": [1, 16, 16]}
    dit = build_network(config.network, (1, 16, 16), 2)
    report = transfer_weights(dit, read_source(checkpoint), config, info)
    assert report.complete and report.notes == [
        "resolution 8 in the source, 16 here",
        "the DiT's 2-D sin-cos position table is fixed, not a weight: rebuilt for the new token grid"]


@pytest.mark.parametrize("relabel, target, message", [
    (dict(network="autoencoder"), "unet", "is an autoencoder, this run trains a diffusion model (unet)"),
    ({}, "autoencoder", "is a diffusion model (unet), this run trains an autoencoder"),
    (dict(network="video_unet", image_shape=[1, 4, 8, 8]), "unet",
     "is a video model (a video_unet on 1x4x8x8 clips of mnist (2 classes)), this run trains an image model (unet)"),
    ({}, "dit", "holds a unet network, this run builds a dit: weights transfer only between networks of one kind"),
    (dict(latent={"digest": "0" * 64}), "unet", "was trained on latents of an autoencoder, this run trains on pixels"),
], ids=["autoencoder-into-diffusion", "diffusion-into-autoencoder", "video-into-image", "unet-into-dit",
        "latent-into-pixels"])
def test_a_source_of_another_kind_is_refused_by_name(source, tmp_path, relabel, target, message):
    checkpoint = _relabelled(source, tmp_path, **relabel)
    config = resolve("tiny", overrides=[f"network.kind={target}", "network.options={}"] +
                     (["network.preset=f4"] if target == "autoencoder" else []))
    with pytest.raises(BadFileError) as error:
        transfer_weights(torch.nn.Linear(1, 1), read_source(checkpoint), config, INFO)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_paths_that_hold_no_source_are_refused_by_name(source, tmp_path):
    with pytest.raises(MissingFileError, match="no such run directory or checkpoint"):
        read_source(tmp_path / "nowhere")
    (tmp_path / "photos").mkdir()
    with pytest.raises(BadFileError, match="is neither a run directory .* nor a checkpoint"):
        read_source(tmp_path / "photos")
    (tmp_path / "empty-run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(BadFileError, match="is a run directory without a valid checkpoint"):
        read_source(tmp_path / "empty-run")
    assert read_source(source.parent.parent).checkpoint == source  # the run directory: its newest checkpoint
