"""TensorBoard scalar event files, written without TensorBoard or TensorFlow installed.

An event file is a TFRecord stream of serialized ``Event`` protocol buffers. Each record is::

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

The messages used here, with their field numbers, from tensorflow/core/util/event.proto and
tensorflow/core/framework/summary.proto (mirrored as tensorboard/compat/proto/{event,summary}.proto)::

    message Event   { double wall_time = 1; int64 step = 2;
                      oneof what { string file_version = 3; Summary summary = 5; SessionLog session_log = 7; } }
    message Summary { repeated Value value = 1;
                      message Value { string tag = 1; oneof value { float simple_value = 2; } } }
    message SessionLog { SessionStatus status = 1; }   // START = 1

The first record of a file says ``file_version: "brain.Event:2"``, as TensorBoard's own writer does.
Protobuf is encoded by hand (a few dozen lines) rather than taking a dependency for it; :func:`read_scalars`
decodes the same subset and checks every CRC, for the tests and for reading runs back without TensorBoard.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["TensorBoardWriter", "read_scalars", "crc32c", "masked_crc32c"]

FILE_VERSION = "brain.Event:2"
_SESSION_START = 1  # SessionLog.SessionStatus.START


def _crc32c_table() -> list[int]:
    """The 256-entry table of the reflected Castagnoli polynomial 0x82F63B78 (CRC-32C, RFC 3720)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data`` (pass a previous result as ``crc`` to continue it); pure Python, fine for small records."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits plus a constant, so CRCs of CRCs stay well spread."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format (https://protobuf.dev/programming-guides/encoding/) -------------------------------

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    """Base-128 varint; negative int64 values take their 64-bit two's complement (10 bytes), as protobuf does."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, _BYTES) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    """IEEE float32; values beyond its range become +-inf instead of raising like ``struct.pack`` does."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


def _scalar_value(tag: str, value: float) -> bytes:
    """A ``Summary.Value`` with ``tag`` (1) and ``simple_value`` (2)."""
    return _length_delimited(1, tag.encode("utf-8")) + _key(2, _FIXED32) + _float32(value)


def _event(wall_time: float, step: int = 0, *, file_version: str | None = None, summary: bytes | None = None,
           session_status: int | None = None) -> bytes:
    """An ``Event``: ``wall_time`` (1), ``step`` (2, omitted when 0 as proto3 does) and one of the ``what`` fields."""
    out = _key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, _VARINT) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if summary is not None:
        out += _length_delimited(5, summary)
    if session_status is not None:
        out += _length_delimited(7, _key(1, _VARINT) + _varint(session_status))
    return out


def _record(data: bytes) -> bytes:
    """TFRecord framing of one serialized message."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


# --- writer ------------------------------------------------------------------------------------------------

_file_counter = itertools.count()  # TensorBoard's per-process uid: two writers in one second get two files


class TensorBoardWriter:
    """Scalars for TensorBoard, in a new ``events.out.tfevents.<time>.<host>.<pid>.<n>`` file under ``log_dir``.

    ``purge_step``: on resume, the step of the checkpoint. A ``SessionLog(START)`` event at that step makes
    TensorBoard hide what an earlier, killed run logged at steps >= ``purge_step`` (PyTorch's SummaryWriter
    does the same). Records are buffered and flushed every ``flush_secs`` seconds, on :meth:`flush` and on
    :meth:`close`; a killed run loses at most that much.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, flush_secs: float = 10.0,
                 filename_suffix: str = ""):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                f"{next(_file_counter)}{filename_suffix}")
        self.path = self.log_dir / name
        self._file = open(self.path, "xb")
        self.flush_secs = flush_secs
        self._last_flush = time.monotonic()
        self._write(_event(time.time(), file_version=FILE_VERSION))
        if purge_step is not None:
            self._write(_event(time.time(), purge_step, session_status=_SESSION_START))
        self.flush()

    def _write(self, event: bytes) -> None:
        if self._file.closed:
            raise ValueError(f"TensorBoardWriter for {self.path} is closed")
        self._file.write(_record(event))
        if time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Log ``value`` (a float, 0-d tensor or NumPy scalar; stored as float32) under ``tag`` at ``step``."""
        self.add_scalars({tag: value}, step, wall_time)

    def add_scalars(self, values: Mapping[str, float], step: int, wall_time: float | None = None) -> None:
        """Log several tags at one step, as one event (each tag is its own curve, unlike PyTorch's add_scalars)."""
        if not values:
            return
        summary = b"".join(_length_delimited(1, _scalar_value(tag, float(v))) for tag, v in values.items())
        self._write(_event(time.time() if wall_time is None else wall_time, int(step), summary=summary))

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- reader ------------------------------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(message: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of a serialized message; fixed-size values as raw bytes."""
    pos = 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(message, pos)
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            value, pos = message[pos:pos + size], pos + size
        elif wire_type == _BYTES:
            size, pos = _read_varint(message, pos)
            value, pos = message[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(message):
            raise ValueError("truncated protobuf message")
        yield field, wire_type, value


def _records(data: bytes, path: Path) -> Iterator[bytes]:
    """The payloads of a TFRecord stream, CRCs checked; a record cut short at the end (a live or killed writer)
    ends the stream, as in TensorBoard."""
    pos = 0
    while pos + 12 <= len(data):
        header, (header_crc,) = data[pos:pos + 8], struct.unpack_from("<I", data, pos + 8)
        if masked_crc32c(header) != header_crc:
            raise ValueError(f"{path}: corrupt record length at byte {pos}")
        (length,) = struct.unpack("<Q", header)
        end = pos + 12 + length + 4
        if end > len(data):
            return
        payload = data[pos + 12:end - 4]
        if masked_crc32c(payload) != struct.unpack_from("<I", data, end - 4)[0]:
            raise ValueError(f"{path}: corrupt record data at byte {pos}")
        yield payload
        pos = end


def _event_scalars(event: bytes) -> Iterator[tuple[str, int, float]]:
    step, summaries = 0, []
    for field, _, value in _fields(event):
        if field == 2:
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 5:
            summaries.append(value)
    for summary in summaries:
        for field, _, value in _fields(summary):
            if field != 1:
                continue
            parts = {f: v for f, _, v in _fields(value)}
            if 2 in parts:  # a simple_value; other kinds of values (images, tensors) are skipped
                yield parts.get(1, b"").decode("utf-8"), step, struct.unpack("<f", parts[2])[0]


def _event_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if "tfevents" in p.name)
    return [path]


def read_scalars(path: str | Path) -> list[tuple[str, int, float]]:
    """``(tag, step, value)`` of every scalar in an event file, or in every event file of a directory (by name).

    Raises ``ValueError`` on a CRC mismatch. Purge events are not applied: this is the file's content as written.
    """
    out = []
    for file in _event_files(Path(path)):
        for event in _records(file.read_bytes(), file):
            out.extend(_event_scalars(event))
    return out
