"""The run report without a browser: what is read from a run directory, what each section holds, the page's
self-containment, bad and empty runs, and the atomic write."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from html.parser import HTMLParser
from pathlib import Path

import pytest

from diffusekit.errors import MissingFileError, UsageError
from diffusekit.monitor.report import SECTIONS, _pick, _rise_note, render_report, write_report
from diffusekit.monitor.run_files import read_run

from .report_run import GRID_COLOURS, GRID_NIMG, SWEEP, image_run, metrics_records, png, write_metrics

SECTION_IDS = [ident for ident, _ in SECTIONS]


class Page(HTMLParser):
    """Per section id: its images (alt, src), its "not recorded" lines, and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.section = None
        self.images: dict[str, list[tuple[str, str]]] = {}
        self.missing: dict[str, list[str]] = {}
        self.text: dict[str, str] = {}
        self.scripts: list[dict] = []
        self.links: list[str] = []
        self._in_missing = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a["id"]
            self.images[self.section], self.missing[self.section], self.text[self.section] = [], [], ""
        elif tag == "img":
            self.images[self.section].append((a.get("alt"), a["src"]))
        elif tag == "p" and "missing" in (a.get("class") or ""):
            self._in_missing = True
            self.missing[self.section].append("")
        elif tag == "script":
            self.scripts.append(a)
        if tag in ("link", "a", "iframe") or "href" in a:
            self.links.append(a.get("href", ""))

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_missing = False

    def handle_data(self, data):
        if self.section is None:
            return
        self.text[self.section] += data
        if self._in_missing:
            self.missing[self.section][-1] += data


def _png_bytes(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,")
    return base64.b64decode(src.split(",", 1)[1])


@pytest.fixture
def run(tmp_path):
    return image_run(tmp_path)


def test_read_run_sorts_the_records_by_kind_and_finds_every_file(run):
    files = read_run(run)
    assert [r["cur_nimg"] for r in files.logs] == [100, 200, 300, 400]
    assert [r["cur_nimg"] for r in files.noise] == [200, 400]
    assert [r["fid"] for r in files.evaluations] == [50.0, 60.0]
    assert files.reconstruction == [] and files.problems == []
    assert [n for n, _ in files.grids] == list(GRID_NIMG)
    assert files.cur_nimg == 400 and files.kind == "image" and not files.empty
    assert files.setting("eval.loss_every") == 200 and files.setting("eval.nothing", "x") == "x"
    assert [name for name, _, _ in files.eval_results] == ["ckpt-000000000400-ema"]
    assert [r["sigma_rel"] for r in files.sweep["rows"]] == [0.05, 0.1, 0.2]  # sorted for the line
    assert files.sweep["best"] == SWEEP["best"]
    assert files.sessions[0]["world_size"] == 1


def test_the_kind_of_run_comes_from_its_config(tmp_path):
    for text, kind in (("network: {kind: autoencoder}", "autoencoder"), ("video: {frames: 8}", "video"),
                       ("latent: {autoencoder: ae/run}", "latent"), ("network: {kind: unet}", "image")):
        path = tmp_path / kind
        path.mkdir()
        (path / "config.yaml").write_text(text)
        assert read_run(path).kind == kind


def test_not_a_run_directory_and_a_missing_one_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match=r"is not a run directory \(no config.yaml, metrics.jsonl or checkpoints/\)"):
        read_run(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="is not a run directory"):
        read_run(tmp_path / "file.txt")
    with pytest.raises(MissingFileError, match="no such run directory"):
        read_run(tmp_path / "missing")


def test_unreadable_files_become_notes_not_failures(run):
    (run / "posthoc" / "sweep.json").write_text(json.dumps({"rows": [{"sigma_rel": "wide"}]}))
    (run / "environment.json").write_text("{not json")
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{damaged\n" + json.dumps({"cur_nimg": 500, "loss": 0.4}) + "\n")  # a damaged line inside
    files = read_run(run)
    assert files.sweep is None and files.sessions == [] and files.logs == []
    assert [p.split(":")[0] for p in files.problems] == ["environment.json", "metrics.jsonl", "posthoc/sweep.json"]
    page = Page(render_report(files))
    assert page.missing["posthoc"] == ["not recorded: no posthoc/sweep.json (the post-hoc EMA sweep writes it)"]
    assert "metrics.jsonl" in page.text["summary"] and "damaged metrics record" in page.text["summary"]


def test_every_section_of_a_full_run_holds_its_charts_and_images(run):
    text = render_report(read_run(run), generated="now")
    page = Page(text)
    assert list(page.images) == ["summary", *SECTION_IDS]
    alts = {section: [alt for alt, _ in images] for section, images in page.images.items()}
    assert alts == {"summary": [], "loss": ["training loss", "learning rate"],
                    "noise-levels": ["mean loss per noise level", "gap per noise level"], "fid": ["FID", "KID"],
                    "samples": ["sample grid"],
                    "memorization": ["memorization grid pixel", "nearest neighbours inception-fast-96"],
                    "posthoc": ["FID against sigma_rel"], "throughput": ["throughput", "memory"],
                    "config": [], "environment": []}
    # only what this run lacks is "not recorded": a gradient norm and GPU memory
    assert {s: m for s, m in page.missing.items() if m} == {
        "loss": ["not recorded: gradient norm (the trainer does not log it)"],
        "throughput": ["not recorded: GPU memory (a CPU run)"]}
    for section, images in page.images.items():
        for _, src in images:
            assert _png_bytes(src)[:8] == b"\x89PNG\r\n\x1a\n", section
    # the slider's grids are the files themselves, in training order, newest shown first
    data = json.loads(re.search(r'<script type="application/json" id="grid-data">(.*?)</script>', text).group(1))
    assert [g["label"] for g in data] == ["100 images", "200 images", "300 images", "400 images"]
    assert [_png_bytes(g["src"]) for g in data] == [(run / "samples" / f"grid-{n:012d}.png").read_bytes()
                                                    for n in GRID_NIMG]
    assert page.images["samples"][0][1] == data[-1]["src"]
    assert 'max="3" value="3"' in text
    # self-contained: no address outside the page, no external script or style
    assert [h for h in page.links if not h.startswith("#")] == []
    assert all("src" not in s for s in page.scripts)
    assert not re.search(r"(src|href)=\"(?!data:|#)", text)
    assert GRID_COLOURS  # (the fixture's grids differ, so the comparison above tells them apart)


def test_the_numbers_in_the_sections(run):
    page = Page(render_report(read_run(run)))
    assert "Best checkpoint: 200 images, FID 50 (saved to ckpt-000000000200 in best/)." in page.text["fid"]
    # validation mean 0.75 at 200 images, then 0.8: 6.7% higher; gaps of the last record per bin
    assert "lowest at 200 images (0.75) and is now 0.8, 6.7% higher" in page.text["noise-levels"]
    assert "necessary sign of memorization" in page.text["noise-levels"]
    assert "lsnr-5.0..0.00.60.80.2" in page.text["noise-levels"]  # bin, training, held-out, gap
    assert "Best EMA width: sigma_rel 0.1, FID 7.5." in page.text["posthoc"]
    assert "pixel1010.10.20.8" in page.text["memorization"]  # space, samples, flagged, fraction, p05, median
    assert "inception-fast-96: no sample flagged, no grid." in page.text["memorization"]
    assert "400 of 400 training images" in page.text["summary"] and "50 at 200 images" in page.text["summary"]
    assert "abc123" in page.text["environment"] and "world size" in page.text["environment"]


def test_rise_note_and_grid_picking_by_hand():
    assert _rise_note([1, 2, 3], [1.0, 0.8, 0.9]) == ("<p>The validation mean loss was lowest at 2 images (0.8) and "
                                                      "is now 0.9, 12.5% higher.</p>")
    assert "at its lowest" in _rise_note([1, 2], [1.0, 0.5])
    assert _rise_note([1], [1.0]) == ""
    assert _pick(10, 4) == [0, 3, 6, 9]
    assert _pick(3, 40) == [0, 1, 2]
    assert _pick(10, 1) == [9]


def test_an_empty_run_says_so_in_every_section_with_data(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "config.yaml").write_text("run: {total_images: 1000}\n")
    page = Page(render_report(read_run(run)))
    assert "No metrics yet" in page.text["summary"] and "0 of 1,000 training images" in page.text["summary"]
    lacking = [s for s in SECTION_IDS if page.missing[s]]
    assert lacking == ["loss", "noise-levels", "fid", "samples", "memorization", "posthoc", "throughput",
                       "environment"]
    assert page.missing["noise-levels"][0].startswith("not recorded: set eval.loss_every")
    assert sum(len(i) for i in page.images.values()) == 0


def test_an_autoencoder_run_shows_reconstruction_quality_and_rfid(tmp_path):
    run = tmp_path / "ae"
    run.mkdir()
    (run / "config.yaml").write_text("network: {kind: autoencoder, preset: f4}\n")
    records = [{"cur_nimg": n, "loss": 0.5 / i, "ae/l1": 0.1 / i, "ae/gan": -0.2, "lr": 1e-4, "img_per_s": 9.0,
                "peak_rss_mb": 100.0} for i, n in enumerate((64, 128), start=1)]
    records += [{"cur_nimg": 128, **{f"reconstruction/{s}/{m}": 20.0 + i for i, s in enumerate(("train", "val"))
                                     for m in ("psnr", "l1", "kl")}},
                {"cur_nimg": 128, "fid": 12.0, "kid": 0.01, "best_fid": 12.0, "best_nimg": 128,
                 "reconstruction": True}]
    write_metrics(run, records)
    png(run / "samples" / "grid-000000000128.png", (0, 0, 0))
    text = render_report(read_run(run))
    page = Page(text)
    assert "<h2>Reconstruction quality</h2>" in text
    assert [a for a, _ in page.images["noise-levels"]] == ["reconstruction psnr", "reconstruction l1",
                                                          "reconstruction kl"]
    assert [a for a, _ in page.images["loss"]] == ["training loss", "learning rate", "autoencoder loss terms"]
    assert "rFID (reconstructions) 12" in page.text["fid"]
    assert "held-out images above their reconstructions" in page.text["samples"]


def test_a_video_run_embeds_its_clips(tmp_path):
    run = tmp_path / "video"
    run.mkdir()
    (run / "config.yaml").write_text("video: {frames: 8}\n")
    write_metrics(run, [{"cur_nimg": 16, "loss": 1.0}])
    png(run / "samples" / "grid-000000000016.png", (0, 0, 0))
    (run / "samples.gif").write_bytes(b"GIF89a-not-decoded-here")
    page = Page(render_report(read_run(run)))
    assert "a row of frames per clip" in page.text["samples"]
    gif = [src for alt, src in page.images["samples"] if alt == "newest clips"]
    assert gif == ["data:image/gif;base64," + base64.b64encode(b"GIF89a-not-decoded-here").decode()]


def test_write_report_is_atomic_readable_and_refreshes_when_watched(run, tmp_path, monkeypatch):
    write_metrics(run, metrics_records()[:2])  # fewer charts: a faster test
    path = write_report(run)
    assert path == run / "report.html"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    before = path.read_text()
    assert "http-equiv" not in before
    out = write_report(run, tmp_path / "deep" / "r.html", refresh_s=5)
    assert '<meta http-equiv="refresh" content="5">' in out.read_text()

    def interrupted(*args, **kwargs):  # Ctrl-C in the middle of writing the page
        raise KeyboardInterrupt

    write_metrics(run, metrics_records()[:1])  # what the next report would show
    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(run)
    monkeypatch.undo()
    assert path.read_text() == before  # the old page is whole, and no temporary file is left beside it
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
