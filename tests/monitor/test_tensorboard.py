"""The TensorBoard writer (tensorboardX), read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import io
import os
import re
import socket
import struct
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

from diffusekit.monitor import TensorBoardWriter, read_scalars


def _float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _accumulator(path) -> EventAccumulator:
    accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0, IMAGES: 0})
    accumulator.Reload()
    return accumulator


def _files(directory) -> list:
    return sorted(p for p in directory.iterdir() if "tfevents" in p.name)


def test_scalars_read_back_by_tensorboard(tmp_path):
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_scalar("loss", 0.1, step=0)
        writer.add_scalars({"loss": torch.tensor(0.25), "lr/main": np.float64(1e-4)}, step=2**40)
        writer.add_scalar("big", 1e40, step=7)
        writer.add_scalar("nan", float("nan"), step=1)
        writer.add_scalars({}, step=5)  # nothing to write
    accumulator = _accumulator(tmp_path)
    assert sorted(accumulator.Tags()["scalars"]) == ["big", "loss", "lr/main", "nan"]
    loss = accumulator.Scalars("loss")
    assert [(e.step, e.value) for e in loss] == [(0, _float32(0.1)), (2**40, 0.25)]  # stored as float32
    assert _float32(0.1) != 0.1
    (lr,) = accumulator.Scalars("lr/main")
    assert (lr.step, lr.value) == (2**40, _float32(1e-4))
    assert accumulator.Scalars("big")[0].value == float("inf")  # beyond float32: inf rather than an error
    assert np.isnan(accumulator.Scalars("nan")[0].value)
    assert read_scalars(tmp_path)[:3] == [("loss", 0, _float32(0.1)), ("loss", 2**40, 0.25),
                                          ("lr/main", 2**40, _float32(1e-4))]


def test_images_read_back_by_tensorboard(tmp_path):
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)  # HWC, as a sample grid PNG
    with TensorBoardWriter(tmp_path) as writer:
        writer.add_image("samples", grid, step=640, dataformats="HWC")
        writer.add_image("samples", torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 0.0]]]), step=1280)  # CHW float
    (first, second) = _accumulator(tmp_path).Images("samples")
    assert (first.step, first.width, first.height) == (640, 20, 12)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(first.encoded_image_string))), grid)
    assert (second.step, second.width, second.height) == (1280, 2, 1)
    pixels = np.asarray(Image.open(io.BytesIO(second.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(pixels, [[[0, 255, 0], [255, 0, 0]]])  # float 0..1 -> 0..255


def test_file_name_is_unique_per_writer(tmp_path):
    with TensorBoardWriter(tmp_path) as a, TensorBoardWriter(tmp_path) as b:
        a.add_scalar("x", 1.0, step=1)
        b.add_scalar("x", 2.0, step=2)
    files = _files(tmp_path)
    assert len(files) == 2  # same second, same process: still two files
    host = re.escape(socket.gethostname())
    assert all(re.fullmatch(rf"events\.out\.tfevents\.\d{{10}}\.{host}\.{os.getpid()}\.\d+", f.name) for f in files)
    assert sorted((tag, step, value) for f in files for tag, step, value in read_scalars(f)) == [("x", 1, 1.0),
                                                                                                ("x", 2, 2.0)]


def test_resume_purges_what_the_killed_run_logged_after_the_checkpoint(tmp_path):
    with TensorBoardWriter(tmp_path) as first:
        for step in (100, 200, 300, 400):
            first.add_scalar("loss", step / 1000, step)
    (old,) = _files(tmp_path)
    old.rename(tmp_path / re.sub(r"tfevents\.\d{10}", "tfevents.0000000001", old.name))  # an earlier session
    with TensorBoardWriter(tmp_path, purge_step=300) as resumed:  # the checkpoint was at step 300
        resumed.add_scalar("loss", 0.5, 300)
        resumed.add_scalar("loss", 0.6, 400)
    expected = [("loss", 100, 0.1), ("loss", 200, 0.2), ("loss", 300, 0.5), ("loss", 400, 0.6)]  # old 300, 400 gone
    assert read_scalars(tmp_path) == [(tag, step, _float32(value)) for tag, step, value in expected]


def test_flush_puts_events_on_disk_and_a_closed_writer_refuses(tmp_path):
    writer = TensorBoardWriter(tmp_path, flush_secs=3600)  # no periodic flush during the test
    writer.add_scalar("x", 1.0, step=1)
    deadline = time.monotonic() + 30
    while True:  # the event reaches tensorboardX's writer thread within moments; flush() then writes it
        writer.flush()
        if read_scalars(tmp_path) == [("x", 1, 1.0)] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert read_scalars(tmp_path) == [("x", 1, 1.0)]  # on disk before close
    writer.close()
    writer.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        writer.add_scalar("x", 3.0, step=3)
    assert len(_files(tmp_path)) == 1  # no new file started behind the caller's back


def test_read_scalars_names_the_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_accumulator", None)
    with pytest.raises(ImportError, match="needs the tensorboard package"):
        read_scalars(tmp_path)
