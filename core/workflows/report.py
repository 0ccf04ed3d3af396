"""``mmvae report RUN [DATA] --out report.html``: one self-contained HTML page about a trained run.

The page holds the run's summary and configuration, its training curves, the latent projection of its
cohort (:mod:`core.workflows.projection`), leave-one-out imputation metrics on its held-out subjects beside the mean
image (:func:`core.workflows.synthesis.leave_one_out_table`, scored with :mod:`core.metrics`), and a few
leave-one-out synthesis panels (middle slices of the real volume, the synthesis, their difference and
the uncertainty map, with the subject's metrics; :mod:`core.workflows.synthesis`).

It depends on nothing beyond ``core``: curves and scatter plots are inline SVG written here, slices are
PNG images encoded here with :mod:`zlib` and embedded as ``data:`` URIs, so the file can be mailed or
archived alone and opens in any browser. No Qt, no matplotlib.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import core
from core.display import PALETTE, colorize, display_window
from core.progress import CancelFn, ProgressFn, ProgressReporter, raise_if_cancelled, report_progress

__all__ = [
    "png_bytes",
    "svg_line_chart",
    "svg_scatter",
    "build_report",
    "write_report",
    "add_arguments",
    "run_from_args",
]

#: Categorical colours (Tableau 10), shared with the workbench's projection plots.
_LINE_COLOURS = {"train": "#4e79a7", "val": "#e15759"}


# ---------------------------------------------------------------------------------------------- PNG
def png_bytes(image: np.ndarray) -> bytes:
    """Encode a ``(H, W)`` gray or ``(H, W, 3)`` RGB uint8 array as PNG (zlib only)."""
    array = np.ascontiguousarray(image, dtype=np.uint8)
    if array.ndim == 2:
        colour_type = 0
    elif array.ndim == 3 and array.shape[2] == 3:
        colour_type = 2
    else:
        raise ValueError(f"png_bytes takes (H, W) or (H, W, 3) arrays, got shape {array.shape}.")
    height, width = array.shape[:2]
    raw = b"".join(b"\x00" + array[row].tobytes() for row in range(height))

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _middle_axial(array: np.ndarray) -> np.ndarray:
    """The middle axial slice shown as radiologists expect (R to the right... as stored: X right, Y up)."""
    a = np.asarray(array, dtype=np.float32)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    cut = a[:, :, a.shape[2] // 2] if a.ndim == 3 else a
    return cut.T[::-1]  # rows: Y from anterior (top) to posterior; columns: X


# ---------------------------------------------------------------------------------------------- SVG
def _fmt(v: float) -> str:
    if abs(v) >= 1e4 and abs(v) < 1e9:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _ticks(low: float, high: float, n: int = 5, integer: bool = False) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / n))
    if integer:
        step = max(step, 1)
    for m in (1, 2, 2.5, 5, 10):
        if (high - low) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(low / step) * step
    return [first + k * step for k in range(int((high - first) / step) + 1)]


def svg_line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "", *,
                   width: int = 520, height: int = 260, log_y: bool | None = None, x_label: str = "epoch",
                   colours: Mapping[str, str] | None = None) -> str:
    """An SVG line chart of named ``(x, y)`` series (non-finite points skipped); log y when asked, or
    automatically when every value is positive and they span more than two decades."""
    clean = {}
    for name, (xs, ys) in series.items():
        pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=False) if y is not None and math.isfinite(float(y))]
        if pts:
            clean[name] = pts
    if not clean:
        return f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'><text x='10' y='20'>no data</text></svg>"
    all_y = [y for pts in clean.values() for _, y in pts]
    all_x = [x for pts in clean.values() for x, _ in pts]
    if log_y is None:
        log_y = min(all_y) > 0 and max(all_y) / min(all_y) > 100
    if log_y and min(all_y) <= 0:
        log_y = False
    ty = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    y0, y1 = min(ty(v) for v in all_y), max(ty(v) for v in all_y)
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    x0, x1 = min(all_x), max(all_x)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    left, right, top, bottom = 58, 12, 24 if title else 10, 34
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (1 - (ty(v) - y0) / (y1 - y0)) * ph

    parts = [f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' xmlns='http://www.w3.org/2000/svg' "
             "font-family='sans-serif' font-size='11'>",
             f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='#fff' stroke='#ccc'/>"]
    if title:
        parts.append(f"<text x='{left}' y='15' font-weight='bold'>{html.escape(title)}</text>")
    ticks = [10**t for t in _ticks(y0, y1) if y0 <= t <= y1] if log_y else [t for t in _ticks(y0, y1) if y0 <= t <= y1]
    for t in ticks:
        y = py(t)
        parts.append(f"<line x1='{left}' x2='{left + pw}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
                     f"<text x='{left - 4}' y='{y + 4:.1f}' text-anchor='end' fill='#555'>{_fmt(t)}</text>")
    for t in _ticks(x0, x1, 6, integer=True):
        if x0 <= t <= x1 and float(t).is_integer():
            x = px(t)
            parts.append(f"<text x='{x:.1f}' y='{top + ph + 14}' text-anchor='middle' fill='#555'>{_fmt(t)}</text>")
    parts.append(f"<text x='{left + pw / 2}' y='{height - 4}' text-anchor='middle' fill='#555'>{html.escape(x_label)}"
                 f"{' (log y)' if log_y else ''}</text>")
    palette = dict(colours or {})
    for k, (name, pts) in enumerate(clean.items()):
        colour = palette.get(name) or PALETTE[k % len(PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='1.8'/>")
        for x, y in pts if len(pts) <= 60 else ():
            parts.append(f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='2' fill='{colour}'/>")
        parts.append(f"<rect x='{left + pw - 110}' y='{top + 6 + 15 * k}' width='10' height='3' fill='{colour}'/>"
                     f"<text x='{left + pw - 96}' y='{top + 11 + 15 * k}'>{html.escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def svg_scatter(xy: np.ndarray, colours: Sequence[str], *, title: str = "", tips: Sequence[str] | None = None,
                limits: tuple[float, float, float, float] | None = None, size: int = 260, radius: float = 3.5) -> str:
    """An SVG scatter of ``xy`` (NaN rows skipped) with one CSS colour per point and hover titles."""
    xy = np.asarray(xy, dtype=np.float64)
    ok = np.isfinite(xy).all(1)
    if limits is None:
        pts = xy[ok] if ok.any() else np.zeros((1, 2))
        limits = (float(pts[:, 0].min()), float(pts[:, 0].max()), float(pts[:, 1].min()), float(pts[:, 1].max()))
    x0, x1, y0, y1 = limits
    span = max(x1 - x0, y1 - y0, 1e-9) * 1.08
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    top = 22 if title else 6
    inner = size - 12
    parts = [f"<svg width='{size}' height='{size + top - 6}' viewBox='0 0 {size} {size + top - 6}' "
             "xmlns='http://www.w3.org/2000/svg' font-family='sans-serif' font-size='11'>"]
    if title:
        parts.append(f"<text x='6' y='15' font-weight='bold'>{html.escape(title)}</text>")
    parts.append(f"<rect x='6' y='{top}' width='{inner}' height='{inner}' fill='#fff' stroke='#ccc'/>")
    for i in np.flatnonzero(ok):
        px = 6 + ((xy[i, 0] - cx) / span + 0.5) * inner
        py = top + (0.5 - (xy[i, 1] - cy) / span) * inner
        tip = f"<title>{html.escape(tips[i])}</title>" if tips is not None else ""
        parts.append(f"<circle cx='{px:.1f}' cy='{py:.1f}' r='{radius}' fill='{colours[i]}' fill-opacity='0.85' "
                     f"stroke='#333' stroke-width='0.4'>{tip}</circle>")
    if not ok.any():
        parts.append(f"<text x='{size / 2}' y='{top + inner / 2}' text-anchor='middle' fill='#777'>no subject</text>")
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------- run files
_SKIP_TERMS = {"grad_norm", "beta"}


def _curves_html(run_dir: Path) -> str:
    from core.training.checkpoint import read_metrics_csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return "<p class='note'>No <code>metrics.csv</code>: the run has not finished an epoch.</p>"
    rows = read_metrics_csv(path)
    epochs = [r.get("epoch") for r in rows]
    main = {label: (epochs, [r.get(f"{prefix}/loss") for r in rows]) for prefix, label in (("train", "train"), ("val", "val"))
            if any(r.get(f"{prefix}/loss") is not None for r in rows)}
    charts = [svg_line_chart(main, "Total loss", width=560, height=280, colours=_LINE_COLOURS)]
    terms = [k[len("train/"):] for k in (rows[0] if rows else {}) if k.startswith("train/") and k != "train/loss"
             and k[len("train/"):] not in _SKIP_TERMS]
    small = []
    for term in terms[:12]:
        series = {label: (epochs, [r.get(f"{prefix}/{term}") for r in rows]) for prefix, label in (("train", "train"), ("val", "val"))
                  if any(r.get(f"{prefix}/{term}") is not None for r in rows)}
        small.append(svg_line_chart(series, term, width=280, height=180, colours=_LINE_COLOURS))
    best = [r for r in rows if r.get("val/loss") is not None]
    note = ""
    if best:
        b = min(best, key=lambda r: r["val/loss"])
        note = f"<p>Best validation loss <b>{_fmt(b['val/loss'])}</b> at epoch {int(b['epoch'])} of {len(rows)}.</p>"
    return note + "<div class='row'>" + "".join(charts) + "</div><div class='row'>" + "".join(small) + "</div>"


# ---------------------------------------------------------------------------------------------- sections
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else html.escape(_cell(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table class='{classes}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Raw(str):
    """Trusted HTML for a table cell."""


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else _fmt(value)
    return str(value)


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb[:3])


def _colour_list(projection: Any, column: str) -> tuple[list[str], list[tuple[str, str]]]:
    col = projection.colours[column]
    if col.kind == "categorical":
        colours = [PALETTE[int(v) % len(PALETTE)] if v >= 0 else "#cccccc" for v in col.values]
        legend = [(c, PALETTE[i % len(PALETTE)]) for i, c in enumerate(col.categories)]
        return colours, legend
    values = np.asarray(col.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    rgb = colorize(values, (low, high if high > low else low + 1), "inferno")
    colours = ["#cccccc" if not np.isfinite(v) else _hex(c) for v, c in zip(values, rgb, strict=True)]
    ends = colorize(np.array([0.0, 1.0]), (0.0, 1.0), "inferno")
    legend = [(_fmt(low), _hex(ends[0])), (_fmt(high), _hex(ends[1]))]
    return colours, legend


def projection_html(projection: Any, colour_by: str = "missingness") -> str:
    """The joint projection and one per modality (shared axes), coloured by ``colour_by``, with the agreement table."""
    from core.workflows.projection import JOINT

    colours, legend = _colour_list(projection, colour_by)
    all_xy = np.concatenate([v for v in projection.views.values()])
    ok = np.isfinite(all_xy).all(1)
    pts = all_xy[ok] if ok.any() else np.zeros((1, 2))
    limits = (float(pts[:, 0].min()), float(pts[:, 0].max()), float(pts[:, 1].min()), float(pts[:, 1].max()))
    labels = projection.colours[colour_by].labels()
    what = "has" if colour_by == "missingness" else colour_by  # the pattern lists the modalities it has
    tips = [f"{s} · {what}: {v}" for s, v in zip(projection.subjects, labels, strict=True)]
    method = projection.label()
    big = svg_scatter(projection.views[JOINT], colours, title=f"{method} of the posterior means, all observed modalities",
                      tips=tips, limits=limits, size=380, radius=4.5)
    small = "".join(svg_scatter(projection.views[m], colours, title=f"from {m} alone", tips=tips, limits=limits, size=210,
                                radius=3) for m in projection.modalities)
    legend_html = "".join(f"<span class='chip'><i style='background:{c}'></i>{html.escape(name)}</span>" for name, c in legend)
    rows = [(m, a.get("n"), a.get("retrieval"), a.get("relative_distance")) for m, a in projection.agreement.items()]
    agreement = _table(["modality alone", "subjects", "finds its own joint code (top-1)", "distance to joint code / spread"], rows)
    return (f"<p>{html.escape(projection.caption())}; coloured by <b>{html.escape(colour_by)}</b>. "
            "All panels share the same axes: where the modalities agree, a subject sits in the same place in each.</p>"
            f"<div class='legend'>{legend_html}</div><div class='row'>{big}<div class='grid'>{small}</div></div>{agreement}")


def _panel_html(ctx: Any, synthesis: Any, modality: str) -> str:
    item = synthesis.results[modality]
    levels = display_window((item.real, item.mean)) or (0.0, 1.0)
    diff = item.difference
    d_max = float(np.nanpercentile(np.abs(diff), 99)) if diff is not None else 1.0
    s_max = float(np.nanpercentile(item.std, 99)) or 1.0
    cells = [
        ("real", colorize(_middle_axial(item.real), levels) if item.real is not None else None),
        ("synthesized", colorize(_middle_axial(item.mean), levels)),
        ("synthesized − real",
         colorize(_middle_axial(diff), (-max(d_max, 1e-6), max(d_max, 1e-6)), "diverging") if diff is not None else None),
        (f"uncertainty (std, N={synthesis.n_samples})", colorize(_middle_axial(item.std), (0.0, s_max), "inferno")),
        ("mean image (baseline)", colorize(_middle_axial(item.mean_image), levels) if item.mean_image is not None else None),
    ]
    figures = "".join(
        f"<figure><img src='{_data_uri(png_bytes(rgb))}' alt='{html.escape(name)}'><figcaption>{html.escape(name)}</figcaption></figure>"
        for name, rgb in cells if rgb is not None)
    scores = ""
    if item.metrics:
        rows = [("synthesis", item.metrics.get("mse"), item.metrics.get("psnr"), item.metrics.get("ssim")),
                ("mean image", item.baseline.get("mse"), item.baseline.get("psnr"), item.baseline.get("ssim"))]
        verdict = "beats" if item.beats_mean_image else "does not beat"
        scores = _table(["", "MSE", "PSNR (dB)", "SSIM"], rows, "compact") + \
            f"<p class='note'>The synthesis {verdict} the mean image on this subject (lower MSE and higher SSIM).</p>"
    return (f"<div class='panel'><h3>{html.escape(synthesis.subject)}: {html.escape(modality)} hidden, synthesized from "
            f"{html.escape('+'.join(synthesis.conditioning))}</h3><div class='row'>{figures}</div>{scores}</div>")


def _choose_panels(ctx: Any, n_panels: int) -> list[tuple[str, str]]:
    order = {"test": 0, "validation": 1, "train": 2}
    candidates = sorted((s for s in ctx.dataset.ids if len(ctx.observed(s)) >= 2), key=lambda s: (order.get(ctx.split.get(s, ""), 3), s))
    chosen: list[tuple[str, str]] = []
    for k, s in enumerate(candidates[:n_panels]):
        observed = ctx.observed(s)
        chosen.append((s, observed[k % len(observed)]))
    return chosen


def _metrics_html(ctx: Any, progress: ProgressFn | None, cancel: CancelFn | None) -> str:
    from core.workflows.synthesis import PASS_FRACTION, leave_one_out_table, verdicts_from_rows

    held_out = [s for s in ctx.dataset.ids if ctx.split.get(s) in ("validation", "test")]
    subjects, part = (held_out, "held-out (validation and test)") if held_out else (list(ctx.dataset.ids), "")
    rows = leave_one_out_table(ctx, subjects, n_samples=1, progress=progress, cancel=cancel)
    if not rows:
        return f"<p class='note'>No {part} subject has two modalities: nothing can be hidden and synthesized back.</p>"
    table_rows = []
    for m in ctx.modalities:
        mine = [r for r in rows if r["modality"] == m]
        if not mine:
            continue

        def mean(key: str, rows: list[dict[str, Any]] = mine) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None]
            return float(np.mean(values)) if values else None

        wins = [r["beats_mean_image"] for r in mine if r["beats_mean_image"] is not None]
        share = f"{sum(wins)} of {len(wins)}" if wins else None
        table_rows.append((m, len(mine), mean("mse"), mean("mean_image_mse"), mean("psnr"), mean("mean_image_psnr"),
                           mean("ssim"), mean("mean_image_ssim"), share))
    header = ["hidden modality", "subjects", "MSE model", "MSE mean image", "PSNR model (dB)", "PSNR mean image",
              "SSIM model", "SSIM mean image", "model beats the mean image (MSE and SSIM)"]
    scope = (f"the run's <b>{part}</b> subjects ({len(subjects)})" if part
             else f"all {len(subjects)} subjects (the run has no held-out split)")
    return (f"<p>Leave-one-out on {scope}: each modality a subject has is hidden and synthesized from the subject's other "
            "modalities (decoded posterior mean), then scored over its observed voxels against the real volume, beside "
            "the mean image of the training subjects. PSNR and SSIM use the modality's intensity range over the training "
            "subjects.</p>" + _table(header, table_rows) + _verdicts_html(verdicts_from_rows(rows, ctx.modalities),
                                                                      PASS_FRACTION))


def _verdicts_html(verdicts: dict[str, Any], pass_fraction: float) -> str:
    """One plain-words verdict per modality (:func:`core.workflows.synthesis.verdicts_from_rows`), as the Synthesize page shows."""
    items = "".join(
        f"<li><b>{html.escape(m)}</b>: <span class='{'ok' if v.passed else 'bad'}'>{html.escape(v.text)}</span></li>"
        for m, v in verdicts.items())
    return (f"<p><b>Verdict</b> (a modality passes when the synthesis beats the mean image on both MSE and SSIM for at "
            f"least {pass_fraction:.0%} of the held-out test subjects, else of the validation subjects):</p><ul>{items}</ul>")


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:14px;margin:8px 0} .note{color:#666;font-size:12px} .row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.grid{display:flex;flex-wrap:wrap;gap:6px;max-width:460px} table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right} th{background:#f3f5f7} td:first-child,th:first-child{text-align:left}
table.compact td,table.compact th{padding:2px 6px} pre{background:#f6f8fa;padding:10px;font-size:11px;overflow:auto;max-height:420px}
figure{margin:0;text-align:center;font-size:11px;color:#444} \
figure img{width:150px;image-rendering:pixelated;border:1px solid #ccc;background:#000}
.panel{border:1px solid #e3e3e3;border-radius:6px;padding:6px 10px;margin:10px 0} .legend{margin:4px 0 8px}
.chip{display:inline-block;margin-right:12px;font-size:12px} \
.chip i{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px;vertical-align:middle}
.ok{color:#2e7d32;font-weight:bold} .bad{color:#c62828;font-weight:bold} .summary td{text-align:left}
"""


def build_report(
    run_dir: str | os.PathLike,
    loaded: Any = None,
    *,
    model: Any = None,
    projection: Any = None,
    method: str = "pca",
    colour_by: str = "missingness",
    n_panels: int = 3,
    n_samples: int = 8,
    max_points: int = 2000,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> str:
    """The HTML report of ``run_dir`` (see the module docstring) as a string.

    ``loaded`` is the run's prepared data (default: loaded from its ``config.yaml``); ``projection`` a
    :class:`core.workflows.projection.Projection` to reuse (default: computed, or read from the run's cache).
    """
    from core.workflows.projection import project_run
    from core.workflows.runs import load_run_config, read_run_summary
    from core.workflows.synthesis import SynthesisContext, leave_one_out

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: {run_dir} is not a run folder.")
    if not (run_dir / "final_model" / "model_config.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'final_model'} does not exist: the run has no final model yet (train or resume it first).")
    steps, total = 0, 5

    def step(message: str) -> None:
        nonlocal steps
        raise_if_cancelled(cancel, "report")
        steps += 1
        report_progress(progress, steps, total, message)

    if loaded is None:
        from core.data.sources import load_data

        loaded = load_data(load_run_config(config_path).data, cancel=cancel)
    step("data ready")
    ctx = SynthesisContext.from_run(run_dir, loaded, model=model, device=device)
    summary = read_run_summary(run_dir)
    config_text = config_path.read_text(encoding="utf-8")
    config = yaml.safe_load(config_text) or {}
    if projection is None:
        projection = project_run(run_dir, loaded, model=ctx.model, method=method, max_points=max_points, cancel=cancel)
    step("projection")
    if colour_by not in projection.colours:
        colour_by = "missingness"
    metrics = _metrics_html(ctx, None, cancel)
    step("imputation metrics")
    panels = []
    for subject, modality in _choose_panels(ctx, n_panels):
        raise_if_cancelled(cancel, "report")
        panels.append(_panel_html(ctx, leave_one_out(ctx, subject, modality, n_samples=n_samples), modality))
    step("synthesis panels")
    curves = _curves_html(run_dir)
    name = str(config.get("name", run_dir.name))
    facts = [
        ("Run folder", str(run_dir.resolve())),
        ("Model", ctx.model.name),
        ("Status", f"{summary.status}, {summary.epochs_completed} of {summary.num_epochs} epochs" if summary else "unknown"),
        ("Best validation loss", _cell(summary.best_validation_loss) if summary else "—"),
        ("Data", f"{config.get('data', {}).get('source', '?')}: {len(ctx.dataset.ids)} subjects, modalities "
                 f"{', '.join(ctx.modalities)}"),
        ("Split", ", ".join(f"{k} {sum(1 for v in ctx.split.values() if v == k)}" for k in ("train", "validation", "test"))),
        ("Latent dimension", str(projection.settings.get("latent_dim", "?"))),
    ]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>Run report: {html.escape(name)}</h1>",
        f"<p class='note'>mmvae-workbench {html.escape(core.__version__)} · generated {generated} · reproduce with "
        f"<code>mmvae report {html.escape(str(run_dir))} --out report.html</code></p>",
        _table(["", ""], facts, "summary").replace("<thead><tr><th></th><th></th></tr></thead>", ""),
        "<h2>Training curves</h2>", curves,
        "<h2>Latent space</h2>", projection_html(projection, colour_by),
        "<h2>Imputation quality</h2>", metrics,
        "<h2>Leave-one-out synthesis</h2>",
        f"<p>A modality the subject has is hidden and synthesized from its other modalities (mean of {n_samples} posterior "
        "samples); middle axial slices, intensity window shared by real, synthesized and mean image. The difference map "
        "is blue where the synthesis is darker, red where brighter; the uncertainty map is the voxel-wise standard "
        "deviation over the samples.</p>",
        "".join(panels) or "<p class='note'>No subject has two modalities: nothing to leave out.</p>",
        "<h2>Configuration</h2>", f"<pre>{html.escape(config_text)}</pre>",
    ]
    step("done")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Run report: {html.escape(name)}</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Build the report of ``run_dir`` and write it (atomically) to ``out`` (``.html``).

    ``data`` evaluates the run on another cohort, prepared with the run's preprocessing settings.
    """
    from core.atomic import atomic_write_text

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"The report is HTML: --out must end in .html, got '{out.name}'.")
    if data is not None and kwargs.get("loaded") is None:
        from core.data.sources import load_data
        from core.workflows.runs import load_run_config

        config = load_run_config(Path(run_dir) / "config.yaml").data
        kwargs["loaded"] = load_data(config.for_another_cohort(data), cancel=kwargs.get("cancel"))
    text = build_report(run_dir, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mmvae report``."""
    parser.add_argument("run", help="run folder (its final_model, config.yaml, metrics.csv and split.json are used)")
    parser.add_argument("data", nargs="?", default=None, help="cohort folder, manifest CSV or HDF5 cache (default: the run's data)")
    parser.add_argument("--data", dest="data_option", default=None, help="same as the DATA argument")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--method", default="pca", choices=["pca", "tsne", "umap"], help="latent projection (default pca)")
    parser.add_argument("--colour-by", default="missingness", help="projection colouring: missingness, split or a participants column")
    parser.add_argument("--panels", type=int, default=3, help="leave-one-out synthesis panels (default 3)")
    parser.add_argument("--samples", type=int, default=8, help="posterior samples per synthesis (default 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``mmvae report``; returns the exit code (0)."""
    data = args.data_option or args.data
    with ProgressReporter(description="report", bar=not args.quiet) as progress:
        path = write_report(args.run, args.out, data, method=args.method, colour_by=args.colour_by, n_panels=args.panels,
                            n_samples=args.samples, device=args.device, progress=progress)
    print(f"report written to {path}")
    return 0
