from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffusekit.monitor import MetricsLog, read_metrics
from diffusekit.monitor.metrics import to_json_safe


def test_append_round_trip_and_flushed_while_open(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.append({"cur_nimg": 1024, "loss": 0.5, "tag": "train"})
        assert read_metrics(path) == [{"cur_nimg": 1024, "loss": 0.5, "tag": "train"}]  # visible before close
        log.append({"cur_nimg": 2048, "loss": 0.25})
    assert [r["cur_nimg"] for r in read_metrics(path)] == [1024, 2048]
    assert path.read_text().count("\n") == 2


def test_tensors_and_numpy_become_python_numbers(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.append({"loss": torch.tensor(0.125), "nimg": np.int64(7), "lr": np.float32(0.5),
                    "hist": torch.tensor([1.0, 2.0]), "pair": (np.float64(1.5), 2), "ok": True})
    (record,) = read_metrics(path)
    assert record == {"loss": 0.125, "nimg": 7, "lr": 0.5, "hist": [1.0, 2.0], "pair": [1.5, 2], "ok": True}
    assert type(record["nimg"]) is int and type(record["loss"]) is float


def test_non_finite_values_are_valid_json_and_read_back_as_floats(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.append({"loss": float("nan"), "grad": torch.tensor(float("inf")), "low": -math.inf, "x": 1.0})

    def strict(token):
        raise AssertionError(f"bare {token} is not JSON")

    raw = json.loads(path.read_text(), parse_constant=strict)
    assert raw == {"loss": "NaN", "grad": "Infinity", "low": "-Infinity", "x": 1.0}
    (record,) = read_metrics(path)
    assert math.isnan(record["loss"]) and record["grad"] == math.inf and record["low"] == -math.inf


def test_unsupported_value_is_rejected(tmp_path):
    with MetricsLog(tmp_path / "m.jsonl") as log, pytest.raises(TypeError, match="object"):
        log.append({"bad": object()})
    assert to_json_safe({1: [None, "s"]}) == {"1": [None, "s"]}


def test_read_ignores_truncated_last_line_but_not_damage_in_the_middle(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"cur_nimg": 1}\n{"cur_nimg": 2}\n{"cur_nimg": 3, "lo')
    assert read_metrics(path) == [{"cur_nimg": 1}, {"cur_nimg": 2}]
    path.write_text('{"cur_nimg": 1}\n{"cur_ni\n{"cur_nimg": 3}\n')
    with pytest.raises(ValueError, match=":2: damaged"):
        read_metrics(path)
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_reopening_cuts_the_partial_line_before_appending(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"cur_nimg": 1}\n{"cur_nimg": 2, "lo')
    with MetricsLog(path) as log:
        log.append({"cur_nimg": 3})
    assert path.read_text() == '{"cur_nimg": 1}\n{"cur_nimg": 3}\n'


def test_truncate_after_drops_records_past_the_checkpoint(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.append({"config": "tiny"})
        for nimg in (100, 200, 300, 400):
            log.append({"cur_nimg": nimg, "loss": 1.0 / nimg})
    path.write_text(path.read_text() + '{"cur_nimg": 500, "lo')  # the killed run's last, partial line
    with MetricsLog(path) as log:
        assert log.truncate_after("cur_nimg", 200) == 3
        log.append({"cur_nimg": 300, "loss": 0.5})  # the resumed run goes on in the same file
    records = read_metrics(path)
    assert records == [{"config": "tiny"}, {"cur_nimg": 100, "loss": 0.01}, {"cur_nimg": 200, "loss": 0.005},
                       {"cur_nimg": 300, "loss": 0.5}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]  # no temporary file left behind
