from __future__ import annotations

import os
import random
import re
import socket
import struct

import numpy as np
import pytest
import torch

from diffusekit.monitor import TensorBoardWriter, read_scalars
from diffusekit.monitor.tensorboard import crc32c, masked_crc32c


def _bitwise_crc32c(data: bytes) -> int:
    """CRC-32C bit by bit, independently of the module's table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _frames(path) -> list[bytes]:
    """TFRecord payloads, parsed here from the format's definition, checking both masked CRCs."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        assert struct.unpack_from("<I", data, pos + 8)[0] == masked_crc32c(data[pos:pos + 8])
        payload = data[pos + 12:pos + 12 + length]
        assert struct.unpack_from("<I", data, pos + 12 + length)[0] == masked_crc32c(payload)
        out.append(payload)
        pos += 12 + length + 4
    return out


def test_crc32c_published_check_values():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E  # RFC 3720 B.4, incrementing bytes
    assert crc32c(b"") == 0


def test_crc32c_matches_bitwise_definition_and_continues():
    rng = random.Random(0)
    data = bytes(rng.randrange(256) for _ in range(300))
    assert crc32c(data) == _bitwise_crc32c(data)
    assert crc32c(data[100:], crc32c(data[:100])) == crc32c(data)


def test_masked_crc_formula():
    crc = crc32c(b"abc")
    expected = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32
    assert masked_crc32c(b"abc") == expected


def test_file_name_and_first_event(tmp_path):
    with TensorBoardWriter(tmp_path / "tb") as writer:
        path = writer.path
    pattern = rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}\.{os.getpid()}\.\d+"
    assert re.fullmatch(pattern, path.name)
    (first,) = _frames(path)
    assert first[0] == 0x09 and len(first) == 9 + 15  # wall_time: field 1, fixed64
    assert first[9:] == b"\x1a\x0dbrain.Event:2"  # file_version: field 3, length 13


def test_scalar_event_bytes_follow_event_and_summary_proto(tmp_path):
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_scalar("a", 2.0, step=3, wall_time=1.5)
    event = _frames(writer.path)[1]
    value = b"\x0a\x01a" + b"\x15" + struct.pack("<f", 2.0)  # Value.tag (1), Value.simple_value (2, fixed32)
    summary = b"\x0a" + bytes([len(value)]) + value  # Summary.value (1)
    expected = b"\x09" + struct.pack("<d", 1.5) + b"\x10\x03" + b"\x2a" + bytes([len(summary)]) + summary
    assert event == expected


def test_round_trip_with_float32_rounding(tmp_path):
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_scalar("loss", 0.1, step=0)
        writer.add_scalars({"loss": torch.tensor(0.25), "lr/main": np.float64(1e-4)}, step=2**40)
        writer.add_scalar("big", 1e40, step=-1)
        writer.add_scalars({}, step=5)  # nothing to write
    scalars = read_scalars(writer.path)
    assert [(t, s) for t, s, _ in scalars] == [("loss", 0), ("loss", 2**40), ("lr/main", 2**40), ("big", -1)]
    values = [v for _, _, v in scalars]
    assert values[0] == struct.unpack("<f", struct.pack("<f", 0.1))[0] != 0.1
    assert values[1] == 0.25 and values[2] == pytest.approx(1e-4, rel=1e-7)
    assert values[3] == float("inf")  # beyond float32: inf rather than an error


def test_nan_is_kept(tmp_path):
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_scalar("loss", float("nan"), step=1)
    ((tag, step, value),) = read_scalars(writer.path)
    assert (tag, step) == ("loss", 1) and value != value


def test_purge_step_writes_session_start(tmp_path):
    with TensorBoardWriter(tmp_path, purge_step=300) as writer:
        writer.add_scalar("loss", 1.0, step=301)
    frames = _frames(writer.path)
    assert len(frames) == 3
    # Event.step (2) = 300, then Event.session_log (7) holding SessionLog.status (1) = START (1)
    assert frames[1][9:] == b"\x10\xac\x02" + b"\x3a\x02\x08\x01"
    assert read_scalars(writer.path) == [("loss", 301, 1.0)]


def test_corruption_is_detected(tmp_path):
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_scalar("loss", 1.0, step=1)
    data = bytearray(writer.path.read_bytes())
    first_len = 12 + struct.unpack_from("<Q", data)[0] + 4
    for offset, message in ((first_len + 20, "corrupt record data"), (first_len + 2, "corrupt record length")):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        writer.path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=message):
            read_scalars(writer.path)


def test_truncated_tail_is_ignored(tmp_path):
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_scalar("loss", 1.0, step=1)
        writer.add_scalar("loss", 0.5, step=2)
    data = writer.path.read_bytes()
    writer.path.write_bytes(data[:-5])  # a writer killed mid-record
    assert read_scalars(writer.path) == [("loss", 1, 1.0)]


def test_directory_of_files_and_flush(tmp_path):
    a = TensorBoardWriter(tmp_path)
    b = TensorBoardWriter(tmp_path)
    assert a.path != b.path  # same second, same process: the counter keeps them apart
    a.add_scalar("x", 1.0, step=1)
    a.flush()
    assert read_scalars(a.path) == [("x", 1, 1.0)]  # on disk before close
    b.add_scalar("x", 2.0, step=2)
    a.close()
    b.close()
    assert sorted(read_scalars(tmp_path)) == [("x", 1, 1.0), ("x", 2, 2.0)]
    with pytest.raises(ValueError, match="closed"):
        a.add_scalar("x", 3.0, step=3)
