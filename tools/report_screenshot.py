"""Open a run report in headless Chromium: a full-page screenshot, and what a reader's browser would see.

    python tools/report_screenshot.py RUN_DIR --out report.png      # writes RUN_DIR/report.html first
    python tools/report_screenshot.py report.html --out report.png  # an existing report

Prints the sections and images found and any console error, failed image or network request (a report must
need none), and exits 1 when there is one. Chromium is Debian's ``chromium`` package (``make browser``
installs it; another binary: ``CHROMIUM=/path``), driven with Playwright without its own browser download.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# headless and quiet: no GPU, no sandbox (root in containers), nothing fetched in the background
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

_IMAGES = """() => Array.from(document.images).map(i => ({alt: i.alt, id: i.id, width: i.naturalWidth,
                                                        complete: i.complete}))"""
_SLIDER = """() => {
  const slider = document.getElementById("grid-slider");
  if (!slider) return [];
  const seen = [];
  for (let i = Number(slider.min); i <= Number(slider.max); i++) {
    slider.value = String(i);
    slider.dispatchEvent(new Event("input"));
    seen.push({label: document.getElementById("grid-label").textContent,
               src: document.getElementById("grid-image").src});
  }
  return seen;
}"""


@dataclass
class PageCheck:
    """What the browser saw."""

    sections: list[str]  # ids of the <section> elements, in order
    images: list[dict]  # {alt, id, width (natural, 0 when it failed to decode), complete}
    slider: list[dict]  # the grid label and image (its src) at each slider position, first to last
    console_errors: list[str] = field(default_factory=list)  # console.error and uncaught exceptions
    requests: list[str] = field(default_factory=list)  # network requests made (blocked): there should be none

    @property
    def broken_images(self) -> list[str]:
        return [i["alt"] for i in self.images if not i["complete"] or i["width"] == 0]

    @property
    def problems(self) -> list[str]:
        return ([f"console: {m}" for m in self.console_errors] + [f"request: {u}" for u in self.requests]
                + [f"image did not load: {a}" for a in self.broken_images])


def open_report(html_path: str | Path, screenshot: str | Path | None = None, width: int = 1400) -> PageCheck:
    """Load ``html_path`` in headless Chromium with the network blocked, step the sample slider through every
    position, and (with ``screenshot``) save a full-page PNG."""
    from playwright.sync_api import sync_playwright  # lazy: only this tool and its test need a browser

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: `make browser` installs Debian's chromium (or set CHROMIUM=path)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def block(route):  # everything but the report itself: a self-contained page asks for nothing
                if route.request.url == page_url:
                    route.continue_()
                else:
                    requests.append(route.request.url)
                    route.abort()

            page_url = Path(html_path).resolve().as_uri()
            page.route("**/*", block)
            page.goto(page_url, wait_until="load")
            sections = page.eval_on_selector_all("section", "nodes => nodes.map(n => n.id)")
            images = page.evaluate(_IMAGES)
            if screenshot is not None:  # before the slider moves: the newest grid, as a reader first sees it
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            slider = page.evaluate(_SLIDER)
        finally:
            browser.close()
    return PageCheck(sections, images, slider, errors, requests)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory (its report is written first) or a report .html")
    parser.add_argument("--out", required=True, help="the screenshot, PNG")
    parser.add_argument("--width", type=int, default=1400, help="browser window width in pixels")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if source.is_dir():
        from diffusekit.monitor.report import write_report  # lazy: a plain .html needs no diffusekit

        source = write_report(source)
        print(f"wrote {source}")
    check = open_report(source, args.out, args.width)
    print(f"sections: {', '.join(check.sections)}; {len(check.images)} images; slider positions: {len(check.slider)}")
    print(f"wrote {args.out}")
    for problem in check.problems:
        print(problem, file=sys.stderr)
    return 1 if check.problems else 0


if __name__ == "__main__":
    sys.exit(main())
