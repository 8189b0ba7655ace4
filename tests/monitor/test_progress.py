from __future__ import annotations

import io

import pytest
import torch

from diffusekit.monitor import ProgressBar
from diffusekit.monitor.progress import format_count, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _bar(total=1000, **kw) -> tuple[ProgressBar, io.StringIO, FakeClock]:
    stream, clock = io.StringIO(), FakeClock()
    kw.setdefault("tty", True)
    return ProgressBar(total, stream=stream, clock=clock, **kw), stream, clock


@pytest.mark.parametrize(("x", "text"), [(0, "0"), (950, "950"), (1000, "1.00k"), (1234, "1.23k"), (45_600, "45.6k"),
                                         (999_600, "1.00M"), (2.5e9, "2.50G"), (12.34, "12.3"), (0.5, "0.500")])
def test_format_count(x, text):
    assert format_count(x) == text


@pytest.mark.parametrize(("s", "text"), [(0, "0:00"), (59.6, "1:00"), (754, "12:34"), (3600 * 27 + 61, "27:01:01"),
                                         (float("inf"), "?"), (-1, "?")])
def test_format_duration(s, text):
    assert format_duration(s) == text


def test_line_contents():
    bar, _, clock = _bar(total=1_000_000, initial=0, desc="train")
    clock.t = 10.0
    bar.update(100_000, loss=torch.tensor(0.031234), step=7, phase="warmup")
    assert bar.format() == ("train:  10%|###---------------------------| 100k/1.00M "
                            "[0:10<1:30, 10.0k img/s, loss=0.03123, step=7, phase=warmup]")


def test_tty_redraws_in_place_at_most_every_min_interval():
    bar, stream, clock = _bar(min_interval=0.5)
    for _ in range(7):  # 7 updates within 0.4375 s: none is drawn
        clock.t += 0.0625
        bar.update(1)
    assert stream.getvalue() == ""
    clock.t += 0.0625
    bar.update(1)
    assert stream.getvalue().startswith("\r  1%|") and "\n" not in stream.getvalue()
    for _ in range(80):  # 10 s of updates every 0.125 s: one redraw per 0.5 s
        clock.t += 0.125
        bar.update(1)
    assert stream.getvalue().count("\r") == 1 + 20
    bar.close()
    out = stream.getvalue()
    assert out.count("\r") == 22 and out.endswith("\r" + bar.format() + "\n") and "| 88/1.00k [0:10<" in out
    bar.close()
    assert stream.getvalue() == out  # closing twice prints nothing more


def test_tty_pads_over_a_longer_previous_line():
    bar, stream, clock = _bar(min_interval=0)
    clock.t = 1
    bar.update(1, note="a long message")
    bar.set_postfix()
    clock.t = 2
    bar.update(1)
    last = stream.getvalue().split("\r")[-1]
    assert last.rstrip() == bar.format() and len(last) == len(stream.getvalue().split("\r")[-2])


def test_log_mode_prints_whole_lines_every_10_seconds():
    bar, stream, clock = _bar(total=10_000, tty=False, min_interval=0.5)
    for _ in range(1000):  # 100 s of updates
        clock.t += 0.1
        bar.update(10)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert 10 <= len(lines) <= 11 and lines[-1].startswith("100%|")
    bar2, stream2, clock2 = _bar(tty=False, log_interval=30.0)
    for _ in range(100):
        clock2.t += 1.0
        bar2.update(1)
    assert len(stream2.getvalue().splitlines()) == 3


def test_rate_and_eta_count_only_this_session():
    bar, _, clock = _bar(total=1_000_000, initial=900_000, min_interval=1.0)
    for _ in range(20):  # resumed at 900k, then 1000 img/s for 20 s
        clock.t += 1.0
        bar.update(1000)
    assert bar.rate == pytest.approx(1000.0)
    assert "920k/1.00M [0:20<1:20, 1.00k img/s]" in bar.format()


def test_rate_before_first_window_and_ema_smoothing():
    bar, _, clock = _bar(total=10**6, initial=5000, min_interval=1.0, smoothing=0.3)
    clock.t = 0.5
    bar.update(100)  # window not complete: plain rate of this session
    assert bar.rate is None and "200 img/s" in bar.format()
    clock.t = 1.0
    bar.update(100)
    assert bar.rate == pytest.approx(200.0)
    clock.t = 2.0
    bar.update(400)  # 400 img/s now: the smoothed rate moves 30% of the way
    assert bar.rate == pytest.approx(0.3 * 400 + 0.7 * 200)


def test_disable_prints_nothing_but_counts():
    bar, stream, clock = _bar(disable=True, min_interval=0)
    with bar:
        clock.t = 1
        bar.update(5, loss=1.0)
        bar.write("hello")
    assert stream.getvalue() == "" and bar.n == 5


def test_write_keeps_the_bar_below_the_message():
    bar, stream, clock = _bar(min_interval=0)
    clock.t = 1
    bar.update(1)
    bar.write("checkpoint saved")
    out = stream.getvalue()
    assert "\rcheckpoint saved\n\r  0%|" in out


def test_unicode_bar_and_bad_total():
    bar, _, clock = _bar(total=16, width=4, ascii=False)
    clock.t = 1
    bar.update(5)  # 5/16 of 4 cells = 1.25 cells: one full block and a quarter block
    assert "|█▎  |" in bar.format()
    bar.update(11)
    assert "|████|" in bar.format()
    with pytest.raises(ValueError, match="total"):
        ProgressBar(0)
