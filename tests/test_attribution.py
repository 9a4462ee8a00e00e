"""Spatial attribution (``hh.head_attribution``) against finite differences on a tiny InternVL
checkpoint written by InternVL's own code (tests/fixtures/internvl_chat)."""

from pathlib import Path

import jax
import numpy as np
import pytest

import headhunt_jax as hh

CHAT = Path(__file__).parent / "fixtures" / "internvl_chat" / "qwen2"
HEADS = np.asarray([[1, 2], [0, 3]])


@pytest.fixture(scope="module")
def inputs():
    ref = np.load(CHAT / "reference.npz")
    return hh.load_backbone(CHAT), ref["input_ids"], ref["pixel_values"]


def objective(bb, ids, pixels, weights):
    features = np.asarray(hh.head_features(bb, ids, pixels), np.float64)
    experts = features[:, HEADS[:, 0], HEADS[:, 1]].reshape(len(ids), -1)
    return 0.5 * (experts**2).sum() if weights is None else (experts @ weights).sum()


@pytest.mark.parametrize("use_weights", [False, True])
def test_heatmaps_are_the_gradient_by_finite_differences(inputs, use_weights):
    bb, ids, pixels = inputs
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(len(HEADS) * bb.head_dim) if use_weights else None
    maps = np.asarray(hh.head_attribution(bb, ids, pixels, HEADS, weights))
    assert maps.shape == (pixels.shape[0], *pixels.shape[2:]) and (maps >= 0).all()
    # The pixels of largest and of median attribution: |d/dp| summed over the 3 channels.
    flat = np.argsort(maps.ravel())
    for index in (flat[-1], flat[len(flat) // 2]):
        i, y, x = np.unravel_index(index, maps.shape)
        total = 0.0
        for c in range(3):
            step = np.zeros_like(pixels)
            step[i, c, y, x] = eps = 1e-2
            up = objective(bb, ids, pixels + step, weights)
            down = objective(bb, ids, pixels - step, weights)
            total += abs(up - down) / (2 * eps)
        np.testing.assert_allclose(maps[i, y, x], total, rtol=5e-2, atol=1e-4 * maps.max())


def test_a_frame_only_moves_its_own_sample(inputs):
    """Sample 0's heads see only sample 0's frames (images 0-2 of 6)."""
    bb, ids, pixels = inputs
    maps = np.asarray(hh.head_attribution(bb, ids[:1], pixels[:3], HEADS))
    both = np.asarray(hh.head_attribution(bb, ids, pixels, HEADS))
    np.testing.assert_allclose(both[:3], maps, rtol=1e-4, atol=1e-6 * maps.max())
    assert jax.jit(lambda p: hh.head_attribution(bb, ids, p, HEADS))(pixels).shape == both.shape
