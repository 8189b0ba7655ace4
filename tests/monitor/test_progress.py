"""The tqdm progress bar: the line's content, in-place redraws on a terminal and whole lines in a log file."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from tqdm import tqdm

from diffusekit.monitor import ProgressBar


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    """A stream that says it is a terminal and notes the clock's time of every redraw (``\\r``)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        super().__init__()
        self.clock, self.redraw_times = clock, []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.clock is not None:
            self.redraw_times += [self.clock.t] * text.count("\r")
        return super().write(text)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """tqdm reads the time through ``tqdm.std.time``: a clock the test moves by hand. tqdm's monitor thread, which
    forces a redraw after ``maxinterval`` of real time, is stopped so that only this clock counts."""
    fake = FakeClock()
    monkeypatch.setattr("tqdm.std.time", fake)
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    if tqdm.monitor is not None:
        tqdm.monitor.exit()
    return fake


def _draws(text: str) -> list[str]:
    """The states drawn in place on a terminal, padding removed."""
    return [part.rstrip() for part in text.split("\r")[1:]]


def test_line_counts_rate_eta_and_postfix(clock):
    stream = io.StringIO()
    with ProgressBar(1_000_000, desc="train", file=stream, tty=True) as bar:
        clock.t = 10.0
        bar.set_postfix(loss=torch.tensor(0.031234), step=7, phase="warmup")
        bar.update(100_000)
        # 100k of 1M in 10 s: 10.0k img/s, 90 s to go; postfix in the order given, numbers to 3 significant digits
        assert _draws(stream.getvalue())[-1] == ("train:  10%|#         | 100k/1.00M "
                                                 "[00:10<01:30, 10.0kimg/s, loss=0.0312, step=7, phase=warmup]")


def test_rate_and_eta_count_only_this_session(clock):
    stream = io.StringIO()
    with ProgressBar(1_000_000, initial=900_000, file=stream, tty=True, mininterval=1.0) as bar:
        for _ in range(20):  # resumed at 900k, then 1000 img/s for 20 s
            clock.t += 1.0
            bar.update(1000)
        line = _draws(stream.getvalue())[-1]
    # 80k left at 1000 img/s: 80 s, which tqdm truncates to 79 when its smoothed rate is a hair above 1000
    assert line in (f" 92%|#########2| 920k/1.00M [00:20<01:{s}, 1.00kimg/s]" for s in (19, 20))


def test_terminal_redraws_in_place_at_most_every_mininterval(clock):
    stream = Terminal(clock)  # detected as a terminal: no tty= needed
    with ProgressBar(1000, file=stream, mininterval=0.5) as bar:
        assert stream.getvalue().startswith("\r  0%|")  # tqdm draws the empty bar at once
        for _ in range(7):  # 7 updates within 0.4375 s: none is drawn
            clock.t += 0.0625
            bar.update(1)
        assert stream.redraw_times == [0.0]
        for _ in range(81):  # 10 s of updates every 0.125 s
            clock.t += 0.125
            bar.update(1)
        gaps = [b - a for a, b in itertools.pairwise(stream.redraw_times)]
        assert min(gaps) >= 0.5 and len(gaps) >= 15 and "\n" not in stream.getvalue()
    out = stream.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1 and "| 88.0/1.00k [00:10<" in _draws(out)[-1]
    bar.close()
    assert stream.getvalue() == out  # closing twice prints nothing more


def test_log_file_gets_whole_lines_every_10_seconds(clock):
    stream = io.StringIO()  # not a terminal
    with ProgressBar(10_000, file=stream) as bar:
        for _ in range(800):  # 100 s of updates
            clock.t += 0.125
            bar.update(12.5)
    out = stream.getvalue()
    lines = out.splitlines()
    assert "\r" not in out and out.endswith("\n") and all(lines)
    assert lines[0].startswith("  0%|") and lines[-1].startswith("100%|##########| 10.0k/10.0k [01:40<00:00")
    assert 11 <= len(lines) <= 12  # the empty bar, about one every 10 s, the final state
    assert any(f" 50%|#####     | 5.00k/10.0k [00:50<00:{s}, 100img/s]" in lines for s in (49, 50))


def test_log_interval_and_messages_in_a_log(clock):
    stream = io.StringIO()
    with ProgressBar(100, file=stream, tty=False, log_interval=30.0) as bar:
        for i in range(100):
            clock.t += 1.0
            bar.update(1)
            if i == 40:
                bar.write("checkpoint saved")
                bar.set_postfix(loss=0.5)  # shown with the next line, not a line of its own
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "checkpoint saved" in lines
    bars = [line for line in lines if line != "checkpoint saved"]
    assert [line[:4] for line in bars] == ["  0%", " 30%", " 60%", " 90%", "100%"]
    assert bars[2].endswith("loss=0.5]") and lines.index("checkpoint saved") == 2


def test_write_keeps_the_bar_below_the_message_on_a_terminal(clock):
    stream = io.StringIO()
    with ProgressBar(1000, file=stream, tty=True, mininterval=0) as bar:
        clock.t = 1
        bar.update(1)
        bar.write("checkpoint saved")
    assert "\rcheckpoint saved\n\r  0%|" in stream.getvalue()


def test_disabled_bar_prints_nothing(clock):
    stream = Terminal()
    with ProgressBar(1000, file=stream, disable=True, mininterval=0) as bar:
        clock.t = 1
        bar.update(5)
        bar.set_postfix(loss=1.0)
        bar.write("hello")
    assert stream.getvalue() == ""


def test_bad_total():
    with pytest.raises(ValueError, match="total must be > 0, got 0"):
        ProgressBar(0)
