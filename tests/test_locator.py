"""Temporal locator against numpy/sklearn references written the original's way."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

import headhunt_jax as hh


def reference_kernel(sigma, length):
    size = min(int(6 * sigma) + 1, length)
    if size % 2 == 0:
        size += 1
    size = max(3, size)
    x = np.linspace(-(size // 2), size // 2, size)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def reference_smooth(scores, sigma):
    if len(scores) <= 1:
        return scores.copy()
    return np.convolve(scores, reference_kernel(sigma, len(scores)), mode="same")


def reference_events(scores, threshold):
    events, start = [], None
    for i, value in enumerate(scores > threshold):
        if value and start is None:
            start = i
        elif not value and start is not None:
            events.append((start, i))
            start = None
    if start is not None:
        events.append((start, len(scores)))
    return events


def reference_calibrate(val_scores, val_labels):
    best, best_f1 = (1.5, 0.65), 0.0
    labels = np.concatenate(val_labels)
    for sigma in np.linspace(0.5, 3.0, 11):
        smoothed = [reference_smooth(s, sigma) for s in val_scores]
        for tau in np.linspace(0.1, 0.9, 81):
            predictions = np.concatenate([(s > tau).astype(int) for s in smoothed])
            f1 = f1_score(labels, predictions, zero_division=0)
            if f1 > best_f1:
                best, best_f1 = (sigma, tau), f1
    return best, best_f1


def validation_videos(seed, count=6):
    """Noisy segment scores of videos with anomalous runs; every video is at least as long as
    the widest kernel (19), where the original's smoothing keeps the length."""
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for _ in range(count):
        length = int(rng.integers(19, 60))
        y = np.zeros(length, int)
        start = int(rng.integers(0, length - 5))
        y[start : start + int(rng.integers(3, 15))] = 1
        scores.append(np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, length), 0, 1))
        labels.append(y)
    return scores, labels


# Lengths where the original keeps T values (odd, or longer than the kernel).
@pytest.mark.parametrize("length", [3, 5, 11, 37])
@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
def test_smooth_matches_numpy_convolve(length, sigma):
    scores = np.random.default_rng(length).random(length)
    np.testing.assert_allclose(
        hh.smooth(scores, sigma), reference_smooth(scores, sigma), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(("length", "sigma"), [(2, 1.0), (4, 1.5), (6, 3.0)])
def test_smooth_keeps_the_length_of_short_sequences(length, sigma):
    # The original returns max(T, kernel size) values here; the fix keeps T, centred like 'same'.
    scores = np.random.default_rng(0).random(length)
    kernel = reference_kernel(sigma, length)
    assert len(reference_smooth(scores, sigma)) == len(kernel) > length
    full = np.convolve(scores, kernel, mode="full")
    centre = (len(kernel) - 1) // 2
    smoothed = hh.smooth(scores, sigma)
    assert smoothed.shape == (length,)
    np.testing.assert_allclose(smoothed, full[centre : centre + length], atol=1e-6)


def test_smooth_leaves_zero_or_one_segment_alone():
    np.testing.assert_array_equal(hh.smooth(np.array([0.7]), 1.5), [np.float32(0.7)])
    assert hh.smooth(np.array([]), 1.5).shape == (0,)


@pytest.mark.parametrize("sigma", [None, 0.5, 1.5])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.65])
def test_localize_gives_the_reference_events(sigma, threshold):
    scores = np.random.default_rng(1).random(50)
    smoothed = scores if sigma is None else reference_smooth(scores, sigma)
    assert hh.localize(scores, sigma, threshold) == reference_events(smoothed, threshold)


def test_localize_events_touching_the_ends():
    scores = np.array([0.9, 0.9, 0.1, 0.9])
    assert hh.localize(scores, None, 0.5) == [(0, 2), (3, 4)]
    assert hh.localize(np.zeros(5), 1.5, 0.5) == []


def test_calibrate_matches_the_grid_search():
    scores, labels = validation_videos(2)
    (sigma, tau), best_f1 = reference_calibrate(scores, labels)
    assert best_f1 > 0.5
    assert hh.calibrate(scores, labels) == (sigma, tau)


def test_calibrate_breaks_ties_by_the_first_sigma_then_tau():
    # Clean step scores: many (sigma, tau) reach F1 = 1; the first in sigma-major order wins.
    labels = [np.r_[np.zeros(20), np.ones(20), np.zeros(20)].astype(int)] * 2
    scores = [y.astype(float) for y in labels]
    (sigma, tau), best_f1 = reference_calibrate(scores, labels)
    assert best_f1 == 1.0 and sigma == 0.5
    assert hh.calibrate(scores, labels) == (sigma, tau)


def test_calibrate_without_positive_f1_returns_the_defaults():
    scores, labels = validation_videos(3)
    assert hh.calibrate(scores, [np.zeros_like(y) for y in labels]) == (1.5, 0.65)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="finite"):  # on the host; smooth is traceable
        hh.localize(np.array([0.1, np.nan, 0.2]), 1.5)
    with pytest.raises(ValueError, match="1-D"):
        hh.smooth(np.zeros((2, 3)), 1.5)
    with pytest.raises(ValueError, match="sigma must be positive"):
        hh.smooth(np.zeros(4), 0.0)
    with pytest.raises(ValueError, match="2 score sequences but 1"):
        hh.calibrate([np.zeros(3), np.zeros(3)], [np.zeros(3)])
    with pytest.raises(ValueError, match=r"val_labels\[0\] has shape"):
        hh.calibrate([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError, match="0/1"):
        hh.calibrate([np.zeros(3)], [np.full(3, 2)])
    with pytest.raises(ValueError, match="at least one"):
        hh.calibrate([], [])
