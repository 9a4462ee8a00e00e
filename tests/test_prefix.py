"""Prefix reuse: M prompts over the same frames give the same features as M full passes."""

import numpy as np
import pytest

import headhunt_jax as hh
from headhunt_jax.features import head_features_prompts, shared_prefix_length

hf = pytest.importorskip("hf_reference")


@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
    path = hf.save(
        hf.build(hf.tiny_internvl_config(), seed=3), tmp_path_factory.mktemp("m") / "ckpt"
    )
    return hh.load_backbone(path)


def prompts(rng, batch=2, frames=2, per_image=4):
    """Shared system turn + frames, then three suffixes of different lengths (same per row)."""
    head, _ = hf.multimodal_ids(rng, batch=1, images_per_sample=frames, tokens_per_image=per_image)
    tails = [rng.integers(0, hf.IMAGE_TOKEN - 1, size=n) for n in (5, 9, 1)]
    tails[1][:2] = tails[0][:2]  # prompts sharing their first words still split correctly
    return [
        np.repeat(np.concatenate([head[0], t])[None], batch, axis=0) for t in tails
    ], batch * frames


@pytest.mark.parametrize("layers", [None, [0, 2]])
def test_prefix_reuse_equals_full_passes(internvl, layers):
    rng = np.random.default_rng(0)
    ids, n_images = prompts(rng)
    pixels = rng.standard_normal((n_images, 3, 56, 56)).astype(np.float32)
    got = np.asarray(head_features_prompts(internvl, ids, pixels, layers=layers))
    want = np.stack([np.asarray(hh.head_features(internvl, i, pixels, layers=layers)) for i in ids])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.fixture(scope="module")
def internvl35(tmp_path_factory):
    """InternVL3.5 (Qwen3 text: q/k norms before RoPE, so the kept keys are normalised ones)."""
    model = hf.build(hf.tiny_internvl35_config(), seed=4)
    return model, hh.load_backbone(hf.save(model, tmp_path_factory.mktemp("m35") / "ckpt"))


@pytest.mark.parametrize("layers", [None, [0, 2], [1]])
def test_prefix_reuse_internvl35(internvl35, layers):
    """Prefix reuse equals full passes, and full passes (all layers, or stopping early at the
    deepest layer asked for) equal transformers."""
    model, bb = internvl35
    rng = np.random.default_rng(1)
    ids, n_images = prompts(rng)
    pixels = rng.standard_normal((n_images, 3, 56, 56)).astype(np.float32)
    got = np.asarray(head_features_prompts(bb, ids, pixels, layers=layers))
    want = np.stack([np.asarray(hh.head_features(bb, i, pixels, layers=layers)) for i in ids])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    picked = slice(None) if layers is None else layers
    for m, prompt in enumerate(ids):
        ref = hf.reference_head_features(model, prompt, pixels)[0][:, picked]
        assert np.abs(want[m] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_shared_prefix_length():
    a = np.array([[1, 2, 3, 4, 5]])
    b = np.array([[1, 2, 3, 9]])
    assert shared_prefix_length([a, b], None) == 3
    assert shared_prefix_length([a, a], None) == 4  # each prompt keeps one token of its own
    with pytest.raises(ValueError, match="image token"):
        shared_prefix_length([np.array([[1, 7, 7, 2]]), np.array([[3, 7, 7, 2]])], 7)
