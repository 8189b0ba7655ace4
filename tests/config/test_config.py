import json

import pytest

from diffusekit.config import (
    PRESETS,
    Config,
    ConfigError,
    apply_override,
    dump_yaml,
    from_dict,
    merge,
    parse_override,
    preset,
    read_file,
    resolve,
    to_dict,
    validate,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid_and_round_trips(name):
    config = validate(preset(name))
    assert from_dict(Config, to_dict(config)) == config
    assert from_dict(Config, json.loads(json.dumps(to_dict(config)))) == config


def test_required_presets_exist():
    assert {"tiny", "mnist", "fashion-mnist", "tiles", "mnist-dit"} <= set(PRESETS)
    assert preset("mnist-dit").network.kind == "dit"


def test_files_then_overrides_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 1e-3   # YAML 1.1 reads this as a string\n  batch_size: 8\n"
                                     "network:\n  options: {model_channels: 16}\n")
    (tmp_path / "b.toml").write_text("[optim]\nbatch_size = 4\n[ema.half_lives]\nfast = 100\n")
    config = resolve("tiny", files=[tmp_path / "a.yaml", tmp_path / "b.toml"],
                     overrides=["network.options.dropout=0.2", "run.total_images=1e4", "run.sample_every=null"])
    assert config.optim.lr == 1e-3 and config.optim.batch_size == 4
    assert config.network.options == {"model_channels": 16, "dropout": 0.2}  # a dotted --set keeps the rest
    assert config.ema.half_lives == {"fast": 100}  # a dict given whole replaces the preset's
    assert config.run.total_images == 10_000 and config.run.sample_every is None
    assert config.network.preset == "tiny"  # untouched keys keep the preset


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = resolve("mnist", overrides=["objective.schedule_options={zero_terminal_snr: true}"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config))
    assert from_dict(Config, read_file(path)) == config


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", r"unknown key 'optim.lrr' \(did you mean 'lr'\?\); allowed keys in optim: batch_size"),
    ("bogus.x=1", r"unknown key 'bogus'.*allowed keys: data, objective, network"),
    ("optim.lr=fast", r"optim.lr: expected float, got 'fast'"),
    ("run.seed=1.5", r"run.seed: expected an integer, got 1.5"),
    ("run.compile=maybe", r"run.compile: expected true or false"),
    ("network.kind=cnn", r"network.kind: 'cnn' is not allowed; choose one of unet, dit"),
    ("objective.schedule=foo", r"objective.schedule: unknown schedule 'foo'; choose one of rectified_flow"),
    ("objective.parameterization=foo", r"objective.parameterization: unknown parameterization 'foo'"),
    ("objective.weighting_options={gamma: 5}", r"objective.weighting: bad options for loss weighting 'unit'"),
    ("sample.sampler=foo", r"sample.sampler: unknown sampler 'foo'; choose one of euler, heun"),
    ("network.preset=huge", r"network.preset: unknown unet preset 'huge'; choose one of ddpmpp_cifar10"),
    ("optim.accumulation=3", r"optim.batch_size 16 must be a multiple of optim.accumulation 3"),
    ("objective.p_uncond=1", r"objective.p_uncond must be in \[0, 1\)"),
    ("run.device=gpu", r"run.device: 'gpu' is not a device"),
    ("ema.half_lives={ema: -1}", r"ema.half_lives.ema: expected a positive number"),
    ("sample.ema=slow", r"sample.ema: no EMA named 'slow'"),
    ("optim.lr.x=1", r"optim.lr is a value, not a section"),
    ("data=3", r"data: expected a section"),
])
def test_bad_values_name_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve("tiny", overrides=[override])


def test_the_former_sampler_name_edm_is_accepted_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="'edm' is now called 'edm_churn'"):
        assert resolve("tiny", overrides=["sample.sampler=edm"]).sample.sampler == "edm"
    assert resolve("tiny", overrides=["sample.sampler=edm_churn"]).sample.sampler == "edm_churn"


def test_parse_override():
    assert parse_override("optim.lr=1e-3") == (["optim", "lr"], "1e-3")  # numbers are coerced by type later
    assert parse_override("run.compile=true") == (["run", "compile"], True)
    assert parse_override("network.options={a: [1, 2]}") == (["network", "options"], {"a": [1, 2]})
    for bad in ("optim.lr", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match="--set"):
            parse_override(bad)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_file(tmp_path / "missing.yaml")
    (tmp_path / "c.ini").write_text("[x]")
    with pytest.raises(ConfigError, match="unknown format '.ini'"):
        read_file(tmp_path / "c.ini")
    (tmp_path / "c.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_file(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("optim: {lr: [\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_file(tmp_path / "d.yaml")


def test_merge_and_override_leave_the_original_alone():
    base = preset("tiny")
    merged = merge(base, {"optim": {"lr": 0.5}})
    changed = apply_override(base, ["run", "seed"], 7)
    assert base.optim.lr != 0.5 and base.run.seed == 0
    assert merged.optim.lr == 0.5 and changed.run.seed == 7
