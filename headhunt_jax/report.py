"""One self-contained HTML page of detection results, for people to look at.

``write_report`` puts everything in the file: the style sheet, the pictures (PNG figures and the
segments' JPEG thumbnails as base64 ``data:`` URIs), each video's timeline as inline SVG and a
small script that sorts the summary table; it opens from disk with no network. The page holds:

- the run's facts and metrics (where given) and the figures (``plots``);
- a summary table, one row a video: score, events, ``is_anomaly`` and the label where known,
  sortable by clicking a column's head (or opened as ``report.html#sort=score-desc``);
- a section a video: its timeline (segment and smoothed scores, the threshold, events, ground
  truth where known), its events (frames, seconds, duration, peak score, the thumbnail of the
  peak segment and, where an event carries one, its ``explanation`` and ``explanation_note``),
  with ``detect --attribution`` the heatmap of the video's peak segment as red cells over its
  thumbnail (``attribution.peak_attribution``), and a strip of thumbnails across the video;
- the videos that could not be read.

Thumbnails are the JPEGs the extraction made of each segment's middle sampled frame
(``extract_features(thumbnail_height=...)``), so nothing is decoded again.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from headhunt_jax import paths

# Thumbnails shown across a video besides the events' peaks.
STRIP = 8
# The height of the thumbnails that extraction keeps for a report, in pixels (about 3 KB a JPEG).
THUMBNAIL_HEIGHT = 72

_LABELS = {0: "normal", 1: "anomalous"}

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.yes { color: #b00; font-weight: 600; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dl.facts dt { font-weight: 600; }
figure { display: inline-block; margin: 6px; vertical-align: top; }
figure img.plot { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 12px; color: #555; }
article.video { border-top: 2px solid #ddd; padding-top: 6px; margin-top: 18px; }
svg.timeline { width: 100%; max-width: 820px; height: auto; background: #fff; }
svg .truth { fill: #d62728; fill-opacity: 0.15; }
svg .event { fill: #222; }
svg .raw { fill: none; stroke: #1f77b4; stroke-width: 1; }
svg .smoothed { fill: none; stroke: #ff7f0e; stroke-width: 2; }
svg .threshold { stroke: #777; stroke-dasharray: 4 3; }
svg .axis { stroke: #999; } svg text { font-size: 10px; fill: #555; }
.legend span { margin-right: 12px; font-size: 12px; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; }
.strip figure, td figure { margin: 0; width: min-content; }
img.thumb { height: 72px; border: 1px solid #ccc; }
.note { font-size: 12px; color: #666; font-style: italic; }
.attribution { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
.overlay { position: relative; display: inline-block; line-height: 0; }
.attribution figure { width: min-content; }
.attribution figcaption { min-width: 160px; }
.attribution img.base { height: 144px; border: 1px solid #ccc; display: block; }
svg.frames { width: 160px; height: 40px; border-bottom: 1px solid #999; }
svg.frames .frame { fill: #999; } svg.frames .shown { fill: #e8000b; }
.overlay svg.heat { position: absolute; left: 1px; top: 1px; width: calc(100% - 2px);
  height: calc(100% - 2px); }
svg.heat rect { fill: #e8000b; }
.overlay.bare svg.heat { position: static; width: 144px; height: 144px; background: #888; }
"""

_SCRIPT = """
(function () {
  function cellValue(row, index, type) {
    var cell = row.cells[index];
    var raw = cell.getAttribute('data-value');
    if (raw === null) raw = cell.textContent;
    return type === 'number' ? (raw === '' ? -Infinity : parseFloat(raw)) : raw.toLowerCase();
  }
  function sortBy(table, index, descending) {
    var head = table.tHead.rows[0].cells[index];
    var type = head.getAttribute('data-type');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, type), y = cellValue(b, index, type);
      var order = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
      cell.removeAttribute('aria-sort');
    });
    head.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (head, index) {
      head.addEventListener('click', function () {
        sortBy(table, index, head.getAttribute('aria-sort') === 'ascending');
      });
    });
  });
  var wanted = /^#sort=([a-z_]+?)(-desc)?$/.exec(location.hash);
  var table = document.getElementById('videos');
  if (wanted && table) {
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].getAttribute('data-key') === wanted[1]) sortBy(table, i, !!wanted[2]);
    }
  }
  window.addEventListener('load', function () {
    var decoded = Array.prototype.filter.call(document.images, function (img) {
      return img.complete && img.naturalWidth > 0;
    });
    document.body.setAttribute('data-images-decoded', String(decoded.length));
  });
})();
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(picture) -> bytes:
    """A figure given as PNG bytes or a PNG file's path."""
    return picture if isinstance(picture, bytes) else paths.of(picture).read_bytes()


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _facts(facts: Mapping[str, object]) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>" for k, v in facts.items())
    return f'<dl class="facts">{rows}</dl>'


def _metrics(metrics: Mapping[str, object]) -> str:
    rows = "".join(
        f'<tr><th>{_e(k)}</th><td class="num">{_e(_fmt(v))}</td></tr>' for k, v in metrics.items()
    )
    return f'<section id="metrics"><h2>Metrics</h2><table>{rows}</table></section>'


def _comparison(rows: Mapping[str, Mapping[str, object]]) -> str:
    """A table of columns (e.g. one a probe), a row a figure."""
    columns = list(dict.fromkeys(c for values in rows.values() for c in values))
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in columns)
    body = "".join(
        f"<tr><th>{_e(name)}</th>"
        + "".join(f'<td class="num">{_e(_fmt(values.get(c)))}</td>' for c in columns)
        + "</tr>"
        for name, values in rows.items()
    )
    return (
        '<section id="probes"><h2>Probes side by side</h2><table>'
        f"<thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table></section>"
    )


def _summary(results, labels) -> str:
    heads = [
        ("video", "text", "video"),
        ("score", "number", "score"),
        ("events", "number", "events"),
        ("is_anomaly", "text", "anomaly"),
        ("label", "text", "label"),
    ]
    head = "".join(f'<th data-key="{k}" data-type="{t}">{_e(n)}</th>' for k, t, n in heads)
    rows = []
    for i, r in enumerate(results):
        label = labels.get(r["video"])
        anomaly = '<span class="yes">yes</span>' if r["is_anomaly"] else "no"
        rows.append(
            f'<tr data-video="{_e(r["video"])}">'
            f'<td><a href="#video-{i}">{_e(r["video"])}</a></td>'
            f'<td class="num" data-value="{r["video_score"]}">{r["video_score"]:.3f}</td>'
            f'<td class="num" data-value="{len(r["events"])}">{len(r["events"])}</td>'
            f"<td>{anomaly}</td><td>{_e(_LABELS.get(label, ''))}</td></tr>"
        )
    return (
        f'<table id="videos" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _timeline(result: dict, truth: Sequence[tuple[int, int]]) -> str:
    """The scores over time as SVG: x in seconds, y the score in [0, 1]."""
    width, height, left, right, top, bottom = 820, 170, 36, 10, 14, 24
    fps = result["fps"]
    spans = np.asarray(result["segment_frames"], float) / fps
    duration = max(float(spans[-1, 1]), result["frames"] / fps, 1e-6)
    x = lambda s: left + (width - left - right) * s / duration
    y = lambda v: top + (height - top - bottom) * (1 - v)
    mids = spans.mean(axis=1)
    parts = [
        f'<svg class="timeline" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="scores of {_e(result["video"])} over time">'
    ]
    for start, end in truth:
        a, b = x(start / fps), x(min(end / fps, duration))
        parts.append(
            f'<rect class="truth" x="{a:.1f}" y="{top}" width="{max(b - a, 1):.1f}" '
            f'height="{height - top - bottom}"><title>ground truth: frames {start}-{end}</title>'
            "</rect>"
        )
    for e in result["events"]:
        a, b = x(e["start_s"]), x(e["end_s"])
        parts.append(
            f'<rect class="event" x="{a:.1f}" y="2" width="{max(b - a, 1):.1f}" height="8">'
            f"<title>event {e['start_s']}-{e['end_s']} s, peak {e['peak_score']:.3f}</title></rect>"
        )
    axis_y = height - bottom
    parts.append(
        f'<line class="axis" x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}"/>'
    )
    parts.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}"/>')
    for v in (0, 0.5, 1):
        parts.append(f'<text x="{left - 4}" y="{y(v) + 3:.1f}" text-anchor="end">{v:g}</text>')
    step = _tick_step(duration)
    for s in np.arange(0, duration + 1e-9, step):
        parts.append(f'<text x="{x(s):.1f}" y="{height - 8}" text-anchor="middle">{s:g} s</text>')
    tau = y(result["tau"])
    parts.append(
        f'<line class="threshold" x1="{left}" y1="{tau:.1f}" x2="{width - right}" y2="{tau:.1f}">'
        f"<title>threshold tau {result['tau']:g}</title></line>"
    )
    for name, values in (
        ("raw", result["segment_scores"]),
        ("smoothed", result["smoothed_scores"]),
    ):
        points = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in zip(mids, values, strict=True))
        parts.append(f'<polyline class="{name}" points="{points}"/>')
    parts.append("</svg>")
    legend = (
        '<div class="legend"><span style="color:#1f77b4">&#9472; segment score</span>'
        '<span style="color:#ff7f0e">&#9473; smoothed</span><span>- - threshold</span>'
        "<span>&#9644; detected event</span>"
        + ('<span style="color:#d62728">&#9635; ground truth</span>' if truth else "")
        + "</div>"
    )
    return "".join(parts) + legend


def _tick_step(duration: float) -> float:
    """A round step giving at most about 10 ticks over ``duration`` seconds."""
    for step in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if duration / step <= 10:
            return step
    return 7200


def _thumb(jpeg: bytes | None, caption: str) -> str:
    if jpeg is None:
        return ""
    return (
        f'<figure><img class="thumb" alt="{_e(caption)}" '
        f'src="{_data_uri(jpeg, "image/jpeg")}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _segment_caption(result: dict, segment: int) -> str:
    start, end = result["segment_frames"][segment]
    fps = result["fps"]
    return f"{start / fps:.1f}-{end / fps:.1f} s (segment {segment})"


def _events(result: dict, thumbs) -> str:
    if not result["events"]:
        return "<p>No event above the threshold.</p>"
    rows = []
    for n, e in enumerate(result["events"], start=1):
        peak = e["peak_segment"]
        picture = _thumb(
            thumbs[peak] if thumbs else None, f"peak, {_segment_caption(result, peak)}"
        )
        answers = e.get("explanation") or []
        answers = [answers] if isinstance(answers, str) else answers  # one a question
        explanation = "".join(f'<div class="explanation">{_e(a)}</div>' for a in answers)
        if e.get("explanation_note"):
            explanation += f'<div class="note">{_e(e["explanation_note"])}</div>'
        rows.append(
            f'<tr class="event"><td class="num">{n}</td>'
            f'<td class="num">{e["start_frame"]}-{e["end_frame"]}</td>'
            f'<td class="num">{e["start_s"]:.2f}-{e["end_s"]:.2f}</td>'
            f'<td class="num">{e["duration_s"]:.2f}</td>'
            f'<td class="num">{e["peak_score"]:.3f}</td><td>{picture}</td>'
            f"<td>{explanation}</td></tr>"
        )
    head = (
        "<tr><th>#</th><th>frames</th><th>seconds</th><th>duration (s)</th><th>peak score</th>"
        "<th>peak frame</th><th>explanation</th></tr>"
    )
    return f'<table class="events"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _strip(result: dict, thumbs) -> str:
    if not thumbs:
        return '<p class="note">No thumbnails (the features were extracted without them).</p>'
    picked = np.unique(np.linspace(0, len(thumbs) - 1, min(len(thumbs), STRIP)).round().astype(int))
    figures = "".join(_thumb(thumbs[s], _segment_caption(result, int(s))) for s in picked)
    return f'<div class="strip">{figures}</div>'


# Red cells over the peak segment's thumbnail: the opacity of the frame's largest cell.
HEAT_OPACITY = 0.7

_HEAT_LEGEND = (
    "Red marks where in this frame the detector's score comes from: a cell's opacity is the "
    "mean size of the gradient of the detector's logit with respect to its pixels "
    "(|d logit / d pixel|, summed over the colours), in proportion to the frame's largest "
    "cell; clear cells barely move the score. The bars: each of the segment's sampled frames' "
    "mean gradient, in proportion to the largest, the frame shown in red."
)


def _heat(heatmap: Sequence[Sequence[float]]) -> str:
    """One frame's heatmap [h, w] as an SVG of cells stretched over its frame, each cell's
    opacity in proportion to the frame's largest (``data-value``: the cell's value as given)."""
    rows, cols = len(heatmap), len(heatmap[0])
    largest = max(max(row) for row in heatmap) or 1.0
    cells = "".join(
        f'<rect x="{x}" y="{y}" width="1" height="1" '
        f'fill-opacity="{HEAT_OPACITY * v / largest:.3f}" data-value="{v}"/>'
        for y, row in enumerate(heatmap)
        for x, v in enumerate(row)
        if v > 0
    )
    return (
        f'<svg class="heat" viewBox="0 0 {cols} {rows}" preserveAspectRatio="none" '
        'shape-rendering="crispEdges" '
        f'aria-hidden="true" data-size="{rows}x{cols}">{cells}</svg>'
    )


def _frame_bars(found: dict) -> str:
    """Each sampled frame's mean heat as a bar (the largest full height), the shown one red."""
    means = np.asarray(found["heatmaps"], float).mean(axis=(1, 2))
    heights = means / (means.max() or 1.0)
    bars = "".join(
        f'<rect class="{"shown" if i == found["thumbnail_frame"] else "frame"}" x="{i * 10 + 1}" '
        f'y="{40 * (1 - h):.1f}" width="8" height="{max(40 * h, 0.5):.1f}">'
        f"<title>frame {frame}: {m:.3f}</title></rect>"
        for i, (frame, m, h) in enumerate(zip(found["frames"], means, heights, strict=True))
    )
    return (
        f'<svg class="frames" viewBox="0 0 {10 * len(means)} 40" role="img" '
        f'aria-label="mean gradient of each sampled frame">{bars}</svg>'
    )


def _attribution(result: dict, thumbs) -> str:
    """The peak segment's thumbnail under its frame's heatmap (``detect --attribution``), the
    thumbnail alone beside it, the frames' bars and the legend."""
    found = result.get("attribution")
    if not found:
        error = result.get("attribution_error")
        return f'<p class="note">No attribution: {_e(error)}</p>' if error else ""
    segment, frame = found["segment"], found["thumbnail_frame"]
    heat = _heat(found["heatmaps"][frame])
    caption = (
        f"segment {segment}'s frame {found['frames'][frame]}, the highest smoothed score "
        f"({_segment_caption(result, segment)})"
    )
    jpeg = thumbs[segment] if thumbs else None
    if jpeg is None:
        picture, plain = f'<div class="overlay bare">{heat}</div>', ""
    else:
        src = _data_uri(jpeg, "image/jpeg")
        picture = (
            f'<div class="overlay"><img class="base" alt="{_e(caption)}" src="{src}">{heat}</div>'
        )
        plain = f'<figure><img class="base" alt="{_e(caption)}" src="{src}"></figure>'
    return (
        f'<h4>Where in the frame</h4><div class="attribution" data-segment="{segment}">'
        f"<figure>{picture}<figcaption>{_e(caption)}</figcaption></figure>{plain}"
        f"<figure>{_frame_bars(found)}<figcaption>the segment's {len(found['frames'])} "
        f'frames</figcaption></figure></div><p class="legend note">{_e(_HEAT_LEGEND)}</p>'
    )


def _video(i: int, result: dict, truth, label, thumbs) -> str:
    facts = {
        "video score": f"{result['video_score']:.3f}",
        "anomaly": "yes" if result["is_anomaly"] else "no",
        "events": len(result["events"]),
        "label": _LABELS.get(label, "unknown"),
        "frames": f"{result['frames']} at {result['fps']:g} fps"
        + (" (shorter than one segment)" if result.get("short") else ""),
        "file": result.get("path", ""),
    }
    return (
        f'<article class="video" id="video-{i}" data-video="{_e(result["video"])}">'
        f"<h3>{_e(result['video'])}</h3>{_facts(facts)}{_timeline(result, truth)}"
        f"<h4>Events</h4>{_events(result, thumbs)}{_attribution(result, thumbs)}"
        "<h4>Across the video</h4>"
        f"{_strip(result, thumbs)}</article>"
    )


def write_report(
    path,
    results: Sequence[dict],
    *,
    title: str = "headhunt-jax detections",
    facts: Mapping[str, object] | None = None,
    metrics: Mapping[str, object] | None = None,
    truth: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    labels: Mapping[str, int] | None = None,
    thumbnails: Mapping[str, Sequence[bytes]] | None = None,
    plots: Mapping[str, bytes | str | Path] | None = None,
    failures: Sequence = (),
    comparison: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """Writes the page (see the module docstring) to ``path`` and returns it.

    ``results``: ``detection.video_result`` dicts; ``truth``: {video id: [(start, end) frames]}
    of the annotated events, ``labels``: {video id: 0/1}, where known; ``thumbnails``: {video id:
    a JPEG a segment}; ``plots``: {caption: PNG bytes or file}; ``facts`` (the run: detector,
    backbone, sigma, tau) and ``metrics`` (name: value): shown as given; ``failures``:
    ``extract.Failure`` s (or dicts with ``path`` and ``problem``); ``comparison``: {row:
    {column: value}}, shown as a table of columns after the metrics (``reproduce``'s probes).
    """
    truth, labels, thumbnails = truth or {}, labels or {}, thumbnails or {}
    anomalous = sum(r["is_anomaly"] for r in results)
    events = sum(len(r["events"]) for r in results)
    body = [f"<h1>{_e(title)}</h1>"]
    if facts:
        body.append(f'<section id="run">{_facts(facts)}</section>')
    body.append(
        f'<p id="counts">{len(results)} videos scored, {anomalous} with events ({events} '
        f"events), {len(failures)} failed.</p>"
    )
    if metrics:
        body.append(_metrics(metrics))
    if comparison:
        body.append(_comparison(comparison))
    body.append(f'<section id="summary"><h2>Videos</h2>{_summary(results, labels)}</section>')
    if plots:
        figures = "".join(
            f'<figure><img class="plot" alt="{_e(caption)}" '
            f'src="{_data_uri(_png(picture), "image/png")}"><figcaption>{_e(caption)}'
            "</figcaption></figure>"
            for caption, picture in plots.items()
        )
        body.append(f'<section id="plots"><h2>Figures</h2>{figures}</section>')
    body.append('<section id="details"><h2>Each video</h2>')
    body += [
        _video(i, r, truth.get(r["video"], ()), labels.get(r["video"]), thumbnails.get(r["video"]))
        for i, r in enumerate(results)
    ]
    body.append("</section>")
    if failures:
        items = "".join(
            f"<li>{_e(f['path'])}: {_e(f['problem'])}</li>"
            for f in (f if isinstance(f, Mapping) else vars(f) for f in failures)
        )
        body.append(f'<section id="failures"><h2>Not read</h2><ul>{items}</ul></section>')
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(body)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )
    path = paths.of(path)
    paths.mkdir(path.parent)
    return paths.write_text(path, page)
