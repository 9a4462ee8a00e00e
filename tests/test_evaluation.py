"""Frame-level evaluation against sklearn, and the annotation parsers."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from headhunt_jax.evaluation import (
    AnnotationError,
    evaluate_frames,
    frame_labels,
    frame_scores,
    parse_ucf_crime_annotations,
    parse_xd_violence_annotations,
    ranking_metrics,
    video_key,
    xd_violence_label,
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
