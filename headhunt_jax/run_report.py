"""What a run reports, assembled from its results: ``detect``'s and ``evaluate``'s JSON records,
and the facts, figures, ground truth and headline metrics of its HTML page (rendered by
``report.write_report``). The CLI's commands, ``reproduce`` and the demo build their reports
here."""

import io
from collections.abc import Callable, Mapping, Sequence

from headhunt_jax import plots
from headhunt_jax.annotations import Events, Labels, video_key
from headhunt_jax.evaluation import frame_curves
from headhunt_jax.report import write_report

# The captions of the figures that several pages show.
ROC_PR = "Frame-level ROC and precision-recall curves"
SCORES = "Video scores"


def metric(value) -> str:
    """A metric in a line of text: four decimals, or n/a where it is undefined."""
    return "n/a" if value is None else f"{value:.4f}"


def png(draw: Callable) -> bytes:
    """The PNG bytes of a figure that ``draw(file)`` writes."""
    buffer = io.BytesIO()
    draw(buffer)
    return buffer.getvalue()


def detector_facts(detector, backbone: str, **more) -> dict:
    """A detector as a page states it: ``backbone`` (as given), then ``more`` (as given), what
    it reads (its expert heads, or the layer of a hidden-state probe), sigma and tau."""
    return {"backbone": backbone, **more, **probe_facts(detector)} | {
        "sigma, tau": f"{detector.sigma:g}, {detector.tau:g}"
    }


def probe_facts(detector) -> dict:
    """What a detector reads, as a page states it."""
    if detector.layer is None:
        return {"expert heads (layer, head)": detector.expert_heads.tolist()}
    return {"probe": "hidden state (HiProbe-VAD)", "layer": detector.layer}


def run_facts(detector_dir, model, detector) -> dict:
    """A ``detect`` or ``evaluate`` run as its page states it: the detector's directory, its
    backbone (``model``: where it was loaded from) and prompt, expert heads, sigma and tau."""
    return {"detector": detector_dir} | detector_facts(
        detector, f"{detector.backbone} ({model})", prompt=detector.prompt
    )


def metrics_table(metrics: Mapping) -> dict[str, object]:
    """The headline figures of ``evaluation.evaluate``'s metrics, named for people."""
    rows = {
        "frame-level ROC AUC": metrics["roc_auc"],
        "frame-level AP": metrics["average_precision"],
        "ROC AUC, anomalous videos only": metrics.get("anomalous_roc_auc"),
        "AP, anomalous videos only": metrics.get("anomalous_average_precision"),
        "max F1 (its threshold)": f"{metrics['max_f1']:.4f} ({metrics['max_f1_threshold']:.3f})",
        "videos, frames, anomalous frames": (
            f"{metrics['num_videos']}, {metrics['num_frames']}, {metrics['num_anomaly_frames']}"
        ),
    }
    video = metrics.get("video_level", {}).get("max")
    if video:
        rows["video-level ROC AUC (max score)"] = video["roc_auc"]
        rows["video-level F1 (max score)"] = video["f1"]
    return rows


def probe_table(columns: Mapping[str, Mapping]) -> dict[str, dict[str, object]]:
    """{row name: {probe: value}}: ``reproduce``'s probes side by side (its report's
    ``probes``), a column a probe."""
    rows: dict[str, dict[str, object]] = {}

    def row(name, value):
        for probe, column in columns.items():
            rows.setdefault(name, {})[probe] = value(column)

    row("frame-level ROC AUC", lambda c: c["frame_auc"])
    row("frame-level AP", lambda c: c["frame_ap"])
    row("video-level ROC AUC (max score)", lambda c: c["video_auc"])
    row("video-level F1 (max score)", lambda c: c["video_f1"])
    row("reads", lambda c: _reads(c))
    row("sigma, tau", lambda c: f"{c['sigma']:g}, {c['tau']:g}")
    row("scorer input (floats a segment)", lambda c: c["feature_dim"])
    row("calibration features stored (bytes)", lambda c: c["calibration_store_bytes"])
    row(
        "own stages (s)",
        lambda c: ", ".join(f"{k} {v}" for k, v in c["stage_seconds"].items()) or "n/a",
    )
    return rows


def _reads(column: Mapping) -> str:
    if column["probe"] == "heads":
        return "heads " + " ".join(f"({a},{b})" for a, b in column["expert_heads"])
    return f"hidden state of layer {column['layer']}"


def detection_record(results: Sequence[dict], failures: Sequence) -> dict:
    """``detect``'s JSON: a summary (videos, anomalous ones, events, failed), each video's result
    (``detection.video_result``) and the failures (``extract.Failure`` s)."""
    summary = {
        "videos": len(results),
        "anomalous": sum(r["is_anomaly"] for r in results),
        "events": sum(len(r["events"]) for r in results),
        "failed": len(failures),
    }
    return {"summary": summary, "videos": results, "failures": [f.__dict__ for f in failures]}


def evaluation_record(dataset: str, split: str, metrics: Mapping, failures: Sequence) -> dict:
    """``evaluate``'s JSON: ``evaluation.evaluate``'s metrics (with labels, less ``per_video``)
    of a dataset's split, its headline figures first, and the videos that could not be read."""
    return {
        "dataset": dataset,
        "split": split,
        "auc": metrics["roc_auc"],
        "ap": metrics["average_precision"],
        **{k: metrics[k] for k in ("num_videos", "num_frames", "num_anomaly_frames")},
        "frame_level": {k: v for k, v in metrics.items() if k != "video_level"},
        "video_level": metrics["video_level"],
        "failed_videos": [f.__dict__ for f in failures],
    }


def truth_by_video(results: Sequence[dict], events: Events) -> dict:
    """{video id: its annotated events} of each result, as the page takes them."""
    return {r["video"]: events.get(video_key(r["video"]), []) for r in results}


def labels_by_video(results: Sequence[dict], labels: Labels) -> dict[str, int]:
    """{video id: 0/1} of each result, from labels by video key."""
    return {r["video"]: labels[video_key(r["video"])] for r in results}


def evaluation_figures(
    results: Sequence[dict], events: Events, labels: Labels, metrics: Mapping, sigma: float
) -> dict[str, bytes]:
    """{caption: PNG}: the frame-level ROC and precision-recall curves (of the frames that
    ``evaluation.evaluate`` scored, smoothed with ``sigma``) and the videos' scores."""
    curves = frame_curves(results, events, sigma=sigma)
    auc, ap = metrics["roc_auc"], metrics["average_precision"]
    by_id = labels_by_video(results, labels)
    return {
        ROC_PR: png(lambda f: plots.roc_pr(curves, f, auc, ap)),
        SCORES: png(lambda f: plots.score_summary(results, f, by_id)),
    }


def write_detection_page(path, results: Sequence[dict], facts, thumbnails, failures) -> None:
    """``detect``'s page: the videos' results and their scores' figure."""
    write_report(
        path,
        results,
        title=f"headhunt-jax detect: {len(results)} videos",
        facts=facts,
        thumbnails=thumbnails,
        plots={SCORES: png(lambda f: plots.score_summary(results, f))},
        failures=failures,
    )


def write_evaluation_page(
    path,
    results: Sequence[dict],
    *,
    title: str,
    facts: Mapping,
    events: Events,
    labels: Mapping[str, int],
    metrics: Mapping,
    thumbnails,
    figures: Mapping,
    failures: Sequence = (),
    comparison: Mapping | None = None,
) -> None:
    """A page of detections with their ground truth (``events`` by video key, ``labels`` by
    video id) and the headline figures of ``metrics`` (``metrics_table``); ``figures``:
    {caption: PNG bytes or file}; ``comparison``: {row: {column: value}}, a table of columns
    (``probe_table``)."""
    write_report(
        path,
        results,
        title=title,
        facts=facts,
        metrics=metrics_table(metrics),
        truth=truth_by_video(results, events),
        labels=labels,
        thumbnails=thumbnails,
        plots=figures,
        failures=failures,
        comparison=comparison,
    )
