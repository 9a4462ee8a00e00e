"""Detector bundle: expert features, scoring, one orbax checkpoint, published heads."""

import numpy as np
import pytest

import headhunt_jax as hh
from headhunt_jax.detector import Detector, detector_scores, published_experts
from headhunt_jax.features import gather_heads
from headhunt_jax.scorer import Scorer

L, H, D = 4, 3, 8
HEADS = np.array([[2, 1], [0, 2], [3, 0]])


def head_features(n, seed):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(int)
    features = rng.normal(size=(n, L, H, D)).astype(np.float32)
    features[labels == 1, 2, 1] += 1.0
    return features, labels


def trained_detector():
    features, labels = head_features(60, seed=0)
    experts = np.concatenate([features[:, layer, head] for layer, head in HEADS], axis=1)
    scorer = hh.fit_scorer(experts, labels)
    return Detector(HEADS, scorer, sigma=1.0, tau=0.6, backbone="tiny", prompt="Anything odd?")


def scores(detector, features):
    experts = gather_heads(features, detector.expert_heads)
    return detector_scores(detector, experts.reshape(len(features), -1))


def test_gather_heads_keeps_their_order():
    features, _ = head_features(5, seed=1)
    expected = np.stack([features[:, layer, head] for layer, head in HEADS], axis=1)
    np.testing.assert_array_equal(gather_heads(features, HEADS), expected)
    # Features of some layers only (an expert-head extraction computes those).
    layers = (0, 2, 3)
    np.testing.assert_array_equal(gather_heads(features[:, layers], HEADS, layers), expected)
    with pytest.raises(ValueError, match=r"not all in features of layers \[0, 2\]"):
        gather_heads(features[:, [0, 2]], HEADS, (0, 2))


def test_segment_scores_and_events():
    detector = trained_detector()
    features, _ = head_features(12, seed=2)
    experts = gather_heads(features, HEADS).reshape(12, -1)
    np.testing.assert_allclose(
        scores(detector, features), hh.score(detector.scorer, experts), rtol=1e-6
    )


def test_save_and_load_round_trip(tmp_path):
    detector = trained_detector()
    detector.save(tmp_path / "detector")
    loaded = Detector.load(tmp_path / "detector")
    np.testing.assert_array_equal(loaded.expert_heads, HEADS)
    assert (loaded.sigma, loaded.tau, loaded.backbone, loaded.prompt) == (
        1.0,
        0.6,
        "tiny",
        "Anything odd?",
    )
    assert loaded.scorer.kind == "logistic"
    features, _ = head_features(7, seed=3)
    np.testing.assert_array_equal(scores(loaded, features), scores(detector, features))
    with pytest.raises(ValueError, match="exists"):
        detector.save(tmp_path / "detector")
    with pytest.raises(FileNotFoundError):
        Detector.load(tmp_path / "nothing")


def test_published_heads_are_the_original_releases():
    expected = [[18, 4], [18, 13], [20, 4], [23, 24], [23, 27]]
    assert published_experts()["expert_heads"] == expected
    scorer = Scorer("logistic", {"w": np.zeros(5 * 128, np.float32), "b": np.float32(0)})
    detector = Detector.from_published(scorer)
    np.testing.assert_array_equal(detector.expert_heads, expected)
    assert detector.backbone == "OpenGVLab/InternVL3-8B"
    assert (detector.sigma, detector.tau) == (1.5, 0.65)
    with pytest.raises(FileNotFoundError, match="xd_violence_internvl3_8b"):
        published_experts("ucf_crime_unknown")


def test_bad_bundles_are_rejected():
    scorer = trained_detector().scorer
    with pytest.raises(ValueError, match=r"\[K, 2\]"):
        Detector(np.array([1, 2, 3]), scorer)
    with pytest.raises(ValueError, match="non-negative integers"):
        Detector(np.array([[0, -1], [1, 1], [2, 2]]), scorer)
    with pytest.raises(ValueError, match="not a multiple of 5"):
        Detector(np.arange(10).reshape(5, 2), scorer)
    with pytest.raises(ValueError, match="sigma"):
        Detector(HEADS, scorer, sigma=0.0)
    detector = Detector(HEADS, scorer)
    with pytest.raises(ValueError, match="F = 24, the features the scorer was trained on"):
        scores(detector, np.zeros((2, L, H, D + 1), np.float32))
