"""Evaluation: frame-level ROC AUC, AP and max F1 of a dataset (segment scores spread to
frames), per-video frame figures, video-level binary metrics. Every metric is scikit-learn's
definition, computed without it. (The annotation files: :mod:`headhunt_jax.annotations`.)

Frame labels follow the original evaluator: an annotated event (start, end) marks frames
[start, end), clipped to the video. Frame f takes the score of the segment covering it. With the
spans recorded with the features (segment s covers frames [start_s, end_s)), that is the last
segment whose start is <= f; without them, segments are taken to be consecutive runs of
SEGMENT_FRAMES frames from frame 0. Frames after the last segment's end (a tail shorter than a
segment) take the last segment's score, frames before the first start the first one's. (The
original evaluator drops the tail frames instead: its frame count ends with the last segment. It
also gives a frame inside overlapping segments the max of their scores, and passes frame scores
through a sigmoid: monotone, so AUC, AP and max F1 are the same, but its max-F1 threshold and
per-video mean and max scores are on the sigmoid's scale.)

``evaluate`` and ``frame_curves`` take ``detect``'s results and the annotations as they are.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.annotations import Events, Labels, video_key
from headhunt_jax.errors import InputError
from headhunt_jax.locator import smooth
from headhunt_jax.video import SEGMENT_LENGTH as SEGMENT_FRAMES


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


def frame_scores_from_spans(segment_scores, spans, num_frames):
    """Spread segment scores [S] to frames [num_frames] float32 by the segments' frame spans.

    Segment s covers frames [start_s, end_s) (int, as recorded with the features). Frame f takes
    the last segment whose start is <= f, so that overlapping segments hand over at the next
    start; frames before the first start take the first segment, frames after the last end (a
    tail shorter than a segment) the last one. For spans [(48 s, min(48 s + 48, T)), ...] this is
    ``frame_scores(segment_scores, T)``.

    Args:
      segment_scores: [S] segment scores.
      spans: [(start, end), ...] of S integer frame ranges, start < end, starts ascending.
      num_frames: the video's frame count (>= 1).
    """
    segment_scores = np.asarray(segment_scores, np.float32)
    spans = np.asarray(spans)
    if segment_scores.ndim != 1 or segment_scores.size < 1:
        raise ValueError(
            f"segment scores must be [S] with S >= 1, got shape {segment_scores.shape}"
        )
    if spans.shape != (segment_scores.size, 2):
        raise ValueError(
            f"{segment_scores.size} segment scores need as many (start, end) spans, "
            f"got spans of shape {spans.shape}"
        )
    if not np.issubdtype(spans.dtype, np.integer):
        raise ValueError(f"segment spans must be integer frame numbers, got {spans.dtype}")
    starts, ends = spans[:, 0], spans[:, 1]
    if starts[0] < 0 or not (starts < ends).all() or not (np.diff(starts) > 0).all():
        raise ValueError(
            "segment spans must have 0 <= start < end and strictly ascending starts, "
            f"got {spans.tolist()}"
        )
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    segment = np.searchsorted(starts, np.arange(num_frames), side="right") - 1
    return segment_scores[np.maximum(segment, 0)]


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
    """(ROC AUC, average precision) of scores [F] for labels [F] (1, 0, or -1: padding, which
    counts as neither class), sklearn's definitions.

    Both walk the thresholds from the highest score down, one step per distinct score: AUC is the
    trapezoidal area under (FPR, TPR), AP = sum over steps of (recall increase) * precision.
    Padding must score -inf, so that its steps come last and add nothing.
    """
    order = jnp.argsort(-scores)
    ranked = scores[order]
    true_pos = jnp.cumsum((labels[order] == 1).astype(jnp.int32))
    false_pos = jnp.cumsum((labels[order] == 0).astype(jnp.int32))
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


def _check_binary(labels, scores):
    """labels [N] 0/1 and finite scores [N] as arrays, else a ValueError."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"labels {labels.shape} and scores {scores.shape} must be equal 1-D shapes"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return labels.astype(np.int8), scores


def _has_both_classes(labels):
    return 0 < int(np.sum(labels)) < labels.size


def ranking_metrics(labels, scores):
    """Frame-level ROC AUC and average precision (as sklearn computes them).

    Args:
      labels: [F] 0/1; both classes must be present.
      scores: [F] anomaly scores, compared in float32.

    Returns:
      (roc_auc, average_precision) as Python floats.
    """
    labels, scores = _check_binary(labels, scores)
    if not _has_both_classes(labels):
        raise InputError("frame labels contain one class only; AUC and AP need both")
    # Padded to a power of two, so that arrays of many lengths (one per video) share a few
    # compilations.
    size = 1 << (labels.size - 1).bit_length()
    padded_labels = np.full(size, -1, np.int8)
    padded_labels[: labels.size] = labels
    padded_scores = np.full(size, -np.inf, np.float32)
    padded_scores[: labels.size] = scores
    auc, ap = _ranking_metrics(padded_labels, padded_scores)
    return float(auc), float(ap)


def _threshold_counts(labels, scores):
    """(thresholds, true positives, false positives), float64, one entry per distinct score from
    the highest down: the counts of predicting score >= threshold anomalous."""
    labels, scores = _check_binary(labels, scores)
    if not _has_both_classes(labels):
        raise InputError("labels contain one class only; a precision-recall curve needs both")
    scores = scores.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    # Counts at the end of each run of equal scores, from the highest score down.
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    true_pos = np.cumsum(labels[order], dtype=np.float64)[ends]
    return ranked[ends], true_pos, 1.0 + ends - true_pos


def curves(labels, scores) -> dict:
    """The ROC and precision-recall curves of scores [F] for labels [F] (both classes present):
    float64 arrays "fpr", "tpr" (from (0, 0), one point per distinct score, descending), and
    "recall", "precision" (the same points, closed at (0, 1) as sklearn's curve is).
    ``ranking_metrics`` gives their areas."""
    _, true_pos, false_pos = _threshold_counts(labels, scores)
    return {
        "fpr": np.append(0.0, false_pos / false_pos[-1]),
        "tpr": np.append(0.0, true_pos / true_pos[-1]),
        "recall": np.append(0.0, true_pos / true_pos[-1]),
        "precision": np.append(1.0, true_pos / (true_pos + false_pos)),
    }


def max_f1(labels, scores):
    """The best F1 along the precision-recall curve, and its threshold.

    As the original's frame-level evaluator does with sklearn's ``precision_recall_curve``: one
    point per distinct score t (predicting score >= t anomalous), plus the curve's closing point
    (precision 1, recall 0), which has no threshold; F1 = 2 p r / (p + r + 1e-8) at each, the
    first maximum in the curve's order (ascending thresholds) wins, and its threshold is returned
    (0.5 for the closing point, which with both classes present never wins). float64, the same
    operations as sklearn, so that ties fall the same way.

    Args:
      labels: [F] 0/1; both classes must be present.
      scores: [F] anomaly scores.

    Returns:
      (f1, threshold) as Python floats.
    """
    thresholds, true_pos, false_pos = _threshold_counts(labels, scores)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / true_pos[-1]
    # The curve's order: ascending thresholds, then the closing point.
    precision = np.append(precision[::-1], 1.0)
    recall = np.append(recall[::-1], 0.0)
    thresholds = thresholds[::-1]
    f1 = 2 * (precision * recall) / (precision + recall + 1e-8)
    best = int(np.argmax(f1))
    threshold = float(thresholds[best]) if best < thresholds.size else 0.5
    return float(f1[best]), threshold


_AGGREGATORS = {"max": np.max, "mean": np.mean, "p90": lambda s: np.percentile(s, 90)}
# The original video-level evaluator's grid of thresholds for the best F1.
THRESHOLD_GRID = np.linspace(0.1, 0.9, 81)


def aggregate(segment_scores, how="max"):
    """A video's score from its segment scores [S], as a Python float.

    how: "max", "mean" or "p90" (numpy's 90th percentile, linear interpolation: the original's
    "percentile_90").
    """
    if how not in _AGGREGATORS:
        raise ValueError(f"how must be one of {tuple(_AGGREGATORS)}, got {how!r}")
    scores = np.asarray(segment_scores, np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"segment scores must be [S] with S >= 1, got shape {scores.shape}")
    return float(_AGGREGATORS[how](scores))


def _ratio(numerator, denominator):
    """numerator / denominator, 0.0 for 0 / 0 (sklearn's zero_division default)."""
    return numerator / denominator if denominator else 0.0


def binary_metrics(labels, scores, threshold=0.5):
    """sklearn's binary classification metrics of 'score >= threshold' predicting 1.

    Args:
      labels: [N] 0/1, N >= 1.
      scores: [N] scores (e.g. anomaly probabilities).
      threshold: predictions are score >= threshold.

    Returns:
      dict: accuracy, precision, recall, f1 (precision, recall and F1 are 0.0 where their
      denominator is 0, as sklearn's zero_division default gives), roc_auc and average_precision
      (None unless both classes are present), confusion_matrix [[tn, fp], [fn, tp]] (sklearn's
      layout for labels 0 and 1, always 2 x 2), num, num_positive, num_negative, threshold.
    """
    labels, scores = _check_binary(labels, scores)
    if labels.size == 0:
        raise ValueError("no labels and scores to evaluate")
    positive = labels == 1
    predicted = scores >= threshold
    true_pos = int(np.sum(predicted & positive))
    false_pos = int(np.sum(predicted & ~positive))
    false_neg = int(np.sum(~predicted & positive))
    true_neg = labels.size - true_pos - false_pos - false_neg
    auc, ap = ranking_metrics(labels, scores) if _has_both_classes(labels) else (None, None)
    return {
        "accuracy": (true_pos + true_neg) / labels.size,
        "precision": _ratio(true_pos, true_pos + false_pos),
        "recall": _ratio(true_pos, true_pos + false_neg),
        "f1": _ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg),
        "roc_auc": auc,
        "average_precision": ap,
        "confusion_matrix": [[true_neg, false_pos], [false_neg, true_pos]],
        "num": int(labels.size),
        "num_positive": int(positive.sum()),
        "num_negative": int(labels.size - positive.sum()),
        "threshold": float(threshold),
    }


def _f1_per_threshold(labels, scores, thresholds):
    """F1 [T] of 'score >= t' for each threshold t, from one sort of the scores."""
    order = np.argsort(scores, kind="stable")
    positives_below = np.concatenate([[0], np.cumsum(labels[order], dtype=np.int64)])
    below = np.searchsorted(scores[order], thresholds, side="left")  # scores < t
    num_positive = positives_below[-1]
    true_pos = num_positive - positives_below[below]
    false_pos = labels.size - below - true_pos
    false_neg = num_positive - true_pos
    # 2 tp / (2 tp + fp + fn), the float64 division sklearn's f1_score makes.
    denominator = 2 * true_pos + false_pos + false_neg
    return np.where(denominator > 0, 2 * true_pos / np.maximum(denominator, 1), 0.0)


def best_threshold(labels, scores, thresholds=THRESHOLD_GRID, *, default=0.5):
    """The threshold of a grid that maximises F1 of 'score >= threshold' (the original's
    ``find_optimal_threshold``).

    The first threshold reaching the highest F1 wins; as the original starts from F1 0 and keeps
    only a strictly better one, if no threshold reaches F1 > 0 it returns (default, 0.0), default
    being its evaluator's threshold (0.5 unless set).

    Args:
      labels: [N] 0/1.
      scores: [N] scores.
      thresholds: [T] candidate thresholds, in the order they are tried.
      default: the threshold returned when every F1 is 0.

    Returns:
      (threshold, f1) as Python floats.
    """
    labels, scores = _check_binary(labels, scores)
    thresholds = np.asarray(thresholds, np.float64)
    if labels.size == 0:
        raise ValueError("no labels and scores to evaluate")
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError(f"thresholds must be [T] with T >= 1, got shape {thresholds.shape}")
    f1 = _f1_per_threshold(labels, scores.astype(np.float64), thresholds)
    best = int(np.argmax(f1))
    if f1[best] > 0:
        return float(thresholds[best]), float(f1[best])
    return float(default), 0.0


def video_level_metrics(scores, labels, threshold=0.5):
    """Video-level metrics (the original's VideoLevelEvaluator): binary_metrics of the videos'
    scores, in video id order, and the F1-best threshold of THRESHOLD_GRID.

    Args:
      scores: {video: score}, e.g. ``aggregate`` of its segment scores.
      labels: {video: 0/1}; every video of ``scores`` must have one (extra videos are ignored).
      threshold: predictions are score >= threshold.

    Returns:
      dict: binary_metrics' keys, and best_threshold, best_f1 (``best_threshold`` with
      ``default=threshold``), num_videos, num_normal, num_anomaly.
    """
    unlabelled = sorted(v for v in scores if v not in labels)
    if unlabelled:
        raise ValueError(f"no label for {len(unlabelled)} videos: {unlabelled[:5]}")
    if not scores:
        raise ValueError("no videos to evaluate")
    videos = sorted(scores)
    y = np.asarray([labels[v] for v in videos])
    s = np.asarray([scores[v] for v in videos], np.float64)
    metrics = binary_metrics(y, s, threshold)
    best, best_f1 = best_threshold(y, s, default=threshold)
    metrics.update(
        best_threshold=best,
        best_f1=best_f1,
        num_videos=len(videos),
        num_normal=metrics["num_negative"],
        num_anomaly=metrics["num_positive"],
    )
    return metrics


def _video_frames(segment_scores, num_frames, events, sigma, segment_frames, spans):
    """[(video, frame labels [F_v] int8, frame scores [F_v] float32)] in segment_scores' order;
    the arguments are evaluate_frames'."""
    missing = [v for v in segment_scores if v not in num_frames or v not in events]
    if missing:
        raise ValueError(f"no frame count or events for {len(missing)} videos, e.g. {missing[:3]}")
    if spans is not None:
        missing = [v for v in segment_scores if v not in spans]
        if missing:
            raise ValueError(f"no segment spans for {len(missing)} videos, e.g. {missing[:3]}")
    videos = []
    for video, video_scores in segment_scores.items():
        if sigma is not None:
            video_scores = np.asarray(smooth(video_scores, sigma))
        try:
            if spans is None:
                scores = frame_scores(video_scores, num_frames[video], segment_frames)
            else:
                scores = frame_scores_from_spans(video_scores, spans[video], num_frames[video])
        except ValueError as error:
            raise ValueError(f"video {video}: {error}") from None
        videos.append((video, frame_labels(events[video], num_frames[video]), scores))
    return videos


def frame_arrays(
    segment_scores, num_frames, events, sigma=None, segment_frames=SEGMENT_FRAMES, spans=None
):
    """(labels int8 [F], scores float32 [F]): every frame of every video, as ``evaluate_frames``
    scores them (the arguments are its own), e.g. for ``curves``."""
    videos = _video_frames(segment_scores, num_frames, events, sigma, segment_frames, spans)
    return np.concatenate([y for _, y, _ in videos]), np.concatenate([s for _, _, s in videos])


def evaluate_frames(
    segment_scores, num_frames, events, sigma=None, segment_frames=SEGMENT_FRAMES, spans=None
):
    """Frame-level metrics of a dataset, all frames of all videos together.

    Args:
      segment_scores: {video: [S] segment scores}.
      num_frames: {video: frame count}.
      events: {video: [(start, end), ...]} for every video (empty for normal ones); for
        XD-Violence, whose file lists anomalous videos only, pass
        {v: annotations.get(v, []) for v in segment_scores}.
      sigma: if given, each video's segment scores are Gaussian-smoothed first (the original
        evaluator smooths with the locator's sigma).
      segment_frames: frames per segment, when spans are not given.
      spans: {video: [(start, end), ...]}, one int frame range per segment as recorded with the
        features; frames then take their segment by ``frame_scores_from_spans`` (segment_frames
        is not used).

    Returns:
      dict: roc_auc, average_precision; anomalous_roc_auc, anomalous_average_precision (over
      the frames of the videos with an anomalous frame only, None if those frames are all
      anomalous); max_f1, max_f1_threshold (``max_f1``); num_videos, num_frames,
      num_anomaly_frames.
    """
    videos = _video_frames(segment_scores, num_frames, events, sigma, segment_frames, spans)
    labels = np.concatenate([y for _, y, _ in videos])
    scores = np.concatenate([s for _, _, s in videos])
    auc, ap = ranking_metrics(labels, scores)
    f1, f1_threshold = max_f1(labels, scores)
    # The original's subset of anomalous videos: those with at least one anomalous frame.
    anomalous = [(y, s) for _, y, s in videos if y.any()]
    anomalous_auc = anomalous_ap = None
    if anomalous:
        anomalous_labels = np.concatenate([y for y, _ in anomalous])
        if _has_both_classes(anomalous_labels):
            anomalous_auc, anomalous_ap = ranking_metrics(
                anomalous_labels, np.concatenate([s for _, s in anomalous])
            )
    return {
        "roc_auc": auc,
        "average_precision": ap,
        "anomalous_roc_auc": anomalous_auc,
        "anomalous_average_precision": anomalous_ap,
        "max_f1": f1,
        "max_f1_threshold": f1_threshold,
        "num_videos": len(segment_scores),
        "num_frames": int(labels.size),
        "num_anomaly_frames": int(labels.sum()),
    }


def per_video_frame_metrics(
    segment_scores, num_frames, events, sigma=None, spans=None, segment_frames=SEGMENT_FRAMES
):
    """Frame-level figures of each video (the original's ``evaluate_per_video``); the arguments
    are evaluate_frames'.

    The original passes frame scores through a sigmoid first; here they are the (smoothed)
    segment scores themselves, so mean_score and max_score are on the scores' own scale (a
    probability p is reported as p, not 1 / (1 + e^-p)), while AUC and AP, which depend on the
    order of the scores only, are the same.

    Returns:
      [dict] in segment_scores' order: video, num_frames, num_anomaly_frames, mean_score,
      max_score, is_anomaly_video (the video has an annotated event), roc_auc and
      average_precision (None unless the video has both anomalous and normal frames).
    """
    videos = _video_frames(segment_scores, num_frames, events, sigma, segment_frames, spans)
    results = []
    for video, labels, scores in videos:
        auc, ap = ranking_metrics(labels, scores) if _has_both_classes(labels) else (None, None)
        results.append(
            {
                "video": video,
                "num_frames": int(labels.size),
                "num_anomaly_frames": int(labels.sum()),
                # No sigmoid here, unlike the original: its 1 / (1 + e^-s) is monotone (AUC and
                # AP are the same) but maps probabilities into [0.5, 0.73], this keeps them.
                "mean_score": float(np.mean(scores, dtype=np.float64)),
                "max_score": float(scores.max()),
                "is_anomaly_video": len(events[video]) > 0,
                "roc_auc": auc,
                "average_precision": ap,
            }
        )
    return results


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
    """The frame-level ROC and precision-recall curves (``curves``) of the frames that
    ``evaluate`` scores."""
    scores, frames, truth, spans = _frame_inputs(results, events)
    return curves(*frame_arrays(scores, frames, truth, sigma=sigma, spans=spans))


def evaluate(
    results: Sequence[dict],
    events: Events,
    sigma: float | None = None,
    labels: Labels | None = None,
) -> dict:
    """Frame-level metrics over detected videos (``detection.video_result`` records;
    ``evaluate_frames``; each video's frames are mapped to its segments by the spans its result
    records, ``segment_frames``); ``events`` cover the anomalous ones. With ``labels`` ({video
    key: 0/1}), also the video-level metrics of each of ``AGGREGATIONS`` of the smoothed scores
    (``video_level``), and per video its frame-level figures (``per_video``)."""
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
