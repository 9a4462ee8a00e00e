"""Parity of the Flax backbone with transformers' PyTorch models, through the real loading path:
the text-only decoders (Qwen2, Qwen3, Llama) and the loader's errors; each vision family's in
``test_<family>.py``.

Each model is random, saved with ``save_pretrained`` and loaded by ``hh.load_backbone``. Error
measure: max |jax - torch| / max |torch| over the whole output (float32, eager attention).
"""

import json

import numpy as np
import pytest
from numerics import rel_err

import headhunt_jax as hh
from headhunt_jax import backbone, weights

hf = pytest.importorskip("hf_reference")
check_parity = hf.check_parity

TOL = 1e-4


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
        match=r"supported: internvl, internvl_chat, llava_onevision, qwen2_5_vl, qwen3_vl, qwen2, qwen3, llama\)",
    ):
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
