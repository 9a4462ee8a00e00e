"""Pipeline glue: segment labels from annotations or video labels, heads files, padded scoring."""

import dataclasses
import json

import numpy as np
import pytest

from headhunt_jax import annotations, experts, fitting
from headhunt_jax.detector import Detector, detector_scores
from headhunt_jax.locator import calibrate
from headhunt_jax.scorer import fit_scorer, score
from headhunt_jax.store import FeatureStore, StoreSpec, VideoFeatures
from headhunt_jax.video import VideoMetadata


def video(video_id, label, segments=4):
    meta = VideoMetadata(video_id, 25.0, "stream", 48 * segments, segments, False, 0, 48 * segments)
    starts = np.arange(segments) * 48
    return VideoFeatures(
        video_id,
        np.zeros((segments, 2)),
        starts,
        starts + 48,
        np.zeros((segments, 16), int),
        meta,
        label,
    )


def test_segment_labels():
    events = {"a_label_B1": [(50, 100)]}
    np.testing.assert_array_equal(
        annotations.segment_labels(video("a_label_B1.mp4", 1), events), [0, 1, 1, 0]
    )
    # Not in the annotations (XD-Violence annotates its test videos only): the video's label.
    np.testing.assert_array_equal(
        annotations.segment_labels(video("train_label_B2.mp4", 1), events), [1, 1, 1, 1]
    )
    np.testing.assert_array_equal(
        annotations.segment_labels(video("n_label_A.mp4", 0), events), [0, 0, 0, 0]
    )
    np.testing.assert_array_equal(annotations.segment_labels(video("x.mp4", 1), None), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="no label"):
        annotations.segment_labels(video("x.mp4", None), None)
    # A video neither annotated nor labelled is an error, never silently normal (UCF-Crime's
    # training anomalies are labelled by their class folder only).
    with pytest.raises(ValueError, match="'Abuse001_x264.mp4' has no label"):
        annotations.segment_labels(video("Abuse001_x264.mp4", None), events)
    # Labels from a dataset listing, by video key, stand in for (and override) stored ones.
    listing = {"Abuse001_x264": 1, "a_label_B1": 0}
    np.testing.assert_array_equal(
        annotations.segment_labels(video("Abuse/Abuse001_x264.mp4", None), events, listing), [1] * 4
    )
    np.testing.assert_array_equal(
        annotations.segment_labels(video("a_label_B1.mp4", 1), events, listing), [0, 1, 1, 0]
    )
    # One clip a video ([0, frames)): anomalous when any event falls in it.
    clip = dataclasses.replace(video("a_label_B1.mp4", 1, segments=1), end_frames=np.array([192]))
    np.testing.assert_array_equal(annotations.segment_labels(clip, events), [1])


def test_heads_files(tmp_path):
    (tmp_path / "hunt.json").write_text(json.dumps({"heads": [[1, 2], [0, 3]]}))
    (tmp_path / "published.json").write_text(json.dumps({"expert_heads": [[18, 4], [23, 27]]}))
    (tmp_path / "bad.json").write_text("{}")
    assert experts.load_heads(tmp_path / "hunt.json").tolist() == [[1, 2], [0, 3]]
    assert experts.load_heads(tmp_path / "published.json").tolist() == [[18, 4], [23, 27]]
    with pytest.raises(ValueError, match="bad.json: not a heads file"):
        experts.load_heads(tmp_path / "bad.json")
    # a negative index would silently pick another head; a repeated one counts a head twice
    (tmp_path / "negative.json").write_text(json.dumps({"heads": [[-1, 2], [0, 3]]}))
    with pytest.raises(ValueError, match="negative.json: heads must be non-negative integers"):
        experts.load_heads(tmp_path / "negative.json")
    (tmp_path / "twice.json").write_text(json.dumps({"heads": [[1, 2], [1, 2]]}))
    with pytest.raises(ValueError, match=r"twice.json: heads must be distinct"):
        experts.load_heads(tmp_path / "twice.json")


def test_padded_scoring_equals_direct_scoring():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    detector = Detector(np.array([[0, 0], [0, 1]]), fit_scorer(x, (x[:, 0] > 0).astype(int)))
    for n in (1, 5, 17):
        np.testing.assert_allclose(
            detector_scores(detector, x[:n]),
            np.asarray(score(detector.scorer, x[:n])),
            rtol=1e-6,
        )


def test_clip_subset_is_seeded_and_keeps_both_classes():
    labels = np.r_[np.zeros(900, int), np.ones(100, int)]
    rows = experts.clip_subset(labels, 50)
    assert len(rows) == 50 and labels[rows].sum() == 5
    np.testing.assert_array_equal(rows, experts.clip_subset(labels, 50))
    assert (experts.clip_subset(labels, None) == np.arange(1000)).all()
    rare = np.r_[np.zeros(999, int), 1, 1]
    assert rare[experts.clip_subset(rare, 10)].sum() == 2  # a rare class keeps 2 for saliency


def _store(path, prompt, labels, seed):
    """An all-head store (2 layers x 2 heads x 4) of videos of 8 segments with the given labels;
    an anomalous video's segments 2-5 are shifted."""
    spec = StoreSpec(
        backbone="tiny",
        prompt=prompt,
        dtype="float32",
        image_size=448,
        frames_per_segment=16,
        segment_length=48,
        layers=(0, 1),
        heads=None,
        feature_shape=(2, 2, 4),
    )
    store = FeatureStore.create(path, spec)
    rng = np.random.default_rng(seed)
    for i, label in enumerate(labels):
        v = video(f"v{i}.mp4", label, segments=8)
        x = rng.standard_normal((8, 2, 2, 4)).astype(np.float32)
        if label:
            x[2:6] += 1.5
        store.write(dataclasses.replace(v, features=x))
    return store


def test_fit_calibrates_on_held_out_videos(tmp_path):
    prompt = "Analyze the video for anomalies."
    train = _store(tmp_path / "train", prompt, [0, 1, 0, 1, 0, 1], seed=0)
    held_out = _store(tmp_path / "held_out", prompt, [0, 1, 1, 0], seed=1)
    heads = np.array([[1, 0], [0, 1]])
    in_sample = fitting.fit(train, heads)
    detector = fitting.fit(train, heads, validation=held_out)
    for name in ("w", "b"):  # the same scorer; only (sigma, tau) come from the held-out videos
        np.testing.assert_array_equal(detector.scorer.params[name], in_sample.scorer.params[name])
    videos = list(held_out)
    scores = [
        np.asarray(score(detector.scorer, v.features[:, [1, 0], [0, 1]].reshape(8, -1)))
        for v in videos
    ]
    labels = [np.full(8, v.label) for v in videos]  # no annotations: the video's label
    assert (detector.sigma, detector.tau) == calibrate(scores, labels)
    assert (detector.sigma, detector.tau) != (in_sample.sigma, in_sample.tau)

    other = _store(tmp_path / "other", "Another prompt.", [0, 1], seed=2)
    with pytest.raises(ValueError, match="other: prompt 'Another prompt.', the training store"):
        fitting.fit(train, heads, validation=other)


def test_holdout_split_is_stratified_by_video_and_seeded():
    labels = np.r_[np.zeros(10, int), np.ones(5, int)]
    train, held = fitting.holdout_split(labels, 0.4, seed=1)
    assert sorted(np.r_[train, held].tolist()) == list(range(15))
    assert labels[held].tolist().count(0) == 4 and labels[held].tolist().count(1) == 2
    again = fitting.holdout_split(labels, 0.4, seed=1)
    assert np.array_equal(again[1], held)
    with pytest.raises(ValueError, match="at least 2 of each class; 1 are anomalous"):
        fitting.holdout_split([0, 0, 1], 0.4)


def test_fit_with_holdout_reports_on_held_out_videos(tmp_path):
    train = _store(tmp_path / "train", "p", [0, 1] * 5, seed=0)
    heads = np.array([[1, 0], [0, 1]])
    detector = fitting.fit(train, heads, holdout=0.4, seed=0)
    held = detector.training["holdout"]
    assert held["videos"] == 4 and held["num"] == 32
    assert (
        detector.training["videos"] == 6 and detector.training["calibrated_on"] == "held-out videos"
    )
    # The figures are those of the saved scorer on the held-out videos' rows.
    _, rows = fitting.holdout_split([0, 1] * 5, 0.4, seed=0)
    videos = list(train)
    x = np.concatenate([videos[i].features[:, [1, 0], [0, 1]].reshape(8, -1) for i in rows])
    y = np.concatenate([np.full(8, videos[i].label) for i in rows])
    p = np.asarray(score(detector.scorer, x))
    assert held["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y))
    detector.save(tmp_path / "detector")
    assert Detector.load(tmp_path / "detector").training == detector.training


def test_fit_on_one_clip_a_video_keeps_the_locator_defaults(tmp_path):
    spec = dataclasses.replace(_store(tmp_path / "seg", "p", [0, 1], seed=0).spec, clip="video")
    store = FeatureStore.create(tmp_path / "clips", spec)
    rng = np.random.default_rng(0)
    for i, label in enumerate([0, 1] * 4):
        x = rng.standard_normal((1, 2, 2, 4)).astype(np.float32) + label
        store.write(dataclasses.replace(video(f"v{i}.mp4", label, segments=1), features=x))
    heads = np.array([[1, 0], [0, 1]])
    detector = fitting.fit(store, heads)
    assert (detector.sigma, detector.tau) == (1.5, 0.65)
    assert detector.training["calibrated_on"].startswith("defaults")
    with pytest.raises(ValueError, match="holds one clip a video"):
        fitting.fit(store, heads, validation=store)
    # Segments of other videos calibrate a scorer trained on whole-video clips.
    segments = _store(tmp_path / "val", "p", [0, 1, 1, 0], seed=1)
    assert (
        fitting.fit(store, heads, validation=segments)
        .training["calibrated_on"]
        .startswith("validation store")
    )
