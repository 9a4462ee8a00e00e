"""The paper's protocol on UCF-Crime or XD-Violence in one call (``headhunt-jax reproduce``).

Stages, each keeping its output in the run directory; the same call again reuses what is there and
computes only what is missing (an interrupted extraction resumes video by video):

1. splits       the calibration videos (a seeded ``calibration_fraction`` of each class of the
                training split, as the paper fits on about 1%), the validation videos (another such
                draw from the remaining training videos) and the test split -> ``splits.json``
2. calibration  every head's features of the calibration videos under every prompt, one decoding
                pass and one frame prefix for all prompts, one clip a video by default (the
                original's unit) -> ``features/calibration/p1 .. pM``
3. hunt         expert heads (K, lambda) -> ``heads.json``, ``rss_heatmap.png`` and the other
                figures of ``plots.hunt_figures``
4. validation   the experts' features of the validation videos' 48-frame segments under the first
                prompt -> ``features/validation``
5. fit          the scorer on the calibration videos; sigma and tau by grid search for F1 on the
                validation videos' segment scores -> ``detector/``
6. test         the experts' features of the test videos' segments -> ``features/test``,
                ``detections.json``
7. evaluate     frame-level and video-level metrics -> ``report.json``, ``per_video.json``,
                ``roc_pr.png``, ``scores.png``, and with ``html`` the page of ``report``

Training videos carry video-level labels only (UCF-Crime's class folders, XD-Violence's names), so
the validation segments take their video's label: sigma and tau are chosen without looking at the
test annotations. The settings are kept in ``protocol.json``; a directory made with other settings
is refused rather than mixed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from headhunt_jax import __version__, detection, experts, files, fitting, plots, run_report
from headhunt_jax.datasets import VideoItem, calibration_subset, load_dataset
from headhunt_jax.detector import Detector
from headhunt_jax.errors import InputError
from headhunt_jax.evaluation import evaluate, frame_curves
from headhunt_jax.extract import Failure, extract_features, video_ids
from headhunt_jax.report import THUMBNAIL_HEIGHT
from headhunt_jax.store import SPEC_FILE, FeatureStore


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The settings of a run; ``protocol.json`` in the run directory holds them."""

    dataset: str
    root: str
    model: str
    prompts: tuple[str, ...]
    calibration_fraction: float = 0.01
    seed: int = 0
    k: int = 5
    lam: float = 0.5
    clip: str = "video"
    max_clips: int = 4000
    scorer: str = "logistic"
    dtype: str = "float32"
    # the backbone processor's options (e.g. Qwen2.5-VL's mode); recorded only when given
    processor_options: dict = dataclasses.field(default_factory=dict)


def _check_protocol(out: Path, protocol: Protocol) -> None:
    path = out / "protocol.json"
    wanted = dataclasses.asdict(protocol)
    wanted["prompts"] = list(protocol.prompts)
    if not protocol.processor_options:  # as run directories made before the field have it
        del wanted["processor_options"]
    if path.exists():
        have = files.read_json(path, "a run's protocol")
        diffs = [
            f"{k}: {have.get(k)!r} there, {v!r} now" for k, v in wanted.items() if have.get(k) != v
        ]
        if diffs:
            raise InputError(
                f"{out}: made with other settings ({'; '.join(diffs)}); use another --out"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=1))


def protocol_splits(protocol: Protocol) -> tuple[dict[str, tuple[VideoItem, ...]], list[str]]:
    """{"calibration", "validation", "test"}: their videos, and the listings' warnings."""
    train = load_dataset(protocol.dataset, protocol.root, "train")
    test = load_dataset(protocol.dataset, protocol.root, "test")
    fraction, seed = protocol.calibration_fraction, protocol.seed
    calibration = calibration_subset(train, fraction, seed)
    chosen = {item.video_id for item in calibration}
    rest = [item for item in train if item.video_id not in chosen]
    if not rest:
        raise InputError(
            f"--calibration-fraction {fraction} leaves no training video for validation"
        )
    validation = calibration_subset(rest, fraction, seed + 1)
    return (
        {"calibration": calibration, "validation": validation, "test": test.items},
        list(train.warnings) + list(test.warnings),
    )


class _Stages:
    """Times each stage that runs and remembers them in ``stages.json``; a reused stage keeps the
    time it took when it ran."""

    def __init__(self, out: Path, say: Callable[[str], None]):
        self.path = out / "stages.json"
        self.times = files.read_json(self.path, "a run's stage times") if self.path.exists() else {}
        self.reused: list[str] = []
        self.say = say

    def run(self, name: str, done: bool, work: Callable[[], object]):
        if done:
            self.reused.append(name)
            self.say(f"{name}: already done")
            return None
        self.say(f"{name} ...")
        start = time.perf_counter()
        result = work()
        self.times[name] = round(time.perf_counter() - start, 2)
        self.path.write_text(json.dumps(self.times, indent=1))
        return result

    def summary(self) -> dict:
        return {n: {"seconds": s, "reused": n in self.reused} for n, s in self.times.items()}


def _stored(outs: Sequence[Path], ids: Sequence[str]) -> bool:
    """Whether every store in ``outs`` holds every video of ``ids``."""
    for out in outs:
        if not (out / SPEC_FILE).exists():
            return False
        store = FeatureStore(out)
        if not all(i in store for i in ids):
            return False
    return True


@dataclasses.dataclass
class _Run:
    """What the stages of a run share: its settings and folder, its videos by split (``paths``,
    ``ids``), their ground truth (``labels`` by video key, the test videos' ``events``), the
    backbone (loaded on first use) and the videos that could not be read."""

    protocol: Protocol
    out: Path
    splits: dict[str, tuple[VideoItem, ...]]
    load_backbone: Callable[[], object]
    batch_size: int
    progress: bool
    failures: list[Failure] = dataclasses.field(default_factory=list)
    _backbone: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.protocol.root)
        self.paths = {name: [item.path for item in items] for name, items in self.splits.items()}
        self.ids = {name: video_ids(p, self.root) for name, p in self.paths.items()}
        self.labels = {item.key: item.label for items in self.splits.values() for item in items}
        self.events = {item.key: item.events for item in self.splits["test"]}

    def backbone(self):
        if not self._backbone:
            self._backbone.append(self.load_backbone())
        return self._backbone[0]

    def features(self, name: str, prompts, outs, **kw) -> None:
        """Extracts the videos of split ``name`` into ``outs`` (one store a prompt)."""
        report = extract_features(
            self.backbone(),
            self.paths[name],
            prompts,
            outs,
            root=self.root,
            batch_size=self.batch_size,
            progress=self.progress,
            labels={i.video_id: i.label for i in self.splits[name]},
            processor_options=self.protocol.processor_options,
            **kw,
        )
        self.failures.extend(report.failures)


def reproduce(
    protocol: Protocol,
    out_dir: str | Path,
    load_backbone: Callable[[], object],
    *,
    batch_size: int = 8,
    progress: bool = True,
    say: Callable[[str], None] = print,
    html=None,
) -> dict:
    """Runs (or continues) the protocol in ``out_dir``; returns the report (also written to
    ``report.json``). ``load_backbone`` is called at most once, and only when a stage has
    features to compute. ``html``: also write the page of ``report.write_report`` there (the
    test videos' thumbnails are kept when their features are extracted in this run)."""
    out = Path(out_dir)
    _check_protocol(out, protocol)
    stages = _Stages(out, say)
    splits, warnings = protocol_splits(protocol)
    for warning in warnings:
        say(f"warning: {warning}")
    run = _Run(protocol, out, splits, load_backbone, batch_size, progress)
    _record_splits(out / "splits.json", run.ids)
    stores = _calibration(run, stages)
    heads = _hunt(run, stages, stores)
    validation = _validation(run, stages, heads)
    detector = _fit(run, stages, stores[0], heads, validation)
    store = _test(run, stages, detector, thumbnails=bool(html))
    return _evaluate(run, stages, heads, detector, store, html)


def _calibration(run: _Run, stages: _Stages) -> list[FeatureStore]:
    """Stage 2: every head's features of the calibration videos, a store a prompt."""
    prompts = run.protocol.prompts
    outs = [run.out / "features" / "calibration" / f"p{m + 1}" for m in range(len(prompts))]
    stages.run(
        "calibration",
        _stored(outs, run.ids["calibration"]),
        lambda: run.features("calibration", prompts, outs, clip=run.protocol.clip),
    )
    return [FeatureStore(s) for s in outs]


def _hunt(run: _Run, stages: _Stages, stores: list[FeatureStore]):
    """Stage 3: the expert heads and the hunt's figures; -> the heads [K, 2]."""
    protocol, heads_file = run.protocol, run.out / "heads.json"

    def hunt():
        result = experts.hunt(
            stores, protocol.k, protocol.lam, max_clips=protocol.max_clips, labels=run.labels
        )
        experts.write_heads(heads_file, result, k=protocol.k, lam=protocol.lam)
        plots.hunt_figures(result, run.out / "rss_heatmap.png")

    stages.run("hunt", heads_file.exists(), hunt)
    return experts.load_heads(heads_file)


def _validation(run: _Run, stages: _Stages, heads) -> Path:
    """Stage 4: the experts' features of the validation videos' segments (first prompt)."""
    validation = run.out / "features" / "validation"
    stages.run(
        "validation",
        _stored([validation], run.ids["validation"]),
        lambda: run.features("validation", run.protocol.prompts[0], validation, heads=heads),
    )
    return validation


def _fit(run: _Run, stages: _Stages, store: FeatureStore, heads, validation: Path) -> Detector:
    """Stage 5: the scorer on the calibration videos, sigma and tau on the validation ones."""
    detector_dir = run.out / "detector"

    def fit():
        detector = fitting.fit(
            store,
            heads,
            kind=run.protocol.scorer,
            validation=FeatureStore(validation),
            labels=run.labels,
        )
        detector.save(detector_dir, overwrite=True)

    stages.run("fit", (detector_dir / "commit_success.txt").exists(), fit)
    return Detector.load(detector_dir)


def _test(run: _Run, stages: _Stages, detector: Detector, thumbnails: bool) -> FeatureStore:
    """Stage 6: the experts' features of the test videos' segments (with thumbnails for the
    page)."""
    test = run.out / "features" / "test"

    def test_features():
        detection.check_compatible(run.backbone(), detector)
        run.features(
            "test",
            detector.prompt,
            test,
            heads=detector.expert_heads,
            thumbnail_height=THUMBNAIL_HEIGHT if thumbnails else None,
        )

    stages.run("test", _stored([test], run.ids["test"]), test_features)
    return FeatureStore(test)


def _evaluate(run: _Run, stages: _Stages, heads, detector: Detector, store: FeatureStore, html):
    """Stage 7: the test videos' detections and metrics, the report, its figures and page."""
    out, protocol, events = run.out, run.protocol, run.events
    results = detection.detections(detector, store, [i for i in run.ids["test"] if i in store])
    if not results:
        raise InputError(f"{run.root}: no test video could be read")
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    metrics = evaluate(results, events, sigma=detector.sigma, labels=run.labels)
    per_video, video_level = metrics.pop("per_video"), metrics.pop("video_level")
    (out / "per_video.json").write_text(json.dumps(per_video, indent=1))
    report = {
        "dataset": protocol.dataset,
        "frame_level": metrics,
        "video_level": video_level,
        "expert_heads": heads.tolist(),
        "sigma": detector.sigma,
        "tau": detector.tau,
        "prompts": list(protocol.prompts),
        "backbone": detector.backbone,
        "backbone_fingerprint": detector.backbone_fingerprint,
        "version": __version__,
        "videos": {name: len(v) for name, v in run.ids.items()},
        "training": detector.training,
        "failures": [dataclasses.asdict(f) for f in run.failures],
        "stages": stages.summary(),
        "protocol": dataclasses.asdict(protocol),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    curves = frame_curves(results, events, sigma=detector.sigma)
    plots.roc_pr(curves, out / "roc_pr.png", metrics["roc_auc"], metrics["average_precision"])
    by_id = run_report.labels_by_video(results, run.labels)
    plots.score_summary(results, out / "scores.png", by_id)
    if html:
        both = {**metrics, "video_level": video_level}
        _page(html, run, detector, results, store, by_id, both)
    return report


def _page(html, run: _Run, detector, results, store, labels, metrics):
    """The run's HTML page: every figure in the run's folder, the test videos' detections."""
    out, protocol = run.out, run.protocol
    captions = {"rss_heatmap": "Robust saliency score of every head", **plots.HUNT_FIGURES}
    captions |= {"roc_pr": run_report.ROC_PR, "scores": run_report.SCORES}
    run_report.write_evaluation_page(
        html,
        results,
        title=f"headhunt-jax reproduce: {protocol.dataset}",
        facts={"dataset": f"{protocol.dataset} at {protocol.root}, test split"}
        | run_report.detector_facts(
            detector, f"{detector.backbone} ({protocol.model})", prompts=len(protocol.prompts)
        ),
        events=run.events,
        labels=labels,
        metrics=metrics,
        thumbnails=detection.thumbnails(store, [r["video"] for r in results]),
        figures={c: out / f"{n}.png" for n, c in captions.items() if (out / f"{n}.png").exists()},
        failures=run.failures,
    )


def _record_splits(path: Path, ids: dict[str, list[str]]) -> None:
    """Writes the splits once; a dataset that now lists other videos is an error, not a silent
    change of the videos the stored results came from."""
    if path.exists():
        have = files.read_json(path, "a run's splits")
        changed = [name for name in ids if have.get(name) != ids[name]]
        if changed:
            raise InputError(
                f"{path}: the dataset now gives other {', '.join(changed)} videos than this run "
                "used; use another --out"
            )
    else:
        path.write_text(json.dumps(ids, indent=1))


def summary(report: dict) -> str:
    """A few lines for the terminal."""
    frame, video = report["frame_level"], report["video_level"]["max"]
    lines = [
        f"{report['dataset']} test, {frame['num_videos']} videos: frame-level ROC AUC "
        f"{frame['roc_auc']:.4f}, AP {frame['average_precision']:.4f}; video-level (max) ROC AUC "
        f"{run_report.metric(video['roc_auc'])}, F1 {video['f1']:.4f}",
        f"expert heads {report['expert_heads']}, sigma {report['sigma']:g}, tau {report['tau']:g}",
        "stages: "
        + ", ".join(
            f"{n} {s['seconds']} s" + (" (reused)" if s["reused"] else "")
            for n, s in report["stages"].items()
        ),
    ]
    if report["failures"]:
        lines.append(f"{len(report['failures'])} videos could not be read (listed in report.json)")
    return "\n".join(lines)
