"""Scorer against sklearn: LogisticRegression(liblinear) and LinearSVC; save/load with orbax."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

import headhunt_jax as hh
from headhunt_jax.scorer import load_scorer, save_scorer

# One shape for most fits: each new shape compiles the optimiser again.
N, F = 120, 40


def clips(n, features, seed, offset=0.0):
    """Noisy features of two classes; a non-zero offset makes the intercept matter."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    direction = np.random.default_rng(100).normal(size=features) / np.sqrt(features)
    x = rng.normal(size=(n, features)) * 0.3 + offset + 0.8 * np.outer(y, direction)
    return x.astype(np.float32), y


def test_logistic_regression_matches_liblinear():
    x, y = clips(N, F, seed=0)
    held_out, _ = clips(100, F, seed=1)
    expected = (
        LogisticRegression(C=1.0, solver="liblinear", max_iter=2000, random_state=42)
        .fit(x, y)
        .predict_proba(held_out)[:, 1]
    )
    probabilities = np.asarray(hh.score(hh.fit_scorer(x, y), held_out))
    np.testing.assert_allclose(probabilities, expected, atol=0.02)
    # The test can tell: without the intercept penalty (lbfgs) the probabilities move further.
    unpenalised = LogisticRegression(C=1.0, solver="lbfgs", max_iter=5000).fit(x, y)
    assert np.abs(unpenalised.predict_proba(held_out)[:, 1] - expected).max() > 0.02


def test_linear_svm_matches_linear_svc():
    x, y = clips(N, F, seed=2, offset=0.5)
    held_out, _ = clips(50, F, seed=3, offset=0.5)
    reference = LinearSVC(C=1.0, max_iter=20000).fit(x, y)
    scorer = hh.fit_scorer(x, y, kind="svm")
    decision = np.asarray(held_out @ scorer.params["w"] + scorer.params["b"])
    np.testing.assert_allclose(decision, reference.decision_function(held_out), atol=0.01)
    np.testing.assert_allclose(hh.score(scorer, held_out), 1 / (1 + np.exp(-decision)), rtol=1e-5)


def test_mlp_fits_and_is_deterministic():
    x, y = clips(N, F, seed=4)
    x[y == 1] += 1.0
    first = hh.fit_scorer(x, y, kind="mlp", hidden=32, seed=0)
    again = hh.fit_scorer(x, y, kind="mlp", hidden=32, seed=0)
    other = hh.fit_scorer(x, y, kind="mlp", hidden=32, seed=1)
    np.testing.assert_array_equal(first.params["w1"], again.params["w1"])
    assert not np.array_equal(first.params["w1"], other.params["w1"])
    assert np.all((np.asarray(hh.score(first, x)) > 0.5) == y)


def test_logistic_training_is_deterministic():
    x, y = clips(N, F, seed=5)
    first, again = hh.fit_scorer(x, y), hh.fit_scorer(x, y)
    np.testing.assert_array_equal(first.params["w"], again.params["w"])
    np.testing.assert_array_equal(first.params["b"], again.params["b"])


@pytest.mark.parametrize("kind", ["logistic", "svm", "mlp"])
def test_save_and_load(tmp_path, kind):
    x, y = clips(N, F, seed=6)
    scorer = hh.fit_scorer(x, y, kind=kind, hidden=32)
    save_scorer(tmp_path / "scorer", scorer)
    loaded = load_scorer(tmp_path / "scorer")
    assert loaded.kind == kind
    np.testing.assert_array_equal(hh.score(loaded, x), hh.score(scorer, x))
    with pytest.raises(ValueError, match="exists"):
        save_scorer(tmp_path / "scorer", scorer)
    save_scorer(tmp_path / "scorer", scorer, overwrite=True)


def test_bad_input_is_rejected(tmp_path):
    x, y = clips(N, F, seed=7)
    with pytest.raises(ValueError, match="one class"):
        hh.fit_scorer(x, np.zeros(N))
    with pytest.raises(ValueError, match="NaN or inf"):
        hh.fit_scorer(np.where(x > 0, np.nan, x), y)
    with pytest.raises(ValueError, match=r"\[N\]"):
        hh.fit_scorer(x, y[:-1])
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        hh.fit_scorer(x[:, :, None], y)
    with pytest.raises(ValueError, match="kind"):
        hh.fit_scorer(x, y, kind="forest")
    scorer = hh.fit_scorer(x, y)
    with pytest.raises(ValueError, match=f"F = {F}, the features the scorer was trained on"):
        hh.score(scorer, x[:, :3])
    # Values are checked at the edge (score is traceable): the detector's scoring of features.
    from headhunt_jax.detector import Detector, detector_scores

    detector = Detector(np.array([[0, 0]]), scorer)
    with pytest.raises(ValueError, match="NaN or inf"):
        detector_scores(detector, np.full_like(x, np.inf))
    with pytest.raises(FileNotFoundError):
        load_scorer(tmp_path / "missing")
