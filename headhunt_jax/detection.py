"""Detection: videos -> each video's scores and events, as ``detect`` (and ``watch``) report them.

``detect`` extracts the features its detector's probe reads (``Detector.probe``: expert heads
or a layer's hidden state) of the videos into a store (``extract``), and
``video_result`` turns a stored video into its detection record: segment scores
(``detector_scores``), smoothed scores, events (``locator.localize``, each by ``event_fields``),
the video's score and whether it holds an event.
"""

import logging
from collections.abc import Sequence

import numpy as np

from headhunt_jax.backbone import Backbone
from headhunt_jax.detector import Detector, detector_scores
from headhunt_jax.errors import InputError
from headhunt_jax.extract import Failure, extract_features
from headhunt_jax.locator import localize, smooth
from headhunt_jax.store import FeatureStore, VideoFeatures

log = logging.getLogger(__name__)


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
        root=root,
        batch_size=batch_size,
        processor_options=detector.processor_options,
        thumbnail_height=thumbnail_height,
        explainer=explainer,
        progress=progress,
        **detector.probe.extraction(),
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
    x = detector.features_of(video.kinds(), store.spec, str(store.path))
    scores = detector_scores(detector, x)
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
