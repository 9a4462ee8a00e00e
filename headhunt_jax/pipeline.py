"""The pipeline's stages over feature stores, shared by the CLI and the demo:
hunt (stores under M prompts -> expert heads), fit (store + heads -> detector),
detect (videos -> scores and events), evaluate (detections + annotations -> frame AUC / AP).

Labels (``segment_labels``): a row of an annotated video is anomalous when it overlaps an annotated
event (frames [start, end)); a row of any other video takes its video's label.
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from headhunt_jax import files
from headhunt_jax.annotations import (
    parse_ucf_crime_annotations,
    parse_xd_violence_annotations,
    video_key,
)
from headhunt_jax.backbone import Backbone
from headhunt_jax.detector import Detector
from headhunt_jax.errors import InputError
from headhunt_jax.evaluation import (
    aggregate,
    binary_metrics,
    curves,
    evaluate_frames,
    frame_arrays,
    per_video_frame_metrics,
    video_level_metrics,
)
from headhunt_jax.extract import Failure, extract_features
from headhunt_jax.features import check_heads, gather_heads
from headhunt_jax.hunt import CRITERIA, robust_saliency, saliency, top_k_heads
from headhunt_jax.locator import calibrate, localize, next_power_of_two, smooth
from headhunt_jax.scorer import fit_scorer, score
from headhunt_jax.store import FeatureStore, VideoFeatures

Events = Mapping[str, Sequence[tuple[int, int]]]  # video key -> annotated frame ranges
Labels = Mapping[str, int]  # video key -> 1 anomalous, 0 normal
log = logging.getLogger(__name__)


def read_annotations(path) -> dict[str, list[tuple[int, int]]]:
    """An XD-Violence ``annotations.txt`` or a UCF-Crime temporal annotation file (told apart by
    the second field: a class name in UCF-Crime's) -> {video key: [(start, end), ...]}."""
    path = Path(path)
    lines = files.read_lines(path, "an annotation file")
    first = next((line.split() for line in lines if line.strip()), None)
    if first is not None and len(first) > 1 and not first[1].lstrip("-").isdigit():
        return parse_ucf_crime_annotations(path)
    return parse_xd_violence_annotations(path)


def segment_labels(
    video: VideoFeatures, events: Events | None = None, labels: Labels | None = None
) -> np.ndarray:
    """0/1 [S]: the labels of a video's feature rows.

    A video the annotations list (its key in ``events``): a row is anomalous when its frames
    overlap an annotated event. Any other video (XD-Violence annotates its test videos only,
    UCF-Crime labels its training videos by class folder only): its video label on every row,
    from ``labels`` ({video key: 0/1}, e.g. from a dataset listing) or else the label stored with
    its features. A video with neither is an error that names it, never silently normal.
    """
    key = video_key(video.video_id)
    if events is not None and key in events:
        hit = np.zeros(video.num_segments, bool)
        for start, end in events[key]:
            hit |= (video.start_frames < end) & (video.end_frames > start)
        return hit.astype(np.int32)
    label = labels.get(key, video.label) if labels is not None else video.label
    if label is None:
        raise InputError(
            f"video {video.video_id!r} has no label: it is not in the annotations and was "
            "extracted without one (pass --dataset/--root, or extract it with labels)"
        )
    return np.full(video.num_segments, label, np.int32)


def labelled_videos(
    store: FeatureStore, events: Events | None = None, labels: Labels | None = None
) -> list[tuple[VideoFeatures, np.ndarray]]:
    videos = [(v, segment_labels(v, events, labels)) for v in store]
    if not videos:
        raise InputError(f"{store.path}: the store holds no videos")
    return videos


# Rows kept for the t-SNE pictures of a hunt: t-SNE's cost grows as N log N and past this the
# picture shows no more.
SAMPLE_ROWS = 1000


@dataclasses.dataclass(frozen=True)
class HeadSample:
    """Hunted rows kept for pictures (``plots.tsne``), under ``prompt``: ``labels`` int [N];
    ``experts`` float32 [N, K * D], the expert heads' features concatenated; ``layer`` and
    ``layer_heads`` float32 [N, H * D], every head of the layer of lowest mean RSS, for
    comparison. At most ``SAMPLE_ROWS`` rows (``clip_subset``)."""

    labels: np.ndarray
    experts: np.ndarray
    layer: int
    layer_heads: np.ndarray
    prompt: str


@dataclasses.dataclass(frozen=True)
class HuntResult:
    """heads: int [K, 2] (layer, head), best first; rss: [L, H]; combined: [M, L, H];
    criteria: {"lda", "kl", "mmd", "nmi"}: each [M, L, H], the raw criterion under each prompt;
    sample: rows for pictures (None when not kept)."""

    heads: np.ndarray
    rss: np.ndarray
    combined: np.ndarray
    backbone: str
    prompts: tuple[str, ...]
    criteria: dict = dataclasses.field(default_factory=dict)
    sample: HeadSample | None = None

    def to_json(self) -> dict:
        return {
            "heads": self.heads.tolist(),
            "backbone": self.backbone,
            "prompts": list(self.prompts),
            "rss": np.round(self.rss, 6).tolist(),
            "criteria": {k: np.round(v, 6).tolist() for k, v in self.criteria.items()},
        }


def clip_subset(labels: np.ndarray, max_clips: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_clips`` rows, each class drawn in proportion (at least 2 of a class
    that has 2), seeded; all rows when there are few enough. Saliency holds [N, N] arrays a head,
    so N stays in the thousands."""
    n = len(labels)
    if max_clips is None or n <= max_clips:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picked = []
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        take = min(len(rows), max(2, round(max_clips * len(rows) / n)))
        picked.append(rng.choice(rows, size=take, replace=False))
    return np.sort(np.concatenate(picked))


def hunt(
    stores: Sequence[FeatureStore],
    k: int = 5,
    lam: float = 0.5,
    events: Events | None = None,
    max_clips: int | None = 4000,
    mesh=None,
    labels: Labels | None = None,
) -> HuntResult:
    """Expert heads from all-head stores of the same videos under M >= 2 prompts, scored on the
    same (at most ``max_clips``, see ``clip_subset``) segments under every prompt; ``mesh``: the
    devices that split the heads (``saliency``). The values are checked here, at the edge
    (``saliency`` and the rest are traceable and check shapes only while traced)."""
    from headhunt_jax.hunt import check_finite, check_saliency_inputs

    if len(stores) < 2:
        raise InputError(f"hunting needs stores of at least 2 prompts, got {len(stores)}")
    first = stores[0].spec
    for s in stores:
        if s.spec.heads is not None:
            raise InputError(f"{s.path}: holds expert heads only; hunting needs all heads")
        if s.spec.clip != first.clip:
            raise InputError(f"{s.path}: clip {s.spec.clip!r}, {stores[0].path} has {first.clip!r}")
        if s.spec.backbone != first.backbone:
            raise InputError(
                f"{s.path}: backbone {s.spec.backbone!r}, {stores[0].path} has {first.backbone!r}"
            )
    combined, criteria = [], []
    reference = rows = None
    for s in stores:
        videos = labelled_videos(s, events, labels)
        layout = [(v.video_id, v.num_segments) for v, _ in videos]
        if reference is not None and layout != reference:
            raise InputError(f"{s.path}: holds other videos or segments than {stores[0].path}")
        reference = layout
        y = np.concatenate([y for _, y in videos])
        if len(np.unique(y)) < 2:
            raise InputError(f"{s.path}: all segments have one label; hunting needs both classes")
        rows = clip_subset(y, max_clips) if rows is None else rows
        x = np.concatenate([v.features for v, _ in videos])[rows]
        try:
            check_saliency_inputs(x, y[rows])
        except InputError as e:
            raise InputError(f"{s.path}: {e}") from None
        scores = saliency(x, y[rows], mesh=mesh)
        combined.append(np.asarray(scores["combined"]))
        criteria.append({name: np.asarray(scores[name]) for name in CRITERIA})
    combined = np.stack(combined)
    check_finite(combined, "the combined saliency")
    rss = np.asarray(robust_saliency(combined, lam))
    check_finite(rss, f"the robust saliency (lam {lam})")
    heads = np.asarray(top_k_heads(rss, k))
    return HuntResult(
        heads,
        rss,
        combined,
        first.backbone,
        tuple(s.spec.prompt for s in stores),
        {name: np.stack([c[name] for c in criteria]) for name in CRITERIA},
        head_sample(x, y[rows], heads, rss, stores[-1].spec.prompt),
    )


def head_sample(x, labels, heads, rss, prompt: str) -> HeadSample:
    """``HeadSample`` of all-head features x [N, L, H, D] with labels [N]."""
    keep = clip_subset(labels, SAMPLE_ROWS)
    x, labels = x[keep], labels[keep]
    layer = int(np.argmin(np.asarray(rss).mean(axis=1)))
    return HeadSample(
        labels=labels,
        experts=gather_heads(x, heads).reshape(len(x), -1),
        layer=layer,
        layer_heads=x[:, layer].reshape(len(x), -1),
        prompt=prompt,
    )


def load_heads(path) -> np.ndarray:
    """Expert heads [K, 2] from a ``hunt`` JSON file ("heads") or a published one
    ("expert_heads", as in checkpoints/)."""
    from headhunt_jax import files

    path = Path(path)
    record = files.read_json(path, "a heads file")
    try:
        heads = np.asarray(
            record["heads"] if "heads" in record else record["expert_heads"], np.int32
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise InputError(f"{path}: not a heads file ({e})") from None
    try:
        return check_heads(heads)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None


def expert_features(video: VideoFeatures, store: FeatureStore, heads: np.ndarray) -> np.ndarray:
    """[S, K * D]: the experts' features of a video, from an all-head or an expert-head store."""
    spec = store.spec
    if spec.heads is None:  # every head of every layer (extract's store_spec)
        x = gather_heads(
            video.features, check_heads(heads, video.features.shape[1:3], str(store.path))
        )
    elif [tuple(h) for h in spec.heads] == [tuple(map(int, h)) for h in heads]:
        x = video.features
    else:
        raise InputError(f"{store.path}: holds the heads {list(spec.heads)}, not {heads.tolist()}")
    return x.reshape(x.shape[0], -1)


# What a validation store must share with the training store for its scores to calibrate on.
_SAME_FEATURES = (
    "backbone_fingerprint",
    "prompt",
    "dtype",
    "image_size",
    "frames_per_segment",
    "processor_options",
)


def _expert_data(store: FeatureStore, heads, events: Events | None, labels: Labels | None):
    """Each labelled video's expert features [S, K * D] and row labels [S]."""
    videos = labelled_videos(store, events, labels)
    return [expert_features(v, store, heads) for v, _ in videos], [y for _, y in videos]


def holdout_split(video_labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) video indices: a seeded ``fraction`` of each class held out (at least
    one video of each class on each side). Whole videos, so that no video's segments are on both
    sides."""
    video_labels = np.asarray(video_labels)
    if not 0 < fraction < 1:
        raise InputError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in (0, 1):
        rows = np.flatnonzero(video_labels == c)
        if len(rows) < 2:
            raise InputError(
                f"holding out part of the videos needs at least 2 of each class; "
                f"{len(rows)} are {('normal', 'anomalous')[c]}"
            )
        count = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held.append(rng.permutation(rows)[:count])
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(video_labels)), held), held


def _check_validation(validation: FeatureStore, store: FeatureStore) -> None:
    for field in _SAME_FEATURES:
        theirs, ours = getattr(validation.spec, field), getattr(store.spec, field)
        if theirs != ours:
            raise InputError(
                f"{validation.path}: {field} {theirs!r}, the training store {store.path} "
                f"has {ours!r}"
            )
    if validation.spec.clip != "segment":
        raise InputError(
            f"{validation.path}: holds one clip a video; sigma and tau are chosen on the scores "
            "of consecutive segments (extract it with --clip segment)"
        )


def fit(
    store: FeatureStore,
    heads,
    events: Events | None = None,
    kind: str = "logistic",
    validation: FeatureStore | None = None,
    *,
    labels: Labels | None = None,
    holdout: float | None = None,
    seed: int = 0,
) -> Detector:
    """A detector from the experts' features of ``store``'s videos (labels: ``segment_labels``).

    The scorer trains on every row, or with ``holdout`` on the videos left after holding out
    that fraction of each class (``holdout_split``, seeded), whose rows then give accuracy,
    precision, recall, F1, ROC AUC and AP at threshold 0.5 (``Detector.training["holdout"]``,
    the original's train_scorer check). Sigma and tau come from a grid search for F1 on the
    segment scores of ``validation`` (held-out videos of the same backbone and prompt, cut into
    segments), else of the held-out videos, else of the training videos (optimistic). A store of
    one clip a video has no segment scores of its own: without ``validation`` the locator keeps
    its defaults. ``Detector.training`` records which.
    """
    heads = check_heads(heads)
    xs, ys = _expert_data(store, heads, events, labels)
    train, held = np.arange(len(xs)), np.zeros(0, int)
    if holdout is not None:
        train, held = holdout_split([y.max() for y in ys], holdout, seed)
    scorer = fit_scorer(
        np.concatenate([xs[i] for i in train]), np.concatenate([ys[i] for i in train]), kind
    )
    spec = store.spec
    detector = Detector(
        heads,
        scorer,
        backbone=spec.backbone,
        prompt=spec.prompt,
        backbone_fingerprint=spec.backbone_fingerprint,
        dtype=spec.dtype,
        backbone_path=store.backbone_path or "",
        backbone_hub=store.backbone_hub or "",
        processor_options=dict(spec.processor_options),
    )
    training = {
        "store": str(store.path),
        "clip": spec.clip,
        "videos": len(train),
        "rows": int(sum(len(xs[i]) for i in train)),
        "holdout": None,
    }
    if holdout is not None:
        scores = np.concatenate([detector_scores(detector, xs[i]) for i in held])
        truth = np.concatenate([ys[i] for i in held])
        training["holdout"] = {"fraction": holdout, "seed": seed, "videos": len(held)}
        training["holdout"] |= binary_metrics(truth, scores)
    if validation is not None:
        _check_validation(validation, store)
        xs, ys = _expert_data(validation, heads, events, labels)
        training["calibrated_on"] = f"validation store {validation.path}"
    elif spec.clip != "segment":
        training["calibrated_on"] = "defaults (one clip a video, no segment scores)"
        return dataclasses.replace(detector, training=training)
    elif holdout is not None:
        xs, ys = [xs[i] for i in held], [ys[i] for i in held]
        training["calibrated_on"] = "held-out videos"
    else:
        training["calibrated_on"] = "training videos (optimistic)"
    sigma, tau = calibrate([detector_scores(detector, x) for x in xs], ys)
    return dataclasses.replace(detector, sigma=sigma, tau=tau, training=training)


def detector_scores(detector: Detector, x) -> np.ndarray:
    """Scores [N] of features [N, F]; rows padded to a power of two so that videos of any length
    share a few compilations."""
    n = x.shape[0]
    if not np.isfinite(x).all():
        raise InputError("features contain NaN or inf")
    padded = np.zeros((next_power_of_two(n), x.shape[1]), np.float32)
    padded[:n] = x
    return np.asarray(score(detector.scorer, padded))[:n]


class IncompatibleBackbone(InputError):
    """A backbone of another architecture than the detector's."""


def check_compatible(bb: Backbone, detector: Detector) -> None:
    """A detector only reads the backbone it was fitted on: another architecture is an error; the
    same architecture under another name (a renamed folder, or a fine-tune) is a warning. (Its
    heads are checked against the backbone by the extraction.)"""
    if detector.backbone_fingerprint and detector.backbone_fingerprint != bb.fingerprint:
        raise IncompatibleBackbone(
            f"the detector was fitted on backbone {detector.backbone!r}, not {bb.name!r} "
            "(another architecture)"
        )
    if detector.backbone and bb.name != detector.backbone:
        log.warning("the detector was fitted on %r; running it on %r", detector.backbone, bb.name)
    dtype = np.dtype(bb.dtype).name
    if detector.dtype and detector.dtype != dtype:
        # bf16 features differ from float32 ones by a few percent (README, parity section).
        log.warning(
            "the detector was fitted on %s features; extracting in %s", detector.dtype, dtype
        )


def detect(
    bb: Backbone,
    detector: Detector,
    videos: Sequence,
    work_dir,
    *,
    root=None,
    batch_size: int = 8,
    thumbnail_height: int | None = None,
    explainer=None,
    progress: bool = True,
) -> tuple[list[dict], list[Failure]]:
    """Scores and events for every video. The experts' features go to a store in ``work_dir``
    (a rerun reuses it), with a thumbnail a segment when ``thumbnail_height`` is given
    (``thumbnails``). ``explainer`` (``explain.Explainer``): each event also gets the
    backbone's ``explanation`` of its peak segment. Returns one result dict per readable video,
    and the failures."""
    check_compatible(bb, detector)
    report = extract_features(
        bb,
        videos,
        detector.prompt,
        work_dir,
        heads=detector.expert_heads,
        root=root,
        batch_size=batch_size,
        processor_options=detector.processor_options,
        thumbnail_height=thumbnail_height,
        explainer=explainer,
        progress=progress,
    )
    store = FeatureStore(report.store)
    done = set(report.written) | set(report.skipped)
    results = detections(detector, store, [v for v in store.video_ids() if v in done])
    if explainer is not None:
        explainer.attach(results, progress)
    return results, list(report.failures)


def thumbnails(store: FeatureStore, video_ids) -> dict[str, tuple[bytes, ...]]:
    """{video: a JPEG a segment} of the given videos that were extracted with thumbnails."""
    found = {v: store.read(v).thumbnails for v in video_ids if v in store}
    return {v: t for v, t in found.items() if t is not None}


def detections(detector: Detector, store: FeatureStore, video_ids=None) -> list[dict]:
    """``video_result`` for the given videos of a store of the detector's features (default:
    every video)."""
    ids = store.video_ids() if video_ids is None else video_ids
    return [video_result(detector, store, store.read(v)) for v in ids]


def seconds(frames: int, fps: float) -> float:
    """``frames`` frames at ``fps`` in seconds, rounded as every reported time is."""
    return round(frames * (1.0 / fps), 3)


def event_fields(start, end, first_frame, last_frame, fps, peak_score, peak_segment) -> dict:
    """An event as ``detect`` (and ``watch``) reports it: segments [start, end), frames
    [first_frame, last_frame), seconds, duration, the peak's smoothed score and segment."""
    return {
        "start_segment": int(start),
        "end_segment": int(end),
        "start_frame": int(first_frame),
        "end_frame": int(last_frame),
        "start_s": seconds(first_frame, fps),
        "end_s": seconds(last_frame, fps),
        "duration_s": seconds(last_frame - first_frame, fps),
        "peak_score": round(float(peak_score), 6),
        "peak_segment": int(peak_segment),
    }


def video_result(detector: Detector, store: FeatureStore, video: VideoFeatures) -> dict:
    """One video's detection: segment scores, smoothed scores, events (segments, frames [start,
    end), seconds, duration, peak score and segment), ``is_anomaly`` (an event was found) and
    ``video_score`` (the highest smoothed score)."""
    scores = detector_scores(detector, expert_features(video, store, detector.expert_heads))
    smoothed = np.asarray(smooth(scores, detector.sigma))
    meta = video.metadata
    events = []
    for start, end in localize(smoothed, None, detector.tau):
        first, last = int(video.start_frames[start]), int(video.end_frames[end - 1])
        peak = start + int(np.argmax(smoothed[start:end]))
        events.append(event_fields(start, end, first, last, meta.fps, smoothed[peak], peak))
    return {
        "video": video.video_id,
        "path": meta.path,
        "fps": meta.fps,
        "fps_source": meta.fps_source,
        "frames": meta.frame_count,
        "short": meta.short,
        "segment_frames": [
            [int(s), int(e)] for s, e in zip(video.start_frames, video.end_frames, strict=True)
        ],
        "segment_scores": np.round(scores.astype(np.float64), 6).tolist(),
        "smoothed_scores": np.round(smoothed.astype(np.float64), 6).tolist(),
        "events": events,
        "is_anomaly": bool(events),
        "video_score": round(float(smoothed.max()), 6),
        "sigma": detector.sigma,
        "tau": detector.tau,
    }


AGGREGATIONS = ("max", "mean", "p90")


def _frame_inputs(results: Sequence[dict], events: Events):
    """(segment scores, frame counts, events, spans), each {video: ...}, as evaluate_frames
    takes them."""
    scores = {r["video"]: np.asarray(r["segment_scores"]) for r in results}
    frames = {r["video"]: r["frames"] for r in results}
    truth = {r["video"]: list(events.get(video_key(r["video"]), [])) for r in results}
    spans = {r["video"]: r["segment_frames"] for r in results}
    return scores, frames, truth, spans


def frame_curves(results: Sequence[dict], events: Events, sigma: float | None = None) -> dict:
    """The frame-level ROC and precision-recall curves (``evaluation.curves``) of the frames
    that ``evaluate`` scores."""
    scores, frames, truth, spans = _frame_inputs(results, events)
    return curves(*frame_arrays(scores, frames, truth, sigma=sigma, spans=spans))


def evaluate(
    results: Sequence[dict],
    events: Events,
    sigma: float | None = None,
    labels: Labels | None = None,
) -> dict:
    """Frame-level metrics over detected videos (``evaluate_frames``; each video's frames are
    mapped to its segments by the spans its result records, ``segment_frames``); ``events`` cover
    the anomalous ones. With ``labels`` ({video key: 0/1}), also the video-level metrics of each
    of ``AGGREGATIONS`` of the smoothed scores (``video_level``), and per video its frame-level
    figures (``per_video``)."""
    ids = [r["video"] for r in results]
    scores, frames, truth, spans = _frame_inputs(results, events)
    metrics = evaluate_frames(scores, frames, truth, sigma=sigma, spans=spans)
    metrics["per_video"] = per_video_frame_metrics(scores, frames, truth, sigma=sigma, spans=spans)
    if labels is not None:
        missing = [v for v in ids if video_key(v) not in labels]
        if missing:
            raise InputError(f"no video label for {len(missing)} videos, e.g. {missing[:3]}")
        video_labels = {v: labels[video_key(v)] for v in ids}
        metrics["video_level"] = {
            how: video_level_metrics(
                {r["video"]: aggregate(r["smoothed_scores"], how) for r in results}, video_labels
            )
            for how in AGGREGATIONS
        }
    return metrics
