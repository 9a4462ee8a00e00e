"""Frame-level evaluation: segment scores spread to frames, ROC AUC and average precision over a
dataset, and the temporal annotation files of UCF-Crime and XD-Violence.

Frame labels follow the original evaluator: an annotated event (start, end) marks frames
[start, end), clipped to the video. Each segment covers SEGMENT_FRAMES frames; the frames after
the last full segment (fewer than SEGMENT_FRAMES) take the last segment's score. (The original
evaluator drops those tail frames instead: its frame count ends with the last segment.)
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.locator import smooth

SEGMENT_FRAMES = 48
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".wmv", ".mpg", ".mpeg")


class AnnotationError(ValueError):
    """A malformed line in an annotation file; the message names the file and the line."""

    def __init__(self, path, line_number, line, reason):
        super().__init__(f"{path}:{line_number}: {reason}: {line.strip()!r}")


def video_key(name):
    """The name a video is known by in annotations: a known video extension stripped.

    Only a video extension is removed: XD-Violence names contain dots ("A.Beautiful.Mind.2001__...").
    """
    name = Path(str(name)).name
    stem, dot, extension = name.rpartition(".")
    return stem if dot and f".{extension.lower()}" in VIDEO_EXTENSIONS else name


def xd_violence_label(name):
    """1 (anomaly) or 0 (normal) from an XD-Violence file name: `label_A` is normal."""
    match = re.search(r"label_([^._\s]+)", video_key(name))
    if match is None:
        raise ValueError(f"no XD-Violence label (label_...) in the video name {name!r}")
    return int(match.group(1) != "A")


def _frame_pairs(path, line_number, line, fields):
    """Events from an even number of integer fields, pairs of -1 meaning none."""
    try:
        frames = [int(f) for f in fields]
    except ValueError:
        raise AnnotationError(path, line_number, line, "frame numbers must be integers") from None
    if not frames or len(frames) % 2:
        raise AnnotationError(path, line_number, line, "frames must come in (start, end) pairs")
    events = []
    for start, end in zip(frames[::2], frames[1::2], strict=True):
        if start == end == -1:
            continue
        if start < 0 or end < 0:
            raise AnnotationError(path, line_number, line, "a frame number is negative")
        if start > end:
            raise AnnotationError(path, line_number, line, "an event ends before it starts")
        events.append((start, end))
    return events


def _parse(path, min_fields, frame_fields_from, what):
    path = Path(path)
    annotations = {}
    with open(path) as lines:
        for line_number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < min_fields:
                raise AnnotationError(path, line_number, line, f"expected {what}")
            name = video_key(fields[0])
            if name in annotations:
                raise AnnotationError(path, line_number, line, f"{name} is annotated twice")
            fields = fields[frame_fields_from:]
            annotations[name] = _frame_pairs(path, line_number, line, fields)
    return annotations


def parse_ucf_crime_annotations(path):
    """UCF-Crime's Temporal_Anomaly_Annotation file: `name.mp4 Class start end start end`.

    Returns {video key: [(start, end), ...]}; -1 -1 marks no event (normal videos: none at all).
    """
    return _parse(path, 4, 2, "`name Class start end [start end ...]`")


def parse_xd_violence_annotations(path):
    """XD-Violence's annotations.txt: `name start end [start end ...]`, anomalous videos only.

    Returns {video key: [(start, end), ...]}; videos absent from the file have no event.
    """
    return _parse(path, 3, 1, "`name start end [start end ...]`")


def frame_scores(segment_scores, num_frames, segment_frames=SEGMENT_FRAMES):
    """Spread segment scores [S] to frames [num_frames] float32.

    Frame f takes segment min(f // segment_frames, S - 1): segments are consecutive runs of
    segment_frames frames, the tail shorter than a segment joins the last one.
    """
    segment_scores = np.asarray(segment_scores, np.float32)
    count = segment_scores.shape[0] if segment_scores.ndim == 1 else -1
    if not num_frames // segment_frames <= count <= -(-num_frames // segment_frames) or count < 1:
        raise ValueError(
            f"{num_frames} frames make {max(1, num_frames // segment_frames)} segments of "
            f"{segment_frames} frames, got segment scores of shape {segment_scores.shape}"
        )
    segment = np.minimum(np.arange(num_frames) // segment_frames, count - 1)
    return segment_scores[segment]


def frame_labels(events, num_frames):
    """0/1 frame labels [num_frames] int8 from events [(start, end), ...], end exclusive.

    Clipped to the video as the original evaluator does: the start to the last frame, the end to
    the frame count (so an event starting after the end marks the last frame).
    """
    labels = np.zeros(num_frames, np.int8)
    for start, end in events:
        labels[min(start, num_frames - 1) : min(end, num_frames)] = 1
    return labels


@jax.jit
def _ranking_metrics(labels, scores):
    """(ROC AUC, average precision) of scores [F] for 0/1 labels [F], sklearn's definitions.

    Both walk the thresholds from the highest score down, one step per distinct score: AUC is the
    trapezoidal area under (FPR, TPR), AP = sum over steps of (recall increase) * precision.
    """
    order = jnp.argsort(-scores)
    ranked = scores[order]
    hits = labels[order].astype(jnp.int32)
    true_pos = jnp.cumsum(hits)
    false_pos = jnp.arange(1, hits.shape[0] + 1) - true_pos
    # A threshold step ends where the next score differs.
    step_end = jnp.append(ranked[1:] != ranked[:-1], True)

    def before(counts):
        at_ends = jax.lax.cummax(jnp.where(step_end, counts, 0))
        return jnp.concatenate([jnp.zeros(1, counts.dtype), at_ends[:-1]])

    positives = true_pos[-1].astype(jnp.float32)
    negatives = false_pos[-1].astype(jnp.float32)
    tpr = true_pos / positives
    fpr = false_pos / negatives
    tpr_before = before(true_pos) / positives
    fpr_before = before(false_pos) / negatives
    auc = jnp.sum(jnp.where(step_end, (fpr - fpr_before) * (tpr + tpr_before) / 2, 0.0))
    precision = true_pos / (true_pos + false_pos)
    ap = jnp.sum(jnp.where(step_end, (tpr - tpr_before) * precision, 0.0))
    return auc, ap


def ranking_metrics(labels, scores):
    """Frame-level ROC AUC and average precision (as sklearn computes them).

    Args:
      labels: [F] 0/1; both classes must be present.
      scores: [F] anomaly scores.

    Returns:
      (roc_auc, average_precision) as Python floats.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"labels {labels.shape} and scores {scores.shape} must be equal 1-D shapes"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    if np.unique(labels).size < 2:
        raise ValueError("frame labels contain one class only; AUC and AP need both")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    auc, ap = _ranking_metrics(labels.astype(np.int8), scores.astype(np.float32))
    return float(auc), float(ap)


def evaluate_frames(segment_scores, num_frames, events, sigma=None, segment_frames=SEGMENT_FRAMES):
    """Frame-level ROC AUC and AP of a dataset, all frames of all videos together.

    Args:
      segment_scores: {video: [S] segment scores}.
      num_frames: {video: frame count}.
      events: {video: [(start, end), ...]} for every video (empty for normal ones); for
        XD-Violence, whose file lists anomalous videos only, pass
        {v: annotations.get(v, []) for v in segment_scores}.
      sigma: if given, each video's segment scores are Gaussian-smoothed first (the original
        evaluator smooths with the locator's sigma).
      segment_frames: frames per segment.

    Returns:
      dict: roc_auc, average_precision, num_videos, num_frames, num_anomaly_frames.
    """
    missing = [v for v in segment_scores if v not in num_frames or v not in events]
    if missing:
        raise ValueError(f"no frame count or events for {len(missing)} videos, e.g. {missing[:3]}")
    labels, scores = [], []
    for video, video_scores in segment_scores.items():
        if sigma is not None:
            video_scores = np.asarray(smooth(video_scores, sigma))
        scores.append(frame_scores(video_scores, num_frames[video], segment_frames))
        labels.append(frame_labels(events[video], num_frames[video]))
    labels = np.concatenate(labels)
    auc, ap = ranking_metrics(labels, np.concatenate(scores))
    return {
        "roc_auc": auc,
        "average_precision": ap,
        "num_videos": len(segment_scores),
        "num_frames": int(labels.size),
        "num_anomaly_frames": int(labels.sum()),
    }
