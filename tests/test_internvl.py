"""InternVL3 / InternVL3.5: parity with transformers' ``InternVLForConditionalGeneration``
(random models saved with ``save_pretrained``, float32, eager attention) through the real loading
path: both key layouts, bf16, converted checkpoints; and the loader's errors on an InternVL
checkpoint."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
from numerics import rel_err

import headhunt_jax as hh
from headhunt_jax import backbone, features, weights
from headhunt_jax.models import stack

hf = pytest.importorskip("hf_reference")
check_parity = hf.check_parity

TOL = 1e-4


@pytest.mark.parametrize(
    "norm_type, qk_norm, image_size, pixels_size",
    [
        ("layer_norm", False, 56, 56),
        ("rms_norm", True, 56, 56),
        ("layer_norm", False, 56, 84),  # position-embedding interpolation 4x4 -> 6x6
        ("rms_norm", False, 84, 56),  # and down 6x6 -> 4x4
    ],
)
def test_internvl_parity(tmp_path, rng, norm_type, qk_norm, image_size, pixels_size):
    model = hf.build(hf.tiny_internvl_config(norm_type, qk_norm, image_size=image_size))
    tokens = (pixels_size // 14) ** 2 // 4
    ids, n_images = hf.multimodal_ids(rng, batch=2, images_per_sample=3, tokens_per_image=tokens)
    pixels = rng.standard_normal((n_images, 3, pixels_size, pixels_size)).astype(np.float32)
    check_parity(tmp_path, model, ids, pixels)


def test_internvl_parity_with_the_tower_in_groups_of_images(tmp_path, rng, monkeypatch):
    """On a CPU the tower runs its images a group at a time (``stack.over_images``). With two
    images (of 17 tokens) a step, 6 images run in 3 steps, each step every third image, and the
    features and logits still match transformers."""
    steps = []
    lax_map = jax.lax.map
    monkeypatch.setattr(stack, "CPU_IMAGE_TOKENS_PER_STEP", 2 * 17)
    monkeypatch.setattr(jax.lax, "map", lambda f, xs: steps.append(len(xs)) or lax_map(f, xs))
    features.forward.clear_cache()  # traced again under the patched step size
    features._logits.clear_cache()
    model = hf.build(hf.tiny_internvl_config())
    ids, n_images = hf.multimodal_ids(rng, batch=2, images_per_sample=3, tokens_per_image=4)
    pixels = rng.standard_normal((n_images, 3, 56, 56)).astype(np.float32)
    check_parity(tmp_path, model, ids, pixels)
    assert steps and set(steps) == {3}
    features.forward.clear_cache()
    features._logits.clear_cache()


def test_internvl_untied_head_and_vision_layernorm(tmp_path, rng):
    cfg = hf.tiny_internvl_config(tie_word_embeddings=False, vision={"use_mean_pooling": False})
    ids, n = hf.multimodal_ids(rng, batch=1, images_per_sample=2, tokens_per_image=4)
    pixels = rng.standard_normal((n, 3, 56, 56)).astype(np.float32)
    check_parity(tmp_path, hf.build(cfg), ids, pixels)


@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
    model = hf.build(hf.tiny_internvl_config(), seed=1)
    path = hf.save(model, tmp_path_factory.mktemp("internvl") / "ckpt")
    return model, path


def multimodal_batch(rng, batch=2):
    ids, n = hf.multimodal_ids(rng, batch=batch, images_per_sample=2, tokens_per_image=4)
    return ids, rng.standard_normal((n, 3, 56, 56)).astype(np.float32)


def test_layers_subset_and_no_retrace(internvl, rng):
    model, path = internvl
    bb = hh.load_backbone(path)
    ids, pixels = multimodal_batch(rng)
    want, _ = hf.reference_head_features(model, ids, pixels)
    got = hh.head_features(bb, ids, pixels, layers=[1, 0])
    assert rel_err(got, want[:, [1, 0]]) <= TOL
    before = features.forward._cache_size()
    hh.head_features(bb, ids + 0, pixels * 1.0, layers=[1, 0])
    assert features.forward._cache_size() == before
    with pytest.raises(ValueError, match="layers"):
        hh.head_features(bb, ids, pixels, layers=[5])


def test_both_key_layouts_and_sharded_files(tmp_path, internvl, rng):
    """transformers writes ``language_model.model.*``; rewrite it as ``model.language_model.*``
    in two shards with an index, as the v5 layout and large checkpoints have it."""
    from safetensors.torch import load_file

    model, path = internvl
    tensors = load_file(path / "model.safetensors")
    renames = [
        ("language_model.model.", "model.language_model."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ]
    out = tmp_path / "v5"
    renamed = hf.save_shards(tensors, renames, out, path)
    assert any(k.startswith("model.language_model.") for k in renamed)
    ids, pixels = multimodal_batch(rng)
    want, _ = hf.reference_head_features(model, ids, pixels)
    assert rel_err(hh.head_features(hh.load_backbone(out), ids, pixels), want) <= TOL


def test_bfloat16_checkpoint_drift(tmp_path, internvl, rng):
    """bf16 weights and compute, against the float32 torch reference: the drift stays within
    twice torch's own bf16 drift on the same inputs (README states the measured figures)."""
    model, _ = internvl
    torch_bf16 = hf.build(hf.tiny_internvl_config(), seed=1).to(torch.bfloat16)
    bb = hh.load_backbone(hf.save(torch_bf16, tmp_path / "bf16"), dtype="bfloat16")
    assert jax.tree.leaves(bb.params)[0].dtype == np.dtype("bfloat16")
    ids, pixels = multimodal_batch(rng)
    want, _ = hf.reference_head_features(model, ids, pixels)
    torch_drift = rel_err(hf.reference_head_features(torch_bf16, ids, pixels)[0], want)
    assert rel_err(hh.head_features(bb, ids, pixels), want) <= 2 * torch_drift


def test_converted_checkpoint_round_trip(tmp_path, internvl, rng):
    model, path = internvl
    bb = hh.load_backbone(path)
    out = backbone.save_converted(bb, tmp_path / "converted")
    restored = hh.load_backbone(out)
    assert restored.name == bb.name and restored.model == bb.model
    ids, pixels = multimodal_batch(rng, batch=1)
    np.testing.assert_array_equal(
        hh.head_features(restored, ids, pixels), hh.head_features(bb, ids, pixels)
    )


# --- InternVL3.5 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def internvl35(tmp_path_factory):
    model = hf.build(hf.tiny_internvl35_config(), seed=2)
    path = hf.save(model, tmp_path_factory.mktemp("internvl35") / "ckpt")
    return model, path


def test_internvl35_parity(tmp_path, rng):
    """InternVL3.5: InternVL whose text_config is a Qwen3 config; images, batch 2."""
    model = hf.build(hf.tiny_internvl35_config(), seed=2)
    ids, n_images = hf.multimodal_ids(rng, batch=2, images_per_sample=3, tokens_per_image=4)
    pixels = rng.standard_normal((n_images, 3, 56, 56)).astype(np.float32)
    bb = check_parity(tmp_path, model, ids, pixels)
    assert bb.text_config.qk_norm and bb.text_config.head_dim == 24
    assert not bb.text_config.tie_word_embeddings


def test_internvl35_layers_subset(internvl35, rng):
    model, path = internvl35
    ids, pixels = multimodal_batch(rng)
    want, _ = hf.reference_head_features(model, ids, pixels)
    got = hh.head_features(hh.load_backbone(path), ids, pixels, layers=[1])
    assert rel_err(got, want[:, [1]]) <= TOL


def test_internvl35_converted_round_trip(tmp_path, internvl35, rng):
    model, path = internvl35
    bb = hh.load_backbone(path)
    out = backbone.save_converted(bb, tmp_path / "converted")
    restored = hh.load_backbone(out)
    assert restored.model == bb.model and restored.text_config.qk_norm
    assert restored.fingerprint == bb.fingerprint
    ids, pixels = multimodal_batch(rng)
    got = hh.head_features(restored, ids, pixels)
    np.testing.assert_array_equal(got, hh.head_features(bb, ids, pixels))
    assert rel_err(got, hf.reference_head_features(model, ids, pixels)[0]) <= TOL


def test_internvl35_presets():
    """Shapes of the released checkpoints: InternVL3_5-1B-HF stores 1,060,897,792 parameters
    (304,012,288 vision, 5,253,120 projector, 751,632,384 language, its head untied); Qwen3-8B
    has 8,190,735,360."""

    def count(cfg):
        shapes = backbone.param_shapes(backbone.make_model(cfg))
        total = {}
        for key, shape in shapes.items():
            part = key.split("/")[0]
            total[part] = total.get(part, 0) + int(np.prod(shape))
        return total

    small, large = backbone.preset("InternVL3.5-1B"), backbone.preset("InternVL3.5-8B")
    assert count(small) == {
        "vision": 304_012_288,
        "projector": 5_253_120,
        "language_model": 751_632_384,
    }
    assert count(large)["language_model"] == 8_190_735_360
    for cfg in (small, large):
        assert cfg.image_token_id == 151671 and cfg.downsample_ratio == 0.5
        assert cfg.text.qk_norm and cfg.text.head_dim == 128 and cfg.text.vocab_size == 151936
    # qk_norm counts in the fingerprint when set (test_compat: at its default, it changes none)
    assert backbone.fingerprint(small.text) != backbone.fingerprint(
        dataclasses.replace(small.text, qk_norm=False)
    )


# --- errors ---------------------------------------------------------------------------------------


def test_error_truncated_safetensors(tmp_path, internvl):
    _, path = internvl
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(weights.CheckpointError, match=r"model\.safetensors: truncated"):
        hh.load_backbone(tmp_path)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_error_bad_tensors(tmp_path, internvl, change):
    from safetensors.torch import load_file, save_file

    _, path = internvl
    tensors = load_file(path / "model.safetensors")
    key = "language_model.model.layers.1.self_attn.k_proj.weight"
    if change == "missing":
        del tensors[key]
        match = "missing tensors.*layers_1/attn/k_proj/kernel"
    elif change == "unexpected":
        tensors["language_model.model.layers.1.self_attn.extra.weight"] = torch.zeros(2)
        match = "unexpected tensors: language_model.model.layers.1.self_attn.extra.weight"
    else:
        tensors[key] = torch.zeros(3, 64)
        match = rf"{key} has shape \(3, 64\), expected \(32, 64\)"
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(weights.CheckpointError, match=match):
        hh.load_backbone(tmp_path)


def test_error_image_token_count(internvl, rng):
    _, path = internvl
    bb = hh.load_backbone(path)
    ids, pixels = multimodal_batch(rng)
    with pytest.raises(ValueError, match="16 image tokens .* 3 images x 4 tokens = 12"):
        hh.head_features(bb, ids, pixels[:3])
    with pytest.raises(ValueError, match="image tokens"):
        hh.head_features(bb, ids, None)
