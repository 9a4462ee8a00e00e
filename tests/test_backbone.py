"""Parity of the Flax backbone with transformers' PyTorch models, through the real loading path.

Each model is random, saved with ``save_pretrained`` and loaded by ``hh.load_backbone``. Error
measure: max |jax - torch| / max |torch| over the whole output (float32, eager attention).
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch

import headhunt_jax as hh
from headhunt_jax import backbone, features, weights
from headhunt_jax.models import stack

hf = pytest.importorskip("hf_reference")

TOL = 1e-4


def rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def check_parity(tmp_path, model, ids, pixels=None, **load_kw):
    path = hf.save(model, tmp_path / "ckpt")
    bb = hh.load_backbone(path, **load_kw)
    want, want_logits = hf.reference_head_features(model, ids, pixels)
    got = hh.head_features(bb, ids, pixels)
    assert got.shape == want.shape and got.dtype == np.float32
    assert rel_err(got, want) <= TOL
    assert rel_err(features.logits(bb, ids, pixels), want_logits) <= TOL
    return bb


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_text_only_parity(tmp_path, rng, family):
    if family == "llama":  # no attention bias, tied embeddings, explicit head_dim, llama3 rope
        cfg = hf.tiny_text_config(
            "llama",
            head_dim=24,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    else:
        cfg = hf.tiny_text_config("qwen2", num_key_value_heads=1)  # GQA ratio 4
    check_parity(tmp_path, hf.build(cfg), hf.random_ids(rng, 3, 13))


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
    from safetensors.torch import load_file, save_file

    model, path = internvl
    tensors = load_file(path / "model.safetensors")
    renamed = {}
    for k, v in tensors.items():
        for old, new in [
            ("language_model.model.", "model.language_model."),
            ("vision_tower.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."),
        ]:
            if k.startswith(old):
                k = new + k[len(old) :]
        renamed[k] = v.contiguous()
    assert any(k.startswith("model.language_model.") for k in renamed)
    out = tmp_path / "v5"
    out.mkdir()
    keys = sorted(renamed)
    shards = {"a.safetensors": keys[::2], "b.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: renamed[k] for k in ks}, out / name)
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (out / "config.json").write_text((path / "config.json").read_text())
    ids, pixels = multimodal_batch(rng)
    want, _ = hf.reference_head_features(model, ids, pixels)
    assert rel_err(hh.head_features(hh.load_backbone(out), ids, pixels), want) <= TOL


def test_rope_theta_config_style(tmp_path, rng):
    """Older configs carry ``rope_theta`` at the top level instead of ``rope_parameters``."""
    model = hf.build(
        hf.tiny_text_config(rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    )
    path = hf.save(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = 5000.0
    (path / "config.json").write_text(json.dumps(cfg))
    ids = hf.random_ids(rng, 2, 9)
    want, _ = hf.reference_head_features(model, ids)
    assert rel_err(hh.head_features(hh.load_backbone(path), ids), want) <= TOL


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


# --- Qwen3 and InternVL3.5 ---------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_qwen3_parity(tmp_path, rng, tie):
    """Qwen3ForCausalLM: per-head q/k RMSNorm before RoPE, GQA, head_dim 24 != 64 / 4, no bias;
    tied as Qwen3-0.6B, untied as Qwen3-8B."""
    cfg = hf.tiny_text_config(
        "qwen3",
        head_dim=24,
        tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    )
    bb = check_parity(tmp_path, hf.build(cfg), hf.random_ids(rng, 3, 13))
    text = bb.text_config
    assert text.qk_norm and not text.attention_bias and text.head_dim == 24
    assert text.tie_word_embeddings == tie
    # the layers' parameters are stacked: [3 layers, head_dim]
    assert bb.params["language_model"]["layers"]["attn"]["q_norm"]["scale"].shape == (3, 24)


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


def test_qwen3_config_from_hf(tmp_path):
    """The config path: the Qwen3 class default head_dim (128) when absent, top-level rope_theta,
    and the refusals."""
    base = hf.tiny_text_config("qwen3", head_dim=24).to_dict()
    cfg = dict(base, rope_theta=5000.0)
    cfg.pop("rope_parameters")
    cfg.pop("head_dim")
    text = backbone.config_from_hf(cfg)
    assert (text.head_dim, text.rope_theta, text.qk_norm) == (128, 5000.0, True)
    with pytest.raises(ValueError, match="sliding-window"):
        backbone.config_from_hf(dict(base, use_sliding_window=True))
    with pytest.raises(ValueError, match="attention_bias"):
        backbone.config_from_hf(dict(base, attention_bias=True))
    internvl = hf.tiny_internvl35_config().to_dict()
    assert backbone.config_from_hf(internvl).text.qk_norm
    internvl["text_config"]["model_type"] = "gemma"
    with pytest.raises(ValueError, match="unsupported text model_type 'gemma'.*qwen3"):
        backbone.config_from_hf(internvl)


# --- errors ------------------------------------------------------------------------------------


def test_error_no_config(tmp_path):
    with pytest.raises(weights.CheckpointError, match="config.json"):
        hh.load_backbone(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        hh.load_backbone(tmp_path / "missing")


def test_error_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        hh.load_backbone(tmp_path)


def test_error_unsupported_model_type_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(
        ValueError,
        match=r"supported: internvl, internvl_chat, llava_onevision, qwen2_5_vl, qwen2, qwen3, llama\)",
    ):
        hh.load_backbone(tmp_path)


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


def test_layers_stacked_from_their_own_tensors():
    """Checkpoints hold one tensor a layer ('.../layers_N/...'); the tree stacks them."""
    assert weights.layer_slot("vision/layers_3/fc1/kernel") == ("vision/layers/fc1/kernel", 3)
    assert weights.layer_slot("language_model/embed_tokens") is None
    shapes = {"lm/layers/k": (2, 3), "lm/norm": (4,)}
    assert weights.unstack_shapes(shapes) == {
        "lm/layers_0/k": (3,),
        "lm/layers_1/k": (3,),
        "lm/norm": (4,),
    }
    flat = {"lm/layers_1/k": np.ones(3), "lm/layers_0/k": np.zeros(3), "lm/norm": np.ones(4)}
    out = weights.stack_layers(flat)
    assert set(out) == {"lm/layers/k", "lm/norm"} and out["lm/layers/k"][:, 0].tolist() == [0, 1]
    with pytest.raises(weights.CheckpointError, match=r"lm/layers/k: layers \[1\] missing"):
        weights.stack_layers({"lm/layers_0/k": np.ones(3), "lm/layers_2/k": np.ones(3)})


def test_error_image_token_count(internvl, rng):
    _, path = internvl
    bb = hh.load_backbone(path)
    ids, pixels = multimodal_batch(rng)
    with pytest.raises(ValueError, match="16 image tokens .* 3 images x 4 tokens = 12"):
        hh.head_features(bb, ids, pixels[:3])
    with pytest.raises(ValueError, match="image tokens"):
        hh.head_features(bb, ids, None)
