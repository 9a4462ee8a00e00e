"""The public array functions inside the user's own ``jax.jit``, ``jax.vmap`` and ``jax.grad``:
each gives what the eager call gives (float32: to a few ulps, XLA may fuse differently)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import headhunt_jax as hh
from headhunt_jax.locator import event_mask

RTOL, ATOL = 1e-6, 1e-7


def close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def scorer():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 12)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.standard_normal(60) > 0).astype(int)
    return hh.fit_scorer(x, y), x


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_score_under_jit_vmap_and_grad(scorer, kind):
    base, x = scorer
    s = base if kind == "logistic" else hh.fit_scorer(x, (x[:, 0] > 0).astype(int), kind="mlp")
    eager = hh.score(s, x)
    close(jax.jit(hh.score)(s, x), eager)
    close(jax.jit(lambda x: hh.score(s, x))(x), eager)
    close(jax.vmap(lambda row: hh.score(s, row))(x), eager)  # over samples
    # dp/dx of sample 0 against the formula, in float64 on the host
    grad = jax.grad(lambda row: hh.score(s, row))(x[0])
    w = {k: np.asarray(v, np.float64) for k, v in s.params.items()}
    row = x[0].astype(np.float64)
    if kind == "mlp":
        pre = row @ w["w1"] + w["b1"]
        logit = np.maximum(pre, 0) @ w["w2"] + w["b2"]
        dlogit = w["w1"] @ (w["w2"] * (pre > 0))
    else:
        logit, dlogit = row @ w["w"] + w["b"], w["w"]
    p = 1 / (1 + np.exp(-logit))
    np.testing.assert_allclose(grad, p * (1 - p) * dlogit, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="F = 12"):
        jax.jit(lambda x: hh.score(s, x))(x[:, :5])  # shapes are checked while tracing


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_smooth_under_jit_vmap_and_grad(sigma, length):
    rng = np.random.default_rng(length)
    videos = rng.random((3, length)).astype(np.float32)
    eager = np.stack([hh.smooth(v, sigma) for v in videos])
    close(jax.jit(lambda s: hh.smooth(s, sigma))(videos[0]), eager[0])
    close(jax.vmap(lambda s: hh.smooth(s, sigma))(videos), eager)  # over videos
    # Linear: the gradient of output t with respect to the scores is the kernel's row t.
    t = length // 2
    grad = jax.grad(lambda s: hh.smooth(s, sigma)[t])(jnp.asarray(videos[0]))
    basis = np.eye(length, dtype=np.float32)
    close(grad, np.asarray([hh.smooth(e, sigma)[t] for e in basis]))


def test_event_mask_and_localize_built_on_it():
    scores = np.asarray([0.1, 0.2, 0.9, 0.95, 0.9, 0.1, 0.0, 0.8, 0.9, 0.1], np.float32)
    mask = event_mask(scores, 1.0, 0.5)
    assert mask.dtype == bool and mask.shape == scores.shape
    np.testing.assert_array_equal(jax.jit(lambda s: event_mask(s, 1.0, 0.5))(scores), mask)
    np.testing.assert_array_equal(
        jax.vmap(lambda s: event_mask(s, 1.0, 0.5))(np.stack([scores, scores[::-1]])),
        np.stack([mask, event_mask(scores[::-1], 1.0, 0.5)]),
    )
    events = hh.localize(scores, 1.0, 0.5)
    runs = np.zeros(len(scores), bool)
    for start, end in events:
        runs[start:end] = True
    np.testing.assert_array_equal(runs, mask)
    assert hh.localize(scores, None, 0.5) == [(2, 5), (7, 9)]


def test_settings_are_static():
    with pytest.raises(ValueError, match="static"):
        jax.jit(lambda s, sigma: hh.smooth(s, sigma))(np.zeros(4), 1.5)
