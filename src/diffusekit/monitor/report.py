"""A run's report: one self-contained HTML file (charts and images inline as base64, no network access).

Sections, each saying "not recorded" (and how to record it) when the run has no data for it: training loss,
learning rate and gradient norm; per-noise-level training / validation losses and their gap (an autoencoder:
reconstruction quality); FID / KID with the best checkpoint; sample grids per checkpoint behind a slider; the
memorization check of ``diffusekit eval``; the post-hoc EMA sweep; throughput and memory; the resolved config
and the environment. The only script is the slider's, a few lines inline.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .._files import atomic_write
from .report_charts import fid_chart, line_chart, loss_chart, series, sweep_chart
from .run_files import SWEEP_FILE, RunFiles, read_run

__all__ = ["render_report", "write_report", "SECTIONS", "MAX_GRIDS"]

# (id, title): the report's sections in order; every one is present in every report
SECTIONS = (("loss", "Training loss"), ("noise-levels", "Loss per noise level"), ("fid", "FID / KID"),
            ("samples", "Samples"), ("memorization", "Memorization check"), ("posthoc", "Post-hoc EMA sweep"),
            ("throughput", "Throughput and memory"), ("config", "Config"), ("environment", "Environment"))
MAX_GRIDS = 40  # sample grids embedded at most (evenly spaced, first and last kept): bounds the file's size

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1500px; padding: 0 1.5em 3em; color: #222; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .5em 0; z-index: 1; }
nav a { margin-right: 1em; color: #1f77b4; text-decoration: none; }
section { border-top: 1px solid #eee; margin-top: 1.5em; }
h1 { font-size: 1.5em; margin: .8em 0 .3em; } h2 { font-size: 1.2em; margin: 1em 0 .4em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; } .charts img { max-width: 100%; height: auto; }
.missing { color: #777; font-style: italic; } .note { background: #f6f8fa; padding: .5em .8em; border-radius: 4px; }
.problem { color: #b00; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .2em .6em; }
th { background: #f6f8fa; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; }
.grid img { image-rendering: pixelated; min-width: 256px; max-width: 100%; border: 1px solid #ddd; }
.slider { display: flex; align-items: center; gap: 1em; margin: .5em 0; } .slider input { width: 30em; }
"""

_SLIDER_SCRIPT = """
(function () {
  var grids = JSON.parse(document.getElementById("grid-data").textContent);
  var slider = document.getElementById("grid-slider");
  var image = document.getElementById("grid-image");
  var label = document.getElementById("grid-label");
  function show(i) { image.src = grids[i].src; label.textContent = grids[i].label; }
  slider.addEventListener("input", function () { show(Number(slider.value)); });
  show(Number(slider.value));
})();
"""


# -- small HTML pieces ------------------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value))


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _chart(png: bytes | None, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="{_data_uri(png)}">' if png else ""


def _charts(*images: str) -> str:
    images = tuple(i for i in images if i)
    return f'<div class="charts">{"".join(images)}</div>' if images else ""


def _missing(what: str) -> str:
    return f'<p class="missing">not recorded: {what}</p>'


def _number(value, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{_number(v)}</td>' if isinstance(v, int | float) and not isinstance(v, bool)
        else f"<td>{_e('' if v is None else v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image_file(path: Path, alt: str) -> str:
    mime = "image/gif" if path.suffix.lower() == ".gif" else "image/png"
    return f'<img alt="{_e(alt)}" src="{_data_uri(path.read_bytes(), mime)}">'


# -- sections ---------------------------------------------------------------------------------------------------
def _summary(run: RunFiles, generated: str) -> str:
    total = run.setting("run.total_images")
    network = f"{run.setting('network.kind', '?')}:{run.setting('network.preset', '?')}"
    progress = f"{run.cur_nimg:,}" + (f" of {total:,}" if isinstance(total, int) else "") + " training images"
    losses = series(run.logs, "loss")[1]
    facts = [("run", str(run.path)), ("kind", run.kind), ("data", run.setting("data.name", "?")),
             ("network", network), ("progress", progress)]
    if losses:
        facts.append(("last training loss", _number(losses[-1])))
    best = _best(run)
    if best is not None:
        facts.append(("best FID", f"{_number(best[1])} at {best[0]:,.0f} images"))
    facts.append(("report written", generated))
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    out = f"<table>{rows}</table>"
    if run.empty:
        out += ('<p class="note" id="empty-run">No metrics yet: the run has not logged anything (metrics.jsonl is '
                "missing or empty). The sections below fill in as training logs, evaluates and samples.</p>")
    for problem in run.problems:
        out += f'<p class="problem">{_e(problem)}</p>'
    return out


def _loss_section(run: RunFiles) -> str:
    if not run.logs:
        return _missing("no training log records yet (one every run.log_every images)")
    loss = _chart(loss_chart(run.logs), "training loss")
    lr = _chart(line_chart({"lr": series(run.logs, "lr")}, "learning rate", "lr"), "learning rate")
    grad_keys = sorted({k for r in run.logs for k in r if "grad_norm" in k})
    grad = _chart(line_chart({k: series(run.logs, k) for k in grad_keys}, "gradient norm", "norm", log_y=True),
                  "gradient norm")
    ae_keys = sorted({k for r in run.logs for k in r if k.startswith("ae/")})
    ae = _chart(line_chart({k[3:]: series(run.logs, k) for k in ae_keys}, "autoencoder loss terms", "value"),
                "autoencoder loss terms")
    out = _charts(loss, lr, grad, ae)
    if not loss:
        out += _missing("no finite training loss in the log")
    if not grad:
        out += _missing("gradient norm (the trainer does not log it)")
    skipped = max((r.get("skipped_steps", 0) for r in run.logs if isinstance(r.get("skipped_steps"), int)),
                  default=0)
    if skipped:
        out += f'<p class="note">{skipped:,} updates were skipped for a non-finite loss or gradient.</p>'
    return out


_MEMORIZATION_NOTE = ('<p class="note">A validation loss (held-out images) that rises while the training loss keeps '
                      "falling is a necessary sign of memorization: a network that memorizes its training images "
                      "denoises them better than new ones. It is not sufficient: compare samples with their nearest "
                      "training images (the memorization check below).</p>")


def _bins(records: list[dict], prefix: str) -> list[str]:
    """The per-bin keys under ``prefix`` (``noise/gap/``), in the order the records list them, without the mean."""
    keys: dict[str, None] = {}
    for r in records:
        keys.update({k: None for k in r if k.startswith(prefix) and not k.endswith("/mean")})
    return list(keys)


def _rise_note(x: list[float], y: list[float]) -> str:
    """How far the newest validation mean lies above its lowest value, when it does."""
    if len(y) < 2:
        return ""
    low = min(range(len(y)), key=lambda i: y[i])
    if low == len(y) - 1 or not y[low] > 0:
        return "<p>The validation mean loss is at its lowest at the newest evaluation.</p>"
    rise = (y[-1] - y[low]) / y[low]
    return (f"<p>The validation mean loss was lowest at {x[low]:,.0f} images ({y[low]:.4g}) and is now "
            f"{y[-1]:.4g}, {100 * rise:.1f}% higher.</p>")


def _noise_section(run: RunFiles) -> str:
    if run.kind == "autoencoder":
        return _reconstruction_section(run)
    if not run.noise:
        return _missing("set eval.loss_every to log the training and held-out loss per noise level every N images")
    x_val, y_val = series(run.noise, "noise/val/mean")
    means = _chart(line_chart({"training images": series(run.noise, "noise/train/mean"),
                               "held-out images": (x_val, y_val)},
                              "mean loss over noise levels", "loss", log_y=True), "mean loss per noise level")
    gap_keys = _bins(run.noise, "noise/gap/")
    gaps = _chart(line_chart({k.removeprefix("noise/gap/"): series(run.noise, k) for k in gap_keys},
                             "validation - training loss per log-SNR bin", "gap"), "gap per noise level")
    out = _MEMORIZATION_NOTE + _charts(means, gaps)
    if not x_val:
        out += '<p class="note">No held-out split (eval.validation): training loss only.</p>'
    out += _rise_note(x_val, y_val)
    last = run.noise[-1]
    rows = [(k.removeprefix("noise/train/"), last.get(k), last.get("noise/val/" + k[len("noise/train/"):]),
             last.get("noise/gap/" + k[len("noise/train/"):])) for k in _bins(run.noise, "noise/train/")]
    out += f"<p>At {last['cur_nimg']:,} images:</p>" + _table(("log-SNR bin", "training", "held-out", "gap"), rows)
    return out


def _reconstruction_section(run: RunFiles) -> str:
    if not run.reconstruction:
        return _missing("set eval.loss_every to log the reconstruction quality on training and held-out images")
    charts = [_chart(line_chart({f"{split}": series(run.reconstruction, f"reconstruction/{split}/{metric}")
                                 for split in ("train", "val")}, f"reconstruction {metric}", metric),
                     f"reconstruction {metric}") for metric in ("psnr", "l1", "kl")]
    return ('<p class="note">An autoencoder: reconstruction quality on training and held-out images; a held-out '
            "PSNR falling behind the training PSNR is overfitting.</p>" + _charts(*charts))


def _best(run: RunFiles) -> tuple[float, float] | None:
    """(images, FID) of the best evaluation, as the trainer recorded it (else the lowest FID logged)."""
    for r in reversed(run.evaluations):
        if isinstance(r.get("best_fid"), int | float) and isinstance(r.get("best_nimg"), int | float):
            return float(r["best_nimg"]), float(r["best_fid"])
    x, y = series(run.evaluations, "fid")
    finite = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(b)]
    return min(finite, key=lambda p: p[1]) if finite else None


def _fid_section(run: RunFiles) -> str:
    out = ""
    if run.evaluations:
        name = "rFID (reconstructions)" if any(r.get("reconstruction") for r in run.evaluations) else "FID"
        best = _best(run)
        kid_best = None
        if best is not None:
            kid_best = next(((best[0], float(r["kid"])) for r in run.evaluations
                             if r.get("cur_nimg") == best[0] and isinstance(r.get("kid"), int | float)), None)
        extractor = run.evaluations[-1].get("extractor", "")
        out += _charts(_chart(fid_chart(run.evaluations, "fid", best, f"{name}, {extractor}"), "FID"),
                       _chart(fid_chart(run.evaluations, "kid", kid_best, f"KID, {extractor}"), "KID"))
        checkpoint = run.evaluations[-1].get("best_checkpoint") or next(
            (r.get("best_checkpoint") for r in reversed(run.evaluations) if r.get("best_checkpoint")), None)
        if best is not None:
            where = f" (saved to {Path(checkpoint).name} in best/)" if checkpoint else ""
            out += f"<p>Best checkpoint: {best[0]:,.0f} images, {name} {best[1]:.4g}{where}.</p>"
        rows = [(r["cur_nimg"], r.get("fid"), r.get("kid"), r.get("kid_std"), r.get("num_samples"),
                 "yes" if r.get("improved") else "") for r in run.evaluations]
        out += _table(("images", "FID", "KID", "KID std", "samples", "improved"), rows)
    else:
        out += _missing("set eval.every to score EMA samples (FID / KID) during training")
    if run.eval_results:
        rows = [(name, r.get("cur_nimg"), r.get("weights"), r.get("n"), r.get("fid"), r.get("kid"),
                 r.get("sampler"), r.get("steps")) for name, r, _ in run.eval_results]
        out += "<h3>diffusekit eval</h3>" + _table(
            ("eval/", "images", "weights", "samples", "FID", "KID", "sampler", "steps"), rows)
    return out


def _pick(count: int, most: int) -> list[int]:
    """At most ``most`` indices of ``range(count)``, evenly spaced, keeping the first and the last."""
    if count <= most:
        return list(range(count))
    if most == 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def _samples_section(run: RunFiles, max_grids: int) -> str:
    if not run.grids:
        return _missing("no sample grids yet (samples/grid-*.png, one every run.sample_every images)")
    what = {"autoencoder": "held-out images above their reconstructions",
            "video": "a row of frames per clip"}.get(run.kind, "EMA samples, the same noise every time")
    picked = [run.grids[i] for i in _pick(len(run.grids), max_grids)]
    grids = [{"label": f"{nimg:,} images", "src": _data_uri(path.read_bytes())} for nimg, path in picked]
    data = json.dumps(grids).replace("</", "<\\/")
    last = len(grids) - 1
    shown = "" if len(picked) == len(run.grids) else f" ({len(picked)} of {len(run.grids)} shown)"
    count = f"{len(run.grids)} grid" + ("s" if len(run.grids) > 1 else "")
    out = (f"<p>{_e(what)}; {count}{shown}. Drag the slider to step through training.</p>"
           f'<div class="slider"><input type="range" id="grid-slider" min="0" max="{last}" value="{last}" '
           f'aria-label="checkpoint"><span id="grid-label">{_e(grids[-1]["label"])}</span></div>'
           f'<div class="grid"><img id="grid-image" alt="sample grid" src="{grids[-1]["src"]}"></div>'
           f'<script type="application/json" id="grid-data">{data}</script><script>{_SLIDER_SCRIPT}</script>')
    if run.animation is not None:
        out += "<p>The newest clips, playing:</p>" + _image_file(run.animation, "newest clips")
    return out


def _memorization_section(run: RunFiles) -> str:
    checks = [(name, r["memorization"], folder) for name, r, folder in run.eval_results
              if isinstance(r.get("memorization"), dict)]
    if not checks:
        return _missing("run <code>diffusekit eval RUN --metrics memorization</code> (its results.json and "
                        "nearest-neighbour grids in RUN/eval/ appear here)")
    out = ('<p class="note">Each generated sample against its two nearest training images: a sample whose nearest '
           "neighbour is under a third as far as the second nearest is flagged as a copy (Yoon et al. 2023). The "
           "grids show samples (left) beside their nearest training images, smallest ratio first: the flagged "
           "ones, and the closest ones whether flagged or not (<code>diffusekit eval</code> writes both).</p>")
    for name, spaces, folder in checks:
        rows = []
        grids = []
        for space, s in spaces.items():
            if not isinstance(s, dict):
                continue
            quantiles = s.get("ratio_quantiles") or {}
            rows.append((space, s.get("n"), s.get("flagged"), s.get("fraction"), quantiles.get("p05"),
                         quantiles.get("p50")))
            grid = folder / f"memorization-{space}.png"
            if grid.is_file():
                grids.append(f"<figure><figcaption>{_e(space)}: flagged samples</figcaption>"
                             f"{_image_file(grid, f'memorization grid {space}')}</figure>")
            else:
                grids.append(f"<p>{_e(space)}: no sample flagged, no grid.</p>")
            nearest = folder / f"memorization-{space}-nearest.png"
            if nearest.is_file():
                grids.append(f"<figure><figcaption>{_e(space)}: smallest ratios, flagged or not</figcaption>"
                             f"{_image_file(nearest, f'nearest neighbours {space}')}</figure>")
        out += (f"<h3>eval/{_e(name)}</h3>" + _table(("space", "samples", "flagged", "fraction", "d1/d2 p05",
                                                      "d1/d2 median"), rows)
                + f'<div class="charts grid">{"".join(grids)}</div>')
    return out


def _posthoc_section(run: RunFiles) -> str:
    if run.sweep is None:
        return _missing(f"no {SWEEP_FILE} (the post-hoc EMA sweep writes it)")
    rows, best = run.sweep["rows"], run.sweep["best"]
    out = _charts(_chart(sweep_chart(rows, best), "FID against sigma_rel"))
    if best and isinstance(best.get("sigma_rel"), int | float):
        out += f"<p>Best EMA width: sigma_rel {best['sigma_rel']:g}, FID {_number(best.get('fid'))}.</p>"
    return out + _table(("sigma_rel", "FID", "KID", "samples"),
                        [(r["sigma_rel"], r["fid"], r.get("kid"), r.get("n")) for r in rows])


def _throughput_section(run: RunFiles) -> str:
    if not run.logs:
        return _missing("no training log records yet")
    speed = _chart(line_chart({"img/s": series(run.logs, "img_per_s")}, "throughput", "training images / s"),
                   "throughput")
    gpu = series(run.logs, "peak_gpu_mb")
    memory = _chart(line_chart({"peak RSS": series(run.logs, "peak_rss_mb"), "peak GPU": gpu},
                               "peak memory", "MiB"), "memory")
    out = _charts(speed, memory)
    if not speed:
        out += _missing("images per second")
    if not gpu[0]:
        out += _missing("GPU memory (a CPU run)")
    elapsed = [r["elapsed_s"] for r in run.logs if isinstance(r.get("elapsed_s"), int | float)]
    if elapsed:
        out += (f"<p>The newest session has run {elapsed[-1] / 60:.1f} min; img/s leaves out the time spent "
                "evaluating and sampling.</p>")
    return out


def _config_section(run: RunFiles) -> str:
    if run.config_text is None:
        return _missing("no config.yaml")
    return f"<details><summary>config.yaml (resolved)</summary><pre>{_e(run.config_text)}</pre></details>"


_ENV_COLUMNS = (("start_nimg", "from image"), ("time", "started"), ("host", "host"), ("device", "device"),
                ("gpu", "GPU"), ("world_size", "world size"), ("threads", "threads"), ("python", "python"),
                ("torch", "torch"), ("numpy", "numpy"), ("diffusekit", "diffusekit"), ("git", "git"))


def _environment_section(run: RunFiles) -> str:
    if not run.sessions:
        return _missing("no environment.json")
    columns = [(k, title) for k, title in _ENV_COLUMNS if any(k in s for s in run.sessions)]
    rows = [[s.get(k) for k, _ in columns] for s in run.sessions]
    commands = "".join(f"<pre>{_e(' '.join(map(str, s.get('command', []))))}</pre>" for s in run.sessions)
    return (f"<p>{len(run.sessions)} session(s): one per start or resume.</p>"
            + _table([title for _, title in columns], rows)
            + f"<details><summary>command lines</summary>{commands}</details>")


# -- the page ---------------------------------------------------------------------------------------------------
def render_report(run: RunFiles, *, generated: str | None = None, refresh_s: float | None = None,
                  max_grids: int = MAX_GRIDS) -> str:
    """The HTML page of ``run``. ``refresh_s``: the browser reloads the page that often (``--watch``)."""
    if max_grids < 1:
        raise ValueError(f"max_grids must be at least 1, got {max_grids}")
    generated = generated or time.strftime("%Y-%m-%d %H:%M:%S")
    bodies = {"loss": _loss_section(run), "noise-levels": _noise_section(run), "fid": _fid_section(run),
              "samples": _samples_section(run, max_grids), "memorization": _memorization_section(run),
              "posthoc": _posthoc_section(run), "throughput": _throughput_section(run),
              "config": _config_section(run), "environment": _environment_section(run)}
    titles = dict(SECTIONS)
    if run.kind == "autoencoder":
        titles["noise-levels"] = "Reconstruction quality"
    nav = "".join(f'<a href="#{ident}">{_e(titles[ident])}</a>' for ident, _ in SECTIONS)
    sections = "".join(f'<section id="{ident}"><h2>{_e(titles[ident])}</h2>{bodies[ident]}</section>'
                       for ident, _ in SECTIONS)
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s else ""
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">{refresh}<title>diffusekit report: {_e(run.path.name)}'
            f"</title><style>{_STYLE}</style></head><body><nav>{nav}</nav>"
            f'<h1>Run report: {_e(run.path.name)}</h1><section id="summary">{_summary(run, generated)}</section>'
            f"{sections}</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, *, refresh_s: float | None = None,
                 max_grids: int = MAX_GRIDS) -> Path:
    """Read ``run_dir`` and write its report to ``out`` (default ``run_dir/report.html``) atomically: a temporary
    file, then a rename, so that a browser reloading it never reads half a page. Returns the path."""
    run = read_run(run_dir)
    page = render_report(run, refresh_s=refresh_s, max_grids=max_grids)
    out = Path(out) if out is not None else run.path / "report.html"

    def write(tmp: str) -> None:
        Path(tmp).write_text(page, encoding="utf-8")
        os.chmod(tmp, 0o644)  # a page to share and serve, not the private file mkstemp makes

    return atomic_write(out, write)
