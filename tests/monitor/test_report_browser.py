"""The run report in a real browser (headless Chromium through Playwright, tools/report_screenshot.py): it loads
with no console error and no network request, every section and image is there and decoded, the slider steps
through the sample grids, and a screenshot is written. Chromium is Debian's package, which `make test` installs
(`make browser`): under CI a missing browser fails (tests/assets.py)."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path

from PIL import Image

from diffusekit.monitor.report import SECTIONS, write_report

from ..assets import require_browser
from .report_run import GRID_NIMG, image_run

require_browser()

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("report_screenshot", ROOT / "tools" / "report_screenshot.py")
report_screenshot = importlib.util.module_from_spec(SPEC)
sys.modules.setdefault("report_screenshot", report_screenshot)  # dataclasses look their module up there
SPEC.loader.exec_module(report_screenshot)


def test_the_report_loads_cleanly_in_chromium_and_its_slider_steps_through_the_grids(tmp_path):
    run = image_run(tmp_path)
    report = write_report(run)
    shot = tmp_path / "shot.png"
    check = report_screenshot.open_report(report, shot, width=1200)
    assert check.problems == []
    assert check.sections == ["summary", *(ident for ident, _ in SECTIONS)]
    assert sorted(i["alt"] for i in check.images) == sorted([
        "training loss", "learning rate", "mean loss per noise level", "gap per noise level", "FID", "KID",
        "sample grid", "memorization grid pixel", "nearest neighbours inception-fast-96", "FID against sigma_rel",
        "throughput", "memory"])
    charts = [i for i in check.images if i["alt"] == "training loss"]
    assert charts[0]["width"] == 640  # decoded at the chart's size
    assert [s["label"] for s in check.slider] == [f"{n} images" for n in GRID_NIMG]
    grids = [run / "samples" / f"grid-{n:012d}.png" for n in GRID_NIMG]
    assert [s["src"] for s in check.slider] == [
        "data:image/png;base64," + base64.b64encode(g.read_bytes()).decode() for g in grids]
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width == 1200 and image.height > 2000  # the full page


def test_the_check_sees_console_errors_broken_images_and_network_requests(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><section id="a"></section><img alt="remote" '
                    'src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body></html>')
    check = report_screenshot.open_report(page)
    assert check.sections == ["a"]
    assert "boom" in check.console_errors
    assert check.requests == ["http://127.0.0.1:9/x.png"]
    assert check.broken_images == ["remote"]
