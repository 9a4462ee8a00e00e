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
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from headhunt_jax import __version__, detection, experts, files, fitting, paths, plots, run_report
from headhunt_jax.datasets import VideoItem, calibration_subset, load_dataset
from headhunt_jax.detector import Detector, Probe
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
    # the probes run side by side on one extraction ("heads", "hidden"); recorded when not heads
    probes: tuple[str, ...] = ("heads",)


def _check_protocol(out: Path, protocol: Protocol) -> None:
    path = out / "protocol.json"
    wanted = dataclasses.asdict(protocol)
    wanted["prompts"] = list(protocol.prompts)
    wanted["probes"] = list(protocol.probes)
    if not protocol.processor_options:  # as run directories made before the field have it
        del wanted["processor_options"]
    if protocol.probes == ("heads",):  # likewise
        del wanted["probes"]
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
        paths.mkdir(out)
        paths.write_text(path, json.dumps(wanted, indent=1))


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
        paths.write_text(self.path, json.dumps(self.times, indent=1))
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
        self.root = paths.of(self.protocol.root)
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
    test videos' thumbnails are kept when their features are extracted in this run).
    ``protocol.probes``: each probe's detector is hunted, fitted and evaluated on the same
    extractions (each extraction stage computes every probe's features in one pass)."""
    out = paths.of(out_dir)
    _check_protocol(out, protocol)
    stages = _Stages(out, say)
    splits, warnings = protocol_splits(protocol)
    for warning in warnings:
        say(f"warning: {warning}")
    run = _Run(protocol, out, splits, load_backbone, batch_size, progress)
    _record_splits(out / "splits.json", run.ids)
    stores = _calibration(run, stages)
    probes = {name: _HUNTS[name](run, stages, stores) for name in protocol.probes}
    validation = _validation(run, stages, probes)
    detectors = {
        name: _fit(run, stages, stores[0], probe, validation) for name, probe in probes.items()
    }
    store = _test(run, stages, detectors, thumbnails=bool(html))
    return _evaluate(run, stages, detectors, store, html)


def _calibration(run: _Run, stages: _Stages) -> list[FeatureStore]:
    """Stage 2: every head's features (and every layer's hidden state, for a hidden probe) of
    the calibration videos, a store a prompt."""
    prompts = run.protocol.prompts
    outs = [run.out / "features" / "calibration" / f"p{m + 1}" for m in range(len(prompts))]
    stages.run(
        "calibration",
        _stored(outs, run.ids["calibration"]),
        lambda: run.features(
            "calibration", prompts, outs, clip=run.protocol.clip, kinds=run.protocol.probes
        ),
    )
    return [FeatureStore(s) for s in outs]


def _hunt(run: _Run, stages: _Stages, stores: list[FeatureStore]) -> Probe:
    """Stage 3: the expert heads and the hunt's figures."""
    protocol, heads_file = run.protocol, run.out / "heads.json"

    def hunt():
        result = experts.hunt(
            stores, protocol.k, protocol.lam, max_clips=protocol.max_clips, labels=run.labels
        )
        experts.write_heads(heads_file, result, k=protocol.k, lam=protocol.lam)
        plots.hunt_figures(result, run.out / "rss_heatmap.png")

    stages.run("hunt", heads_file.exists(), hunt)
    return Probe("heads", experts.load_heads(heads_file))


def _hunt_layer(run: _Run, stages: _Stages, stores: list[FeatureStore]) -> Probe:
    """Stage 3, hidden probe: DLSP's layer over the prompts -> ``layers.json``, ``layers.png``."""
    layers_file = run.out / "layers.json"

    def hunt():
        result = experts.hunt_layer(stores, max_clips=run.protocol.max_clips, labels=run.labels)
        experts.write_layers(layers_file, result, max_clips=run.protocol.max_clips)
        plots.layer_criteria(result, run.out / "layers.png")

    stages.run("hunt_hidden", layers_file.exists(), hunt)
    return Probe.hidden(experts.load_layer(layers_file))


_HUNTS = {"heads": _hunt, "hidden": _hunt_layer}


def _extraction(probes) -> dict:
    """``extract_features``' arguments for every probe's features in one pass."""
    kw = {"kinds": tuple(p.kind for p in probes)}
    for p in probes:
        kw |= {k: v for k, v in p.extraction().items() if k != "kinds"}
    return kw


def _validation(run: _Run, stages: _Stages, probes: dict) -> Path:
    """Stage 4: every probe's features of the validation videos' segments (first prompt)."""
    validation = run.out / "features" / "validation"
    stages.run(
        "validation",
        _stored([validation], run.ids["validation"]),
        lambda: run.features(
            "validation", run.protocol.prompts[0], validation, **_extraction(probes.values())
        ),
    )
    return validation


def _detector_dir(run: _Run, probe: str) -> Path:
    return run.out / ("detector" if probe == "heads" else f"detector_{probe}")


def _suffix(probe: str) -> str:
    """What a probe's stages and files are named with: none for heads (as before)."""
    return "" if probe == "heads" else f"_{probe}"


def _fit(run: _Run, stages: _Stages, store: FeatureStore, probe: Probe, validation) -> Detector:
    """Stage 5: the scorer on the calibration videos, sigma and tau on the validation ones."""
    detector_dir = _detector_dir(run, probe.kind)

    def fit():
        detector = fitting.fit(
            store,
            probe,
            kind=run.protocol.scorer,
            validation=FeatureStore(validation),
            labels=run.labels,
        )
        detector.save(detector_dir, overwrite=True)

    done = (detector_dir / files.MANIFEST).exists()  # a bundle's manifest is written last
    stages.run("fit" + _suffix(probe.kind), done, fit)
    return Detector.load(detector_dir)


def _test(run: _Run, stages: _Stages, detectors: dict, thumbnails: bool) -> FeatureStore:
    """Stage 6: every probe's features of the test videos' segments, one pass (with thumbnails
    for the page)."""
    test = run.out / "features" / "test"
    first = next(iter(detectors.values()))

    def test_features():
        for detector in detectors.values():
            detection.check_compatible(run.backbone(), detector)
        run.features(
            "test",
            first.prompt,
            test,
            thumbnail_height=THUMBNAIL_HEIGHT if thumbnails else None,
            **_extraction(d.probe for d in detectors.values()),
        )

    stages.run("test", _stored([test], run.ids["test"]), test_features)
    return FeatureStore(test)


def _evaluate(run: _Run, stages: _Stages, detectors: dict, store: FeatureStore, html):
    """Stage 7: each probe's detections and metrics on the test videos, the report (the first
    probe's figures at its top, every probe's in ``probes``), its figures and page."""
    out, protocol = run.out, run.protocol
    ids = [i for i in run.ids["test"] if i in store]
    columns, outcomes = {}, {}
    for name, detector in detectors.items():
        results, metrics = _probe_outcome(run, name, detector, store, ids)
        outcomes[name] = (results, metrics)
        columns[name] = _probe_column(run, stages, name, detector, metrics)
    first = next(iter(detectors))
    results, metrics = outcomes[first]
    detector = detectors[first]
    report = {
        "dataset": protocol.dataset,
        "frame_level": {k: v for k, v in metrics.items() if k != "video_level"},
        "video_level": metrics["video_level"],
        **detector.probe.describe(),
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
        "probes": columns,
        "protocol": dataclasses.asdict(protocol),
    }
    paths.write_text(out / "report.json", json.dumps(report, indent=1))
    if html:
        by_id = run_report.labels_by_video(results, run.labels)
        _page(html, run, detector, results, store, by_id, metrics, columns)
    return report


def _probe_outcome(run: _Run, name: str, detector: Detector, store: FeatureStore, ids):
    """One probe's detections and metrics (with ``video_level``) on the test videos, written as
    ``detections{suffix}.json``, ``per_video{suffix}.json``, ``roc_pr{suffix}.png`` and
    ``scores{suffix}.png``."""
    out, events, suffix = run.out, run.events, _suffix(name)
    results = detection.detections(detector, store, ids)
    if not results:
        raise InputError(f"{run.root}: no test video could be read")
    paths.write_text(out / f"detections{suffix}.json", json.dumps(results, indent=1))
    metrics = evaluate(results, events, sigma=detector.sigma, labels=run.labels)
    paths.write_text(
        out / f"per_video{suffix}.json", json.dumps(metrics.pop("per_video"), indent=1)
    )
    curves = frame_curves(results, events, sigma=detector.sigma)
    roc, ap = metrics["roc_auc"], metrics["average_precision"]
    plots.roc_pr(curves, out / f"roc_pr{suffix}.png", roc, ap)
    by_id = run_report.labels_by_video(results, run.labels)
    plots.score_summary(results, out / f"scores{suffix}.png", by_id)
    return results, metrics


def _probe_column(run: _Run, stages: _Stages, name: str, detector, metrics) -> dict:
    """A probe's column of the report: its metrics, what it reads, its stages' times (the
    extraction stages are shared by every probe) and the size of its features."""
    video = metrics["video_level"]["max"]
    suffix = _suffix(name)
    times = stages.summary()
    own = {s: times[s]["seconds"] for s in (f"hunt{suffix}", f"fit{suffix}") if s in times}
    return {
        **detector.probe.describe(),
        "frame_auc": metrics["roc_auc"],
        "frame_ap": metrics["average_precision"],
        "video_auc": video["roc_auc"],
        "video_f1": video["f1"],
        "sigma": detector.sigma,
        "tau": detector.tau,
        "stage_seconds": own,
        "feature_dim": int(detector.scorer.feature_dim),
        "calibration_store_bytes": _stored_bytes(run.out / "features" / "calibration", name),
        "detector": str(_detector_dir(run, name).relative_to(run.out)),
    }


def _stored_bytes(folder: Path, kind: str) -> int:
    """Bytes the features of ``kind`` take in the stores under ``folder`` (their arrays as
    stored in the video files; read from the files' directories, not the arrays)."""
    entry = {"heads": "features.npy", "hidden": "hidden.npy"}[kind]
    total = 0
    for path in folder.rglob("*.npz"):
        with paths.open_for_reading(path) as f, zipfile.ZipFile(f) as z:
            if entry in z.namelist():
                total += z.getinfo(entry).file_size
    return total


def _page(html, run: _Run, detector, results, store, labels, metrics, columns):
    """The run's HTML page: every figure in the run's folder, the first probe's detections of
    the test videos, and a column a probe."""
    out, protocol = run.out, run.protocol
    captions = {"rss_heatmap": "Robust saliency score of every head", **plots.HUNT_FIGURES}
    captions |= {"layers": plots.LAYER_FIGURE}
    for name in columns:
        suffix = _suffix(name)
        note = f" ({name} probe)" if len(columns) > 1 else ""
        captions |= {f"roc_pr{suffix}": run_report.ROC_PR + note}
        captions |= {f"scores{suffix}": run_report.SCORES + note}
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
        comparison=run_report.probe_table(columns) if len(columns) > 1 else None,
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
        paths.write_text(path, json.dumps(ids, indent=1))


def _probe_line(name: str, column: dict) -> str:
    reads = column.get("expert_heads", column.get("layer"))
    what = "expert heads" if name == "heads" else "layer"
    return (
        f"{name}: {what} {reads}, frame-level ROC AUC {column['frame_auc']:.4f}, AP "
        f"{column['frame_ap']:.4f}, sigma {column['sigma']:g}, tau {column['tau']:g}"
    )


def summary(report: dict) -> str:
    """A few lines for the terminal."""
    frame, video = report["frame_level"], report["video_level"]["max"]
    lines = [
        f"{report['dataset']} test, {frame['num_videos']} videos: frame-level ROC AUC "
        f"{frame['roc_auc']:.4f}, AP {frame['average_precision']:.4f}; video-level (max) ROC AUC "
        f"{run_report.metric(video['roc_auc'])}, F1 {video['f1']:.4f}",
        *(_probe_line(name, column) for name, column in report["probes"].items()),
        "stages: "
        + ", ".join(
            f"{n} {s['seconds']} s" + (" (reused)" if s["reused"] else "")
            for n, s in report["stages"].items()
        ),
    ]
    if report["failures"]:
        lines.append(f"{len(report['failures'])} videos could not be read (listed in report.json)")
    return "\n".join(lines)
