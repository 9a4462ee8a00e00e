"""Frame- and video-level evaluation against sklearn, and the annotation parsers."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from headhunt_jax.annotations import (
    AnnotationError,
    parse_ucf_crime_annotations,
    parse_xd_violence_annotations,
    video_key,
    xd_violence_label,
)
from headhunt_jax.evaluation import (
    aggregate,
    best_threshold,
    binary_metrics,
    evaluate_frames,
    frame_labels,
    frame_scores,
    frame_scores_from_spans,
    max_f1,
    per_video_frame_metrics,
    ranking_metrics,
    video_level_metrics,
)


def test_frame_scores_give_the_tail_to_the_last_segment():
    scores = frame_scores([0.1, 0.5, 0.9], 48 * 3 + 20)
    np.testing.assert_array_equal(scores[:48], np.float32(0.1))
    np.testing.assert_array_equal(scores[48:96], np.float32(0.5))
    np.testing.assert_array_equal(scores[96:], np.float32(0.9))
    assert scores.shape == (164,)
    # A video shorter than one segment is one segment.
    np.testing.assert_array_equal(frame_scores([0.3], 30), np.full(30, np.float32(0.3)))
    # A trailing partial segment with its own score is also accepted.
    assert frame_scores([0.1, 0.2], 60)[59] == np.float32(0.2)


@pytest.mark.parametrize(("count", "frames"), [(2, 48 * 3), (4, 48 * 3 - 1), (0, 10)])
def test_frame_scores_reject_a_segment_count_that_does_not_fit(count, frames):
    with pytest.raises(ValueError, match="segments of 48 frames"):
        frame_scores(np.zeros(count), frames)


def test_frame_labels_are_end_exclusive_and_clipped():
    labels = frame_labels([(2, 5), (8, 20), (30, 40)], 10)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1, 0, 0, 0, 1, 1])
    # The original clips the start to the last frame: an event from beyond the end marks it.
    np.testing.assert_array_equal(frame_labels([(12, 15)], 10), np.eye(10)[9])


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_ranking_metrics_match_sklearn(decimals):
    rng = np.random.default_rng(0)
    labels = (rng.random(5000) < 0.2).astype(int)
    scores = rng.random(5000) + 0.4 * labels
    if decimals is not None:  # many ties
        scores = np.round(scores, decimals)
    auc, ap = ranking_metrics(labels, scores)
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert ap == pytest.approx(average_precision_score(labels, scores), abs=1e-6)


def test_ranking_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="one class"):
        ranking_metrics(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        ranking_metrics(np.array([0, 1]), np.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        ranking_metrics(np.array([0, 1]), np.array([0.5, np.nan]))


def reference_frames(segment_scores, num_frames, events):
    scores = np.zeros(num_frames)
    for f in range(num_frames):
        scores[f] = segment_scores[min(f // 48, len(segment_scores) - 1)]
    labels = np.zeros(num_frames, int)
    for start, end in events:
        labels[min(start, num_frames - 1) : min(end, num_frames)] = 1
    return labels, scores


@pytest.mark.parametrize("sigma", [None, 1.5])
def test_evaluate_frames_matches_a_frame_by_frame_reference(sigma):
    rng = np.random.default_rng(1)
    segments, frames, events = {}, {}, {}
    for v in range(6):
        frames[f"v{v}"] = int(rng.integers(40, 700))
        count = max(1, frames[f"v{v}"] // 48)
        events[f"v{v}"] = (
            [(int(rng.integers(0, 300)), int(rng.integers(300, 800)))] if v % 2 else []
        )
        segments[f"v{v}"] = rng.random(count)
    labels, scores = [], []
    for v in segments:
        s = segments[v]
        if sigma is not None and len(s) > 1:
            size = min(int(6 * sigma) + 1, len(s))
            size = max(3, size + (size % 2 == 0))
            x = np.linspace(-(size // 2), size // 2, size)
            kernel = np.exp(-(x**2) / (2 * sigma**2))
            s = np.convolve(s, kernel / kernel.sum(), mode="full")[(size - 1) // 2 :][: len(s)]
        y, f = reference_frames(s, frames[v], events[v])
        labels.append(y)
        scores.append(f)
    labels, scores = np.concatenate(labels), np.concatenate(scores)
    out = evaluate_frames(segments, frames, events, sigma=sigma)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert out["average_precision"] == pytest.approx(
        average_precision_score(labels, scores), abs=1e-6
    )
    assert out["num_frames"] == labels.size and out["num_anomaly_frames"] == labels.sum()
    with pytest.raises(ValueError, match="no frame count or events"):
        evaluate_frames(segments, frames, {})


def test_parse_ucf_crime(tmp_path):
    path = tmp_path / "Temporal_Anomaly_Annotation.txt"
    path.write_text(
        "Arrest039_x264.mp4  Arrest  7215  10335  -1  -1\n"
        "\n"
        "Arson011_x264.mp4  Arson  150  420  680  1267\n"
        "Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1\n"
    )
    assert parse_ucf_crime_annotations(path) == {
        "Arrest039_x264": [(7215, 10335)],
        "Arson011_x264": [(150, 420), (680, 1267)],
        "Normal_Videos_003_x264": [],
    }


def test_parse_xd_violence(tmp_path):
    path = tmp_path / "annotations.txt"
    path.write_text(
        "A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_B2-0-0 365 885\n"
        "v=wVey5JD2f4A__#1_label_B1-0-0 0 95 240 460 600 700\n"
    )
    assert parse_xd_violence_annotations(path) == {
        "A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_B2-0-0": [(365, 885)],
        "v=wVey5JD2f4A__#1_label_B1-0-0": [(0, 95), (240, 460), (600, 700)],
    }


@pytest.mark.parametrize(
    ("parser", "line", "reason"),
    [
        (parse_ucf_crime_annotations, "Arrest039_x264.mp4 Arrest 7215", "expected"),
        (parse_ucf_crime_annotations, "Arrest039_x264.mp4 Arrest 7215 x -1 -1", "integers"),
        (parse_ucf_crime_annotations, "Arrest039_x264.mp4 Arrest 7215 10335 -1", "pairs"),
        (parse_ucf_crime_annotations, "Arrest039_x264.mp4 Arrest 7215 -1", "negative"),
        (parse_ucf_crime_annotations, "Arrest039_x264.mp4 Arrest 900 100", "ends before"),
        (parse_xd_violence_annotations, "v=abc_label_B1-0-0 365", "expected"),
        (parse_xd_violence_annotations, "v=abc_label_B1-0-0 365 885 900", "pairs"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(tmp_path, parser, line, reason):
    path = tmp_path / "annotations.txt"
    good = "Good_x264.mp4 Arrest 1 2" if parser is parse_ucf_crime_annotations else "good 1 2"
    path.write_text(f"{good}\n{line}\n")
    with pytest.raises(AnnotationError, match=rf"annotations.txt:2: .*{reason}"):
        parser(path)


def test_a_video_annotated_twice_is_an_error(tmp_path):
    path = tmp_path / "annotations.txt"
    path.write_text("v_label_B1-0-0 1 2\nv_label_B1-0-0 5 9\n")
    with pytest.raises(AnnotationError, match="annotations.txt:2: .*twice"):
        parse_xd_violence_annotations(path)


def test_xd_violence_labels_and_video_keys():
    assert xd_violence_label("v=abc__#1_label_A.mp4") == 0
    assert xd_violence_label("/data/A.Beautiful.Mind.2001__#00-25-20_label_B2-0-0.mp4") == 1
    assert xd_violence_label("Bad.Boys.II.2003__#02-05-30_label_G-B2-0") == 1
    with pytest.raises(ValueError, match="no XD-Violence label"):
        xd_violence_label("Arrest039_x264.mp4")
    assert video_key("videos/A.Beautiful.Mind.2001__#00-25-20_label_A.mp4") == (
        "A.Beautiful.Mind.2001__#00-25-20_label_A"
    )
    assert video_key("A.Beautiful.Mind.2001__#00-25-20_label_A") == (
        "A.Beautiful.Mind.2001__#00-25-20_label_A"
    )


def sklearn_quietly(metric, *args, **kwargs):
    """An sklearn metric with its zero-division / one-class warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(*args, **kwargs)


def sklearn_max_f1(labels, scores):
    """The original's frame-level max F1: sklearn's PR curve, F1 with 1e-8, the first argmax."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * (precision * recall) / (precision + recall + 1e-8)
    best = int(np.argmax(f1))
    return f1[best], thresholds[best] if best < len(thresholds) else 0.5


def original_best_threshold(labels, scores, default=0.5):
    """The original's find_optimal_threshold loop, with sklearn's f1_score."""
    best, best_f1 = default, 0.0
    for threshold in np.linspace(0.1, 0.9, 81):
        f1 = sklearn_quietly(f1_score, labels, (scores >= threshold).astype(int))
        if f1 > best_f1:
            best, best_f1 = threshold, f1
    return best, best_f1


def test_aggregate_is_max_mean_or_linear_90th_percentile():
    scores = [0.2, 0.9, 0.4, 0.1, 0.7]
    assert aggregate(scores) == 0.9
    assert aggregate(scores, "mean") == pytest.approx(np.mean(scores), abs=1e-15)
    assert aggregate(scores, "p90") == pytest.approx(np.percentile(scores, 90), abs=1e-15)
    assert aggregate([0.3], "p90") == 0.3
    with pytest.raises(ValueError, match=r"'max', 'mean', 'p90'.*'percentile_90'"):
        aggregate(scores, "percentile_90")
    with pytest.raises(ValueError, match="S >= 1"):
        aggregate([], "mean")


def binary_cases():
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.3).astype(int)
    tied = np.round(rng.random(300) * 0.6 + 0.3 * labels, 1)  # many ties, some at the threshold
    return {
        "ties": (labels, tied, 0.5),
        "ties, threshold on a tie": (labels, tied, 0.6),
        "all normal": (np.zeros(20, int), rng.random(20), 0.5),
        "all anomalous": (np.ones(20, int), rng.random(20), 0.5),
        "all wrong": (np.array([1, 1, 0, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9, 0.6]), 0.5),
        "nothing predicted": (labels, tied, 2.0),
        "nothing predicted, no positives": (np.zeros(6, int), np.zeros(6), 0.5),
        "everything predicted": (labels, tied, -1.0),
    }


@pytest.mark.parametrize("case", list(binary_cases()))
def test_binary_metrics_match_sklearn(case):
    labels, scores, threshold = binary_cases()[case]
    out = binary_metrics(labels, scores, threshold)
    predicted = (scores >= threshold).astype(int)
    assert out["accuracy"] == accuracy_score(labels, predicted)
    for name, metric in (("precision", precision_score), ("recall", recall_score)):
        assert out[name] == sklearn_quietly(metric, labels, predicted), name
    assert out["f1"] == sklearn_quietly(f1_score, labels, predicted)
    matrix = confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    assert out["confusion_matrix"] == matrix
    assert all(type(v) is int for row in out["confusion_matrix"] for v in row)
    if len(np.unique(labels)) == 2:
        assert out["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
        ap = average_precision_score(labels, scores)
        assert out["average_precision"] == pytest.approx(ap, abs=1e-6)
    else:
        assert out["roc_auc"] is None and out["average_precision"] is None
    assert (out["num"], out["num_positive"], out["num_negative"]) == (
        len(labels),
        int(labels.sum()),
        int((labels == 0).sum()),
    )
    assert out["threshold"] == threshold


def test_binary_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="NaN or inf"):
        binary_metrics([0, 1], [0.5, np.nan])
    with pytest.raises(ValueError, match="no labels"):
        binary_metrics([], [])


@pytest.mark.parametrize("case", list(binary_cases()))
def test_best_threshold_matches_the_original_loop(case):
    labels, scores, _ = binary_cases()[case]
    assert best_threshold(labels, scores) == original_best_threshold(labels, scores)


def test_best_threshold_without_a_positive_f1_returns_the_default():
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.05, 0.01, 0.02, 0.03])  # below every threshold of the grid
    assert best_threshold(labels, scores) == (0.5, 0.0)
    assert best_threshold(labels, scores, default=0.7) == (0.7, 0.0)
    assert original_best_threshold(labels, scores, default=0.7) == (0.7, 0.0)
    # The first of equal maxima wins; a grid of one's own.
    assert best_threshold([0, 1], [0.2, 0.6], thresholds=[0.7, 0.5, 0.3]) == (0.5, 1.0)


def test_video_level_metrics_sort_by_video_and_add_the_best_threshold():
    rng = np.random.default_rng(4)
    ids = [f"v{i:02d}" for i in rng.permutation(30)]
    labels = {v: int(rng.random() < 0.4) for v in ids}
    scores = {v: float(np.round(0.3 * labels[v] + 0.7 * rng.random(), 2)) for v in ids}
    labels["unscored"] = 1  # labels may cover more videos than were scored
    out = video_level_metrics(scores, labels, threshold=0.55)
    order = sorted(scores)
    y = np.array([labels[v] for v in order])
    s = np.array([scores[v] for v in order])
    expected = binary_metrics(y, s, 0.55)
    assert {k: out[k] for k in expected} == expected
    assert (out["best_threshold"], out["best_f1"]) == original_best_threshold(y, s, 0.55)
    assert out["num_videos"] == 30
    assert (out["num_normal"], out["num_anomaly"]) == (int((y == 0).sum()), int(y.sum()))
    with pytest.raises(ValueError, match="no label for 1 videos: \\['lost'\\]"):
        video_level_metrics({**scores, "lost": 0.5}, labels)
    with pytest.raises(ValueError, match="no videos"):
        video_level_metrics({}, labels)


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_max_f1_matches_sklearn_precision_recall_curve(decimals):
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(2, 2000))
        labels = (rng.random(n) < rng.uniform(0.05, 0.9)).astype(int)
        labels[:2] = [0, 1]
        scores = rng.random(n) + rng.uniform(0, 0.5) * labels
        if decimals is not None:  # ties, within and across the classes
            scores = np.round(scores, decimals)
        f1, threshold = max_f1(labels, scores)
        expected_f1, expected_threshold = sklearn_max_f1(labels, scores)
        assert f1 == pytest.approx(expected_f1, abs=1e-12), trial
        assert threshold == expected_threshold, trial
    # float32 scores keep their float32 thresholds.
    scores32 = np.float32([0.1, 0.7, 0.3])
    assert max_f1([0, 1, 0], scores32) == (pytest.approx(1.0, abs=1e-7), float(scores32[1]))
    with pytest.raises(ValueError, match="one class"):
        max_f1([1, 1], [0.2, 0.3])


def reference_frames_from_spans(segment_scores, spans, num_frames, events):
    """Frame by frame: the last segment starting at or before the frame, else the first."""
    scores = np.zeros(num_frames)
    for f in range(num_frames):
        started = [s for s, (start, _) in enumerate(spans) if start <= f]
        scores[f] = segment_scores[started[-1] if started else 0]
    labels = np.zeros(num_frames, int)
    for start, end in events:
        labels[min(start, num_frames - 1) : min(end, num_frames)] = 1
    return labels, scores


def test_frame_scores_from_spans_follow_the_starts():
    # 30-frame segments and a 10-frame tail: the tail takes the last segment.
    spans = [(0, 30), (30, 60), (60, 90)]
    scores = frame_scores_from_spans([0.1, 0.5, 0.9], spans, 100)
    np.testing.assert_array_equal(scores, np.float32([0.1] * 30 + [0.5] * 30 + [0.9] * 40))
    # One clip for the whole video.
    np.testing.assert_array_equal(frame_scores_from_spans([0.4], [(0, 77)], 77), np.float32(0.4))
    # Frames before the first start take the first segment; overlaps hand over at the next
    # start, gaps keep the previous segment.
    spans = [(5, 20), (12, 30), (40, 50)]
    expected = reference_frames_from_spans([0.1, 0.2, 0.3], spans, 60, [])[1]
    np.testing.assert_array_equal(
        frame_scores_from_spans([0.1, 0.2, 0.3], spans, 60), expected.astype(np.float32)
    )
    # The 48-frame spans the features record are frame_scores' constant segments.
    for frames in (48 * 3, 48 * 3 + 20, 30):
        count = max(1, frames // 48)
        spans = [(48 * s, min(48 * s + 48, frames)) for s in range(count)]
        values = np.arange(1, count + 1) / 10
        np.testing.assert_array_equal(
            frame_scores_from_spans(values, spans, frames), frame_scores(values, frames)
        )


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ([(0, 30)], "2 segment scores need as many"),
        ([(0, 30), (30, 30)], "start < end"),
        ([(30, 60), (0, 30)], "ascending"),
        ([(0, 30), (0, 40)], "ascending"),
        ([(-5, 30), (30, 60)], "0 <= start"),
        ([(0.0, 30.0), (30.0, 60.0)], "integer"),
    ],
)
def test_bad_spans_are_refused_naming_the_video(spans, message):
    with pytest.raises(ValueError, match=message):
        frame_scores_from_spans([0.1, 0.2], spans, 60)
    with pytest.raises(ValueError, match=f"video clip7: .*{message}"):
        evaluate_frames({"clip7": [0.1, 0.2]}, {"clip7": 60}, {"clip7": []}, spans={"clip7": spans})


def random_dataset(rng, segment_frames=30, one_clip=True):
    """Videos of segment_frames-frame segments and a shorter tail, a third of them with an
    event; with one_clip, the last video is one clip of all its frames."""
    scores, frames, events, spans = {}, {}, {}, {}
    for v in range(8):
        name = f"v{v}"
        frames[name] = int(rng.integers(20, 400))
        count = max(1, frames[name] // segment_frames)
        spans[name] = [
            (segment_frames * s, min(segment_frames * (s + 1), frames[name])) for s in range(count)
        ]
        if one_clip and v == 7:
            spans[name] = [(0, frames[name])]
        scores[name] = np.round(rng.random(len(spans[name])), 2)
        events[name] = []
        if v % 3 == 1:
            start = int(rng.integers(0, frames[name] - 5))
            events[name] = [(start, start + int(rng.integers(5, 200)))]
    return scores, frames, events, spans


def test_evaluate_frames_with_30_frame_spans_matches_a_frame_by_frame_reference():
    scores, frames, events, spans = random_dataset(np.random.default_rng(6))
    per_video = {
        v: reference_frames_from_spans(scores[v], spans[v], frames[v], events[v]) for v in scores
    }
    labels = np.concatenate([y for y, _ in per_video.values()])
    values = np.concatenate([s for _, s in per_video.values()])
    out = evaluate_frames(scores, frames, events, spans=spans)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(labels, values), abs=1e-6)
    assert out["average_precision"] == pytest.approx(
        average_precision_score(labels, values), abs=1e-6
    )
    expected_f1, expected_threshold = sklearn_max_f1(labels, values.astype(np.float32))
    assert out["max_f1"] == pytest.approx(expected_f1, abs=1e-12)
    assert out["max_f1_threshold"] == expected_threshold
    anomalous = [v for v, (y, _) in per_video.items() if y.any()]
    assert anomalous and len(anomalous) < len(scores)
    y_a = np.concatenate([per_video[v][0] for v in anomalous])
    s_a = np.concatenate([per_video[v][1] for v in anomalous])
    assert out["anomalous_roc_auc"] == pytest.approx(roc_auc_score(y_a, s_a), abs=1e-6)
    assert out["anomalous_average_precision"] == pytest.approx(
        average_precision_score(y_a, s_a), abs=1e-6
    )
    assert out["num_videos"] == 8
    assert (out["num_frames"], out["num_anomaly_frames"]) == (labels.size, labels.sum())


@pytest.mark.parametrize("sigma", [None, 1.5])
def test_spans_of_48_frame_segments_give_todays_results(sigma):
    rng = np.random.default_rng(7)
    scores, frames, events, spans = random_dataset(rng, segment_frames=48, one_clip=False)
    # A video shorter than one segment, and one of whole segments only.
    for name, count, length in (("short", 1, 30), ("whole", 2, 96)):
        scores[name], frames[name], events[name] = rng.random(count), length, [(40, 60)]
        spans[name] = [(48 * s, min(48 * s + 48, length)) for s in range(count)]
    out = evaluate_frames(scores, frames, events, sigma=sigma, spans=spans)
    assert out == evaluate_frames(scores, frames, events, sigma=sigma)
    assert per_video_frame_metrics(
        scores, frames, events, sigma=sigma, spans=spans
    ) == per_video_frame_metrics(scores, frames, events, sigma=sigma)


def test_the_anomalous_subset_needs_both_classes():
    scores = {"a": [0.9, 0.8], "n": [0.1, 0.3]}
    frames = {"a": 96, "n": 96}
    events = {"a": [(0, 96)], "n": []}  # the anomalous video is anomalous throughout
    out = evaluate_frames(scores, frames, events)
    assert out["anomalous_roc_auc"] is None and out["anomalous_average_precision"] is None
    assert out["roc_auc"] == 1.0 and out["max_f1"] == pytest.approx(1.0, abs=1e-7)
    with pytest.raises(ValueError, match="no segment spans for 1 videos"):
        evaluate_frames(scores, frames, events, spans={"a": [(0, 48), (48, 96)]})


def test_per_video_frame_metrics_match_sklearn_video_by_video():
    scores, frames, events, spans = random_dataset(np.random.default_rng(8))
    out = per_video_frame_metrics(scores, frames, events, spans=spans)
    assert [r["video"] for r in out] == list(scores)
    for result in out:
        video = result["video"]
        labels, values = reference_frames_from_spans(
            scores[video], spans[video], frames[video], events[video]
        )
        assert result["num_frames"] == frames[video]
        assert result["num_anomaly_frames"] == labels.sum()
        # No sigmoid: the frame scores are the segment scores themselves.
        assert result["mean_score"] == pytest.approx(values.mean(), abs=1e-6)
        assert result["max_score"] == pytest.approx(values.max(), abs=1e-7)
        assert result["is_anomaly_video"] == bool(events[video])
        if 0 < labels.sum() < labels.size:
            assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, values), abs=1e-6)
            ap = average_precision_score(labels, values)
            assert result["average_precision"] == pytest.approx(ap, abs=1e-6)
        else:
            assert result["roc_auc"] is None and result["average_precision"] is None
    assert any(r["roc_auc"] is not None for r in out)
    assert any(r["roc_auc"] is None and r["is_anomaly_video"] is False for r in out)
