"""InternVL's original checkpoint format (``InternVLChatModel``, model_type ``internvl_chat``).

The reference is OpenGVLab's own modeling code: ``tests/fixtures/internvl_chat/make.py`` built
two tiny random checkpoints with it (a Qwen2 language model as InternVL3's, a Qwen3 one as
InternVL3.5's) and recorded their per-head features and logits on a batch of 2 prompts with 3
images each. Their ``-hf`` twin is built here with transformers' ``InternVLForConditionalGeneration``
from the same weights, under names mapped by this test.
"""

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from numerics import rel_err
from safetensors.numpy import load_file

import headhunt_jax as hh
from headhunt_jax import backbone, features, synthetic
from headhunt_jax.detector import Detector

hf = pytest.importorskip("hf_reference")
from test_cli import assert_one_line_error, cli  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "internvl_chat"
TOL = 1e-4


@pytest.mark.parametrize("llm", ["qwen2", "qwen3"])
def test_parity_with_the_original_code(llm):
    ref = np.load(FIXTURES / llm / "reference.npz")
    bb = hh.load_backbone(FIXTURES / llm)
    assert bb.config.image_token_id == 447  # the tokenizer's <IMG_CONTEXT>
    assert bb.config.text.qk_norm == (llm == "qwen3")
    ids, pixels = ref["input_ids"], ref["pixel_values"]
    assert ids.shape[0] == 2 and pixels.shape[0] == 6
    got = hh.head_features(bb, ids, pixels)
    assert got.shape == ref["features"].shape
    assert rel_err(got, ref["features"]) <= TOL
    assert rel_err(features.logits(bb, ids, pixels), ref["logits"]) <= TOL


# The original's names -> transformers v5's InternVLForConditionalGeneration.
_TO_HF = [
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (
        r"^vision_model\.embeddings\.position_embedding$",
        "model.vision_tower.embeddings.position_embeddings",
    ),
    (
        r"^vision_model\.embeddings\.patch_embedding\.",
        "model.vision_tower.embeddings.patch_embeddings.projection.",
    ),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"model.vision_tower.encoder.layer.\1."),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.", ".attention."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.ls([12])$", r".lambda_\1"),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]


def hf_twin(chat_dir: Path, out: Path) -> tuple[Path, torch.nn.Module]:
    """The same weights as a transformers InternVLForConditionalGeneration checkpoint."""
    import transformers

    chat = json.loads((chat_dir / "config.json").read_text())
    vision, llm = chat["vision_config"], dict(chat["llm_config"])
    config = transformers.InternVLConfig(
        vision_config=dict(
            hidden_size=vision["hidden_size"],
            intermediate_size=vision["intermediate_size"],
            num_hidden_layers=vision["num_hidden_layers"],
            num_attention_heads=vision["num_attention_heads"],
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            attention_bias=vision["qkv_bias"],
            use_qk_norm=vision["qk_normalization"],
            norm_type=vision["norm_type"],
            layer_norm_eps=vision["layer_norm_eps"],
            use_mean_pooling=True,
        ),
        text_config={**llm, "tie_word_embeddings": False},
        image_token_id=447,
        downsample_ratio=chat["downsample_ratio"],
        tie_word_embeddings=False,
    )
    model = hf.build(config)
    state = {}
    for key, w in load_file(chat_dir / "model.safetensors").items():
        for pattern, target in _TO_HF:
            key = re.sub(pattern, target, key)
        if key.endswith(".attention.qkv.weight") or key.endswith(".attention.qkv.bias"):
            for part, name in zip(np.split(w, 3), "qkv", strict=True):
                state[key.replace(".qkv.", f".{name}_proj.")] = torch.from_numpy(part.copy())
        else:
            state[key] = torch.from_numpy(w.copy())
    model.load_state_dict(state, strict=True)
    path = hf.save(model, out)
    shutil.copy(chat_dir / "tokenizer.json", path / "tokenizer.json")
    return path, model


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def twins(request, tmp_path_factory):
    llm = request.param
    path, model = hf_twin(FIXTURES / llm, tmp_path_factory.mktemp(f"twin-{llm}") / "hf")
    return FIXTURES / llm, path, model


def test_the_hf_twin_is_the_same_model(twins):
    chat_dir, hf_dir, model = twins
    ref = np.load(chat_dir / "reference.npz")
    ids, pixels = ref["input_ids"], ref["pixel_values"]
    # transformers' model with the mapped weights is the original's (the mapping is right) ...
    want, want_logits = hf.reference_head_features(model, ids, pixels)
    assert rel_err(want, ref["features"]) <= 1e-5 and rel_err(want_logits, ref["logits"]) <= 1e-5
    # ... and the two formats load to the same parameters, features and fingerprint.
    chat, twin = hh.load_backbone(chat_dir), hh.load_backbone(hf_dir)
    assert chat.config == twin.config and chat.fingerprint == twin.fingerprint
    for a, b in zip(jax.tree.leaves(chat.params), jax.tree.leaves(twin.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        hh.head_features(chat, ids, pixels), hh.head_features(twin, ids, pixels)
    )


def test_converted_round_trip(tmp_path):
    bb = hh.load_backbone(FIXTURES / "qwen2")
    ref = np.load(FIXTURES / "qwen2" / "reference.npz")
    back = hh.load_backbone(backbone.save_converted(bb, tmp_path / "converted"))
    assert back.fingerprint == bb.fingerprint
    np.testing.assert_array_equal(
        hh.head_features(back, ref["input_ids"], ref["pixel_values"]),
        hh.head_features(bb, ref["input_ids"], ref["pixel_values"]),
    )


def chat_config(**changes):
    cfg = json.loads((FIXTURES / "qwen2" / "config.json").read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            cfg[outer] = {**cfg[outer], inner: value}
        elif value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    return cfg


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ps_version": "v1"}, "ps_version 'v1'"),
        ({"ps_version": None}, "ps_version 'v1'"),  # the original's default
        ({"select_layer": -4}, "select_layer -4"),
        ({"template": "internlm2-chat"}, "template 'internlm2-chat'"),
        ({"llm_config.architectures": ["InternLM2ForCausalLM"]}, "InternLM2ForCausalLM"),
        ({"vision_config.use_moe": True}, "use_moe"),
        ({"force_image_size": 112}, "force_image_size 112"),
    ],
)
def test_settings_it_cannot_honour_are_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        backbone.config_from_hf(chat_config(**changes))


def test_fields_that_change_nothing_load():
    """Tiling, LoRA flags, drop path, flash attention, the MoE fields of a dense tower."""
    base = backbone.config_from_hf(chat_config())
    same = chat_config(
        dynamic_image_size=False,
        max_dynamic_patch=6,
        use_thumbnail=False,
        use_llm_lora=0,
        pad2square=True,
        **{
            "vision_config.drop_path_rate": 0.0,
            "vision_config.use_flash_attn": True,
            "vision_config.use_moe": False,
            "vision_config.num_experts": 8,
        },
    )
    assert backbone.config_from_hf(same) == base


@pytest.mark.slow
def test_a_detector_fitted_on_one_format_detects_with_the_other(twins, tmp_path):
    chat_dir, hf_dir, _ = twins
    if chat_dir.name != "qwen2":
        pytest.skip("one language model is enough for the CLI")
    clips = tmp_path / "clips"
    synthetic.make_videos(clips, num_normal=2, num_anomalous=2, segments=2, size=(64, 48), seed=4)
    quiet = ["--quiet", "--batch-size", "2"]
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"heads": [[0, 1], [1, 3]]}))
    video = sorted(clips.glob("*.mp4"))[0]
    scores = {}
    for fitted, other in ((chat_dir, hf_dir), (hf_dir, chat_dir)):
        store, det = tmp_path / f"store-{fitted.name}", tmp_path / f"det-{fitted.name}"
        cli("extract", "--model", fitted, "--videos", clips, "--prompt", "p", "--out", store,
            *quiet)  # fmt: skip
        cli("fit", "--store", store, "--heads", heads, "--annotations",
            clips / "annotations.txt", "--out", det)  # fmt: skip
        out = tmp_path / f"d-{fitted.name}.json"
        cli("detect", "--detector", det, "--model", other, video, "--out", out, *quiet)
        scores[fitted.name] = json.loads(out.read_text())["videos"][0]["segment_scores"]
        assert Detector.load(det).backbone_fingerprint == hh.load_backbone(other).fingerprint
    assert len(scores["qwen2"]) == 2
    # Both detectors are fitted on the same features: their scores agree.
    np.testing.assert_allclose(scores["qwen2"], scores["hf"], rtol=1e-5, atol=1e-6)
    # A backbone of another architecture is refused in one line.
    other = hf.save_tiny_internvl(tmp_path / "other")
    run = cli("detect", "--detector", tmp_path / "det-qwen2", "--model", other, video,
              check=False)  # fmt: skip
    assert_one_line_error(run, "the detector was fitted on backbone")


def test_inputs_past_the_trained_length_are_refused():
    import dataclasses

    bb = hh.load_backbone(FIXTURES / "qwen2")
    cfg = bb.config
    short = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, max_positions=66))
    bb = dataclasses.replace(bb, model=backbone.make_model(short))
    ref = np.load(FIXTURES / "qwen2" / "reference.npz")
    with pytest.raises(ValueError, match="67 tokens: .* up to 66 positions"):
        hh.head_features(bb, ref["input_ids"], ref["pixel_values"])
    with pytest.raises(ValueError, match="up to 66 positions"):
        hh.generate(bb, ref["input_ids"][:, :60], 8, ref["pixel_values"])


def test_generation_equals_transformers_on_the_twin(twins):
    """Greedy tokens from the original-format checkpoint equal transformers' generate on its
    -hf twin (the original's own generation goes through chat(), which takes one prompt)."""
    from test_generate import NEW, torch_generate

    chat_dir, _, model = twins
    ref = np.load(chat_dir / "reference.npz")
    ids, pixels = ref["input_ids"].astype(np.int64), ref["pixel_values"]
    want = torch_generate(model, ids, np.ones_like(ids), (), pixel_values=pixels)
    got = hh.generate(hh.load_backbone(chat_dir), ids, NEW, pixels, eos_token_id=())
    np.testing.assert_array_equal(got.tokens, want)
