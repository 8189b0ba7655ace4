"""``diffusekit report``: the file it writes, --out checks, bad runs as one line, and the --watch loop with a
stand-in clock (no real sleeping)."""

from __future__ import annotations

import pytest

import diffusekit.cli as cli
import diffusekit.cli.report as cli_report
from diffusekit.errors import UsageError

from .monitor.report_run import image_run, metrics_records, write_metrics


def _main(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_report_writes_run_dir_report_html_by_default_and_out_elsewhere(tmp_path, capsys):
    run = image_run(tmp_path)
    write_metrics(run, metrics_records()[:2])  # fewer charts: a faster test
    code, err = _main(["report", str(run)], capsys)
    assert (code, err) == (0, f"wrote {run / 'report.html'}\n")
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")
    code, err = _main(["report", str(run), "--out", str(tmp_path / "a" / "b.html"), "--max-grids", "1"], capsys)
    assert code == 0 and (tmp_path / "a" / "b.html").exists()


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}"], "is not a run directory (no config.yaml, metrics.jsonl or checkpoints/)"),
    (["report", "{tmp}/missing"], "no such run directory"),
    (["report", "{run}", "--out", "{run}"], "is a directory; give a file name such as"),
    (["report", "{run}", "--out", "{run}/config.yaml/r.html"], "config.yaml is a file, not a directory"),
    (["report", "{run}", "--out", "{tmp}/r.png"], "the report is an .html file"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    run = image_run(tmp_path)
    code, err = _main([a.format(tmp=tmp_path, run=run) for a in argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("diffusekit report: error: ") and message in err


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "soon"])
def test_watch_needs_a_positive_finite_interval(tmp_path, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", str(tmp_path), "--watch", value])
    assert exit_info.value.code == 2


def test_watch_regenerates_then_sleeps_until_ctrl_c():
    calls = []

    def regenerate():
        calls.append("write")

    def sleep(seconds):
        calls.append(seconds)
        if calls.count("write") == 3:
            raise KeyboardInterrupt

    assert cli_report.watch(regenerate, 2.5, sleep=sleep) == 3
    assert calls == ["write", 2.5, "write", 2.5, "write", 2.5]
    calls.clear()
    assert cli_report.watch(regenerate, 1.0, sleep=calls.append, iterations=2) == 2
    assert calls == ["write", 1.0, "write", 1.0]


def test_a_failure_after_the_first_report_is_reported_and_the_watch_goes_on():
    outcomes = iter([None, UsageError("run gone"), OSError("disk full"), None])
    warnings = []

    def regenerate():
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    assert cli_report.watch(regenerate, 1.0, sleep=lambda s: None, iterations=4, warn=warnings.append) == 2
    assert [str(w) for w in warnings] == ["run gone", "disk full"]
    outcomes = iter([UsageError("bad run")])
    with pytest.raises(UsageError, match="bad run"):  # the first report failing is bad input: no loop
        cli_report.watch(regenerate, 1.0, sleep=lambda s: None, warn=warnings.append)


def test_ctrl_c_while_writing_ends_the_watch_cleanly():
    def regenerate():
        raise KeyboardInterrupt

    assert cli_report.watch(regenerate, 1.0, sleep=lambda s: None) == 0


def test_the_watch_command_rewrites_the_report_with_new_records_and_exits_0_on_ctrl_c(tmp_path, capsys,
                                                                                     monkeypatch):
    run = image_run(tmp_path)
    (run / "metrics.jsonl").write_text("")
    sizes = []

    def sleep(seconds):  # between two reports, the run logs its records; the second Ctrl-C ends it
        assert seconds == 7
        sizes.append(len((run / "report.html").read_text()))
        if len(sizes) == 2:
            raise KeyboardInterrupt
        write_metrics(run, metrics_records())

    monkeypatch.setattr(cli_report, "_sleep", sleep)
    code, err = _main(["report", str(run), "--watch", "7"], capsys)
    assert code == 0
    assert err.splitlines() == [f"writing {run / 'report.html'} every 7 s (the page reloads itself); Ctrl-C stops",
                                f"stopped after 2 report(s); {run / 'report.html'} is complete"]
    assert sizes[1] > sizes[0]  # the second report holds the charts of the new records
    assert '<meta http-equiv="refresh" content="7">' in (run / "report.html").read_text()
