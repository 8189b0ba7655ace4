"""Property-based fuzzing of configurations: whatever a config file or override holds, reading, merging and
validating it either gives a config or raises ConfigError naming a key; never another exception."""

import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusekit.config import Config, ConfigError, apply_override, merge, parse_override, preset, to_dict, validate
from diffusekit.config.files import read_file

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DEFAULTS = to_dict(Config())
SECTIONS = sorted(DEFAULTS)
KEYS = [(section, key) for section in SECTIONS for key in DEFAULTS[section]]
NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_.0123456789-"), min_size=1, max_size=12)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, 2.0]),
    st.text(max_size=12), st.sampled_from(["unet", "dit", "cpu", "cuda", "velocity", "eps", "cosine", "iid",
                                           "importance", "multistep", "karras", "fid,kid", "none", "fsdp", "x"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(NAMES, inner, max_size=3)), max_leaves=8)


@st.composite
def mutated_configs(draw) -> dict:
    """The default config as a dict, with a few keys replaced by junk, added, removed or given a wrong type."""
    data = json.loads(json.dumps(DEFAULTS))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["replace", "unknown_key", "unknown_section", "drop", "section_junk"]))
        section, key = draw(st.sampled_from(KEYS))
        if not isinstance(data.get(section), dict):  # already replaced by junk
            continue
        if action == "replace":
            data[section][key] = draw(values)
        elif action == "unknown_key":
            data[section][draw(NAMES)] = draw(values)
        elif action == "unknown_section":
            data[draw(NAMES)] = draw(values)
        elif action == "drop":
            data[section].pop(key, None)
        else:
            data[section] = draw(values)
    return data


def _check(fn) -> None:
    try:
        fn()
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message.strip(), message
        assert any(name in message for name in (*SECTIONS, "config", "--set", "expected", "unknown")), message


@FUZZ
@given(data=mutated_configs())
def test_merged_dicts_validate_or_raise_config_error(data):
    _check(lambda: validate(merge(preset("tiny"), data)))


@FUZZ
@given(data=mutated_configs(), suffix=st.sampled_from([".yaml", ".json", ".toml"]))
def test_config_files_validate_or_raise_config_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("cfg") / f"config{suffix}"
    if suffix == ".yaml":
        path.write_text(yaml.safe_dump(data))
    elif suffix == ".json":
        path.write_text(json.dumps(data))  # NaN / Infinity are written as JSON's extension literals
    else:
        path.write_text(_toml(data))
    _check(lambda: validate(merge(preset("tiny"), read_file(path))))


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200)),
       suffix=st.sampled_from([".yaml", ".yml", ".json", ".toml", ".txt", ""]))
def test_garbage_files_raise_config_error(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("junk") / f"config{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    _check(lambda: validate(merge(preset("tiny"), read_file(path))))


@FUZZ
@given(key=st.one_of(st.sampled_from([f"{s}.{k}" for s, k in KEYS]), NAMES),
       value=st.one_of(st.text(max_size=20), st.sampled_from(["[1, 2", "{a: 1}", "null", "nan", "-inf", "1e999",
                                                              "[]", "{}", "true", "'x'", ": :", "- a"])))
def test_set_overrides_apply_or_raise_config_error(key, value):
    def run():
        keys, parsed = parse_override(f"{key}={value}")
        validate(apply_override(preset("tiny"), keys, parsed))

    _check(run)


def _toml(data: dict) -> str:
    """A TOML rendering good enough for fuzzing: tables of scalars and lists; what TOML cannot express is
    written as a quoted string (itself a wrong type the loader must reject cleanly)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list) and all(not isinstance(x, (dict, list)) and x is not None for x in v):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(json.dumps(v))

    lines = []
    for section, body in data.items():
        if isinstance(body, dict):
            lines.append(f"[{json.dumps(section)}]")
            lines += [f"{json.dumps(k)} = {value(v)}" for k, v in body.items() if v is not None]
        elif body is not None:
            lines.insert(0, f"{json.dumps(section)} = {value(body)}")
    return "\n".join(lines) + "\n"


def test_the_fuzzer_reaches_valid_and_invalid_configs():
    """Guard against a fuzzer that only ever produces one outcome."""
    assert validate(merge(preset("tiny"), {"optim": {"lr": 0.01}})).optim.lr == 0.01
    with pytest.raises(ConfigError, match="optim.lr"):
        validate(merge(preset("tiny"), {"optim": {"lr": "fast"}}))
