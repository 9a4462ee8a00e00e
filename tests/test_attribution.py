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


def test_block_means_are_the_cells_means():
    """Cells of unequal sizes where the grid does not divide the frame (56 px in 16 cells: 3 or
    4 pixels), and no finer grid than the pixels."""
    from headhunt_jax.attribution import block_means

    maps = np.random.default_rng(0).random((2, 56, 30))
    means = block_means(maps, (16, 16))
    rows, cols = [i * 56 // 16 for i in range(17)], [j * 30 // 16 for j in range(17)]
    for i in range(16):
        for j in range(16):
            cell = maps[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
            np.testing.assert_allclose(means[:, i, j], cell.mean(axis=(1, 2)), rtol=1e-12)
    assert block_means(maps[:, :8, :5], (16, 16)).shape == (2, 8, 5)
    np.testing.assert_allclose(block_means(maps, (1, 1))[:, 0, 0], maps.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def demo_backbones(tmp_path_factory):
    from headhunt_jax import tiny_checkpoints

    root = tmp_path_factory.mktemp("demo_backbones")
    for family in ("llava-onevision", "qwen2.5-vl"):
        tiny_checkpoints.write(family, root / family, ["Anything odd here?"])
    return {family: hh.load_backbone(root / family) for family in ("llava-onevision", "qwen2.5-vl")}


def test_frame_attribution_of_a_video_family(demo_backbones):
    """LLaVA-OneVision takes a segment as one video (pixel_values_videos [1, F, 3, S, S]): a
    heatmap a frame, the gradient by finite differences at the largest pixel."""
    from headhunt_jax.attribution import frame_attribution

    bb = demo_backbones["llava-onevision"]
    processor = bb.processor()
    size = processor.frames["image_size"]
    pixels = np.random.default_rng(1).standard_normal((1, 3, 3, size, size)).astype(np.float32)
    ids = processor.prompt_ids("Anything odd here?", 3, (size, size))[None]
    vision = processor.vision_inputs(pixels)
    maps = frame_attribution(bb, ids, vision, HEADS)
    assert maps.shape == (3, size, size) and np.isfinite(maps).all()

    def objective(p):
        features = np.asarray(hh.head_features(bb, ids, pixel_values_videos=p), np.float64)
        return 0.5 * (features[:, HEADS[:, 0], HEADS[:, 1]] ** 2).sum()

    i, y, x = np.unravel_index(np.argmax(maps), maps.shape)
    total = 0.0
    for c in range(3):
        step = np.zeros_like(pixels)
        step[0, i, c, y, x] = eps = 1e-2
        total += abs(objective(pixels + step) - objective(pixels - step)) / (2 * eps)
    np.testing.assert_allclose(maps[i, y, x], total, rtol=5e-2)


def test_a_family_whose_pixels_are_not_frames_is_refused(demo_backbones):
    from headhunt_jax.attribution import check_attribution
    from headhunt_jax.errors import InputError

    check_attribution(demo_backbones["llava-onevision"])
    with pytest.raises(InputError, match="not available for qwen2_5_vl"):
        check_attribution(demo_backbones["qwen2.5-vl"])
