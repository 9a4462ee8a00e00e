"""Qwen3-VL against transformers' ``Qwen3VLForConditionalGeneration`` on a tiny random model
(float32, eager attention) written by ``save_pretrained`` and read by ``load_backbone``: the
vision tower with its DeepStack tokens, the 3-D rotary positions (``get_rope_index``, images and
timestamped videos), head features of every layer and logits (two images of other sizes, a
video of several temporal patches with timestamp text between them, a batch of two rows mixing
images and video), hidden states, early exit, prefix reuse, greedy decoding, a converted
checkpoint and meshes of 8 simulated devices; and the configs.

Error measure: max |jax - torch| / max |torch| (``numerics.rel_err``).
"""

import dataclasses
import json
import os
import types

import jax
import numpy as np
import pytest
import torch
from meshes import run_on_8_devices
from numerics import rel_err

transformers = pytest.importorskip("transformers")

import hf_reference as hf  # noqa: E402
from test_hidden import reference_hidden  # noqa: E402

import headhunt_jax as hh  # noqa: E402
from headhunt_jax import backbone, features, sharding  # noqa: E402
from headhunt_jax.backbones.qwen3_vl import rope, vision  # noqa: E402
from headhunt_jax.backbones.qwen3_vl.config import (  # noqa: E402
    PRESETS,
    Qwen3VLConfig,
    interleaved_sections,
)
from headhunt_jax.generation import generate, prefill  # noqa: E402

TOL = 1e-4
Q = hf.QWEN_VL_TOKENS
IMG, VID = Q["image_token_id"], Q["video_token_id"]
START, END = Q["vision_start_token_id"], Q["vision_end_token_id"]
PATCH_DIM = 3 * 2 * 2 * 2  # C * T * P * P of the tiny tower
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")
on_mesh = pytest.mark.skipif(
    not EIGHT_DEVICES, reason="needs 8 devices: run by test_on_8_simulated_devices"
)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """The tiny Qwen3-VL (GQA, DeepStack after decoder layers 0 and 1), saved by
    ``save_pretrained`` and read by ``load_backbone``: (model, backbone, path)."""
    model = hf.build(hf.tiny_qwen3_vl_config())
    path = hf.save(model, tmp_path_factory.mktemp("qwen3_vl") / "ckpt")
    return model, hh.load_backbone(path), path


def _text(rng, n):
    return list(rng.integers(0, 290, n))


def _placeholders(rng, kind, grid):
    """An image's run of placeholders, or a video's as Qwen3VLProcessor writes it: each temporal
    patch after its timestamp text (``<1.5 seconds>``, here 3 random tokens)."""
    t, h, w = grid
    if kind == "image":
        return [START] + [IMG] * (t * h * w // 4) + [END]
    return [x for _ in range(t) for x in _text(rng, 3) + [START] + [VID] * (h * w // 4) + [END]]


def _sample(rng, parts, prompt=(7, 8, 9)):
    """input_ids of one row: text, then each (kind, grid) as placeholders, then ``prompt``."""
    ids = _text(rng, 3)
    for kind, grid in parts:
        ids += _placeholders(rng, kind, grid) + _text(rng, 2)
    return ids + list(prompt)


def _inputs(rng, rows):
    """HF keyword inputs for rows of [(kind, (t, h, w))], as the processor gives them."""
    out = {}
    for kind, pix, grid_key in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        grids = [g for row in rows for k, g in row if k == kind]
        if grids:
            n = int(np.prod(grids, axis=1).sum())
            out[pix] = rng.standard_normal((n, PATCH_DIM)).astype(np.float32)
            out[grid_key] = np.asarray(grids, np.int64)
    return out


def _types(ids):
    """transformers' ``mm_token_type_ids``: 1 image, 2 video, 0 text (without them it gives 1-D
    positions)."""
    return np.where(ids == IMG, 1, np.where(ids == VID, 2, 0))


def _batch(rng, rows, prompt=(7, 8, 9)):
    """(input_ids [B, T], HF inputs) of rows of parts, rows of equal length (text first)."""
    ids = [_sample(rng, row, prompt) for row in rows]
    width = max(map(len, ids))
    return np.asarray([[5] * (width - len(r)) + r for r in ids]), _inputs(rng, rows)


# --- vision tower and positions ---------------------------------------------------------------

TOWER_GRIDS = {
    # a 6 x 10 and a 4 x 4 grid on the 4 x 4 position table, in one row of frames
    "images": ([[1, 6, 10], [1, 4, 4]], False),
    # a video of three frames, each in a row of its own
    "video": ([[3, 4, 6]], True),
}


@pytest.mark.parametrize("case", list(TOWER_GRIDS))
def test_vision_tower_matches_transformers(qwen, case):
    """Merged tokens and both DeepStack levels: transformers' ``pooler_output`` and
    ``deepstack_features``."""
    model, bb, _ = qwen
    grid, own_rows = TOWER_GRIDS[case]
    grid = np.asarray(grid)
    pixels = np.random.default_rng(1).standard_normal((int(grid.prod(-1).sum()), PATCH_DIM))
    pixels = pixels.astype(np.float32)
    with torch.no_grad():
        out = model.model.visual(torch.as_tensor(pixels), grid_thw=torch.as_tensor(grid))
    want = [out.pooler_output.numpy()] + [f.numpy() for f in out.deepstack_features]
    frames, start = [], 0
    for t, h, w in grid:
        for _ in range(t):
            frames.append((h, w, pixels[start : start + h * w]))
            start += h * w
    rows = [[f] for f in frames] if own_rows else [frames]
    lay = vision.frame_layout(bb.config.vision, rows)
    b, f, slots, _ = lay["pixels"].shape
    names = ("pixels", "segments", "positions", "pos_index", "pos_weight")
    args = [lay[k].reshape(b * f, slots, *lay[k].shape[3:]) for k in names]
    tower = vision.Qwen3VLVisionTower(bb.config.vision)
    merged, deep = jax.jit(tower.apply)({"params": bb.params["visual"]}, *args)
    counts = [sum(h * w for h, w, _ in row) // 4 for row in rows]
    for level, (g, w) in enumerate(zip((merged, *deep), want, strict=True)):
        g = np.asarray(g).reshape(b, -1, g.shape[-1])
        g = np.concatenate([g[r, lay["restore"][r, : counts[r]]] for r in range(b)])
        print(f"qwen3-vl tower {case} level {level}: {rel_err(g, w):.2e}")
        assert g.shape == w.shape and rel_err(g, w) <= TOL, (level, rel_err(g, w))


def _hf_rope(ids, mask=None, image_grid=None, video_grid=None):
    """transformers' ``Qwen3VLModel.get_rope_index`` (it reads only ``self.config`` and a
    helper of its own)."""
    config = hf.tiny_qwen3_vl_config()
    model = types.SimpleNamespace(
        config=config,
        get_vision_position_ids=lambda *a, **k: transformers.Qwen3VLModel.get_vision_position_ids(
            None, *a, **k
        ),
    )
    t = lambda x: None if x is None else torch.as_tensor(np.asarray(x))  # noqa: E731
    pos, deltas = transformers.Qwen3VLModel.get_rope_index(
        model,
        t(ids),
        t(_types(np.asarray(ids))),
        image_grid_thw=t(image_grid),
        video_grid_thw=t(video_grid),
        attention_mask=t(mask),
    )
    return pos.numpy(), deltas.numpy()


ROPE_CASES = {
    "two_images": [[("image", (1, 6, 10)), ("image", (1, 4, 4))]],
    "video": [[("video", (3, 4, 6))]],
    "batch_mixed": [[("image", (1, 4, 8)), ("video", (2, 6, 4))], [("video", (4, 4, 4))]],
}


@pytest.mark.parametrize("case", list(ROPE_CASES))
@pytest.mark.parametrize("padded", [False, True])
def test_rope_index_matches_transformers(case, padded):
    rng = np.random.default_rng(2)
    rows = ROPE_CASES[case]
    ids = [_sample(rng, row) for row in rows]
    width = max(map(len, ids)) + (2 if padded else 0)
    mask = np.asarray([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    ids = np.asarray([[0] * (width - len(r)) + r for r in ids])
    grids = {
        kind: np.asarray([g for row in rows for k, g in row if k == kind] or [[1, 2, 2]])
        for kind in ("image", "video")
    }
    image = grids["image"] if (ids == IMG).any() else None
    video = grids["video"] if (ids == VID).any() else None
    mask = mask if padded else None
    want_pos, want_deltas = _hf_rope(ids, mask, image, video)
    pos, deltas = rope.rope_index(ids, image, video, mask, image_token_id=IMG, video_token_id=VID)
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(deltas, want_deltas)


# --- the whole model --------------------------------------------------------------------------

MODEL_CASES = {
    # two images of different sizes (merged grids 3 x 5 and 2 x 2), resampled position tables
    "two_images": [[("image", (1, 6, 10)), ("image", (1, 4, 4))]],
    # a video of 3 temporal patches, timestamp text before each
    "video": [[("video", (3, 4, 6))]],
    # batch 2: an image and a video in one row (DeepStack tokens of both kinds), other counts
    "batch_2": [[("image", (1, 4, 8)), ("video", (2, 4, 4))], [("image", (1, 6, 6))]],
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_features_and_logits_match_transformers(qwen, case):
    """Head features of every layer (those under DeepStack included), hidden states and logits;
    in one case also early exit inside the DeepStack layers."""
    model, bb, _ = qwen
    rows = MODEL_CASES[case]
    ids, inputs = _batch(np.random.default_rng(3), rows)
    hf_inputs = {**inputs, "mm_token_type_ids": _types(ids), "attention_mask": np.ones_like(ids)}
    want, want_logits = hf.reference_head_features(model, ids, **hf_inputs)
    # the processor's output, unchanged; heads and hidden states from one pass
    got = features.features_one_prompt(bb, ids, hf_inputs, None, ("heads", "hidden"))
    heads = np.asarray(got["heads"])
    logits = np.asarray(features.logits(bb, ids, **inputs))
    errs = [rel_err(heads[:, layer], want[:, layer]) for layer in range(3)]
    logit_err = rel_err(logits, want_logits)
    print(f"qwen3-vl {case}: features by layer {errs}, logits {logit_err:.2e}")
    assert heads.shape == want.shape == (len(rows), 3, 4, 16)
    assert max(errs) <= TOL and logit_err <= TOL
    hidden = np.asarray(got["hidden"])
    assert rel_err(hidden, reference_hidden(model, ids, **hf_inputs)) <= TOL
    if case == "batch_2":  # early exit after layer 1, DeepStack's last
        part = np.asarray(hh.head_features(bb, ids, layers=(0, 1), **inputs))
        assert rel_err(part, want[:, :2]) <= TOL


def test_prefix_reuse_equals_full_passes(qwen):
    """Two prompts of different lengths after the same images and video: the prefix (with its
    DeepStack tokens) runs once, each prompt's suffix continues from its positions."""
    from headhunt_jax.features import head_features_prompts

    model, bb, _ = qwen
    rows = [[("image", (1, 4, 6)), ("video", (2, 4, 4))]] * 2
    inputs = _inputs(np.random.default_rng(4), rows)
    prompts = [  # the same text before the prompts (the same seed)
        np.asarray([_sample(np.random.default_rng(6), r, prompt) for r in rows])
        for prompt in [(7, 8), (9, 10, 11, 12)]
    ]
    for layers in [(0, 2), (1,)]:
        got = np.asarray(head_features_prompts(bb, prompts, layers=layers, **inputs))
        for m, ids in enumerate(prompts):
            want, _ = hf.reference_head_features(
                model, ids, mm_token_type_ids=_types(ids), **inputs
            )
            assert rel_err(got[m], want[:, list(layers)]) <= TOL, (layers, m)


@pytest.mark.slow
def test_heads_after_a_prefilled_prefix_and_traced_pixels(qwen):
    """``features_with_prefix`` (``generation.prefill`` of the frames, with their DeepStack
    tokens, then ``heads_after_prefix``) equals transformers' full pass; and the pixels may be
    traced: the jitted features equal the eager ones and the gradient a finite difference."""
    import jax.numpy as jnp

    from headhunt_jax.explain import features_with_prefix

    model, bb, _ = qwen
    rng = np.random.default_rng(10)
    rows = [[("image", (1, 4, 6)), ("video", (2, 4, 4))]]
    ids, inputs = _batch(rng, rows)
    got, _ = features_with_prefix(bb, ids, ids.shape[1] - 3, (0, 1, 2), **inputs)
    want, _ = hf.reference_head_features(model, ids, mm_token_type_ids=_types(ids), **inputs)
    assert rel_err(got["heads"], want) <= TOL
    px, grid = inputs.pop("pixel_values"), inputs.pop("image_grid_thw")

    def heads(px):
        return hh.head_features(bb, ids, px, image_grid_thw=grid, **inputs)

    eager = np.asarray(heads(px))
    assert rel_err(np.asarray(jax.jit(heads)(px)), eager) <= 1e-5
    objective = lambda px: jnp.sum(heads(px)[:, 1:] ** 2)  # noqa: E731
    grad = jax.grad(objective)(jnp.asarray(px))
    direction = rng.standard_normal(px.shape).astype(np.float32)
    eps = 1e-3
    fd = (objective(px + eps * direction) - objective(px - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=2e-3)


def _torch_generate(model, ids, mask, new, **inputs):
    kwargs = {k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.as_tensor(ids),
            attention_mask=torch.as_tensor(mask),
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=[],
            pad_token_id=0,
            mm_token_type_ids=torch.as_tensor(_types(ids)),
            **kwargs,
        )
    return out[:, ids.shape[1] :].numpy()


def test_greedy_decoding_matches_transformers(qwen):
    """Two left-padded prompts (an image; a timestamped video): the tokens equal transformers'
    ``generate``; a prefix prefilled once (DeepStack in its keys and values) then a question
    gives the whole prompt's tokens."""
    model, bb, _ = qwen
    rng = np.random.default_rng(5)
    rows = [[("image", (1, 4, 6))], [("video", (2, 4, 4))]]
    ids = [_sample(rng, row, prompt) for row, prompt in zip(rows, [(7,) * 6, (8, 9)], strict=True)]
    width = max(map(len, ids))
    mask = np.asarray([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    ids = np.asarray([[0] * (width - len(r)) + r for r in ids])
    inputs = _inputs(rng, rows)
    want = _torch_generate(model, ids, mask, 12, **inputs)
    got = generate(bb, ids, 12, attention_mask=mask, eos_token_id=(), pad_token_id=0, **inputs)
    np.testing.assert_array_equal(got.tokens, want)
    video = {k: v for k, v in inputs.items() if "video" in k}
    head = np.asarray([_sample(rng, rows[1], ())])
    cache = prefill(bb, head, **video)
    question = [10, 11, 12]
    whole = np.concatenate([head, [question]], axis=1)
    reused = generate(bb, np.asarray([question]), 12, eos_token_id=(), prefix=cache)
    want = _torch_generate(model, whole, np.ones_like(whole), 12, **video)
    np.testing.assert_array_equal(reused.tokens, want)


def test_converted_checkpoint_gives_the_same_features(qwen, tmp_path):
    """``convert`` (orbax) and back: the stacked tower, its mergers and the decoder restore
    exactly."""
    _, bb, _ = qwen
    ids, inputs = _batch(np.random.default_rng(7), MODEL_CASES["two_images"])
    again = hh.load_backbone(backbone.save_converted(bb, tmp_path / "converted"))
    assert again.config == bb.config
    np.testing.assert_array_equal(
        np.asarray(hh.head_features(again, ids, **inputs)),
        np.asarray(hh.head_features(bb, ids, **inputs)),
    )


def test_inputs_that_do_not_fit_are_refused(qwen):
    _, bb, _ = qwen
    rng = np.random.default_rng(0)
    rows = [[("video", (2, 4, 4))]]
    ids = np.asarray([_sample(rng, rows[0])])
    good = _inputs(rng, rows)
    for bad, match in [
        ({"video_grid_thw": np.asarray([[1, 8, 4]])}, "one run a temporal patch"),
        ({"video_grid_thw": np.asarray([[2, 4, 8]])}, "need"),
        ({"pixel_values_videos": good["pixel_values_videos"][:8]}, "need"),
        ({"video_grid_thw": np.asarray([[2, 3, 4]])}, "multiples"),
        ({"attention_mask": np.zeros_like(ids)}, "padded"),
        ({"mm_token_type_ids": np.zeros_like(ids)}, "mm_token_type_ids"),
        ({"pixel_values": good["pixel_values_videos"]}, "go together"),
        ({"second_per_grid_ts": np.ones(1)}, "not second_per_grid_ts"),
    ]:
        with pytest.raises(ValueError, match=match):
            hh.head_features(bb, ids, **{**good, **bad})
    with pytest.raises(ValueError, match="no pixel_values_videos"):
        hh.head_features(bb, ids)


# --- meshes -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(EIGHT_DEVICES, reason="already on 8 devices")
def test_on_8_simulated_devices():
    run_on_8_devices(__file__)


@on_mesh
@pytest.mark.parametrize("shape", [(4, 2), (2, 4)])
def test_on_mesh_qwen3_vl_matches_one_device(qwen, shape):
    """A batch of 4 rows (images and video) split over 'data', the weights over 'model': the
    features and the prefix reuse of one device."""
    from headhunt_jax.features import head_features_prompts

    _, one, path = qwen
    rows = [[("image", (1, 4, 6)), ("video", (2, 4, 4))]] * 4
    inputs = _inputs(np.random.default_rng(8), rows)
    prompts = [
        np.asarray([_sample(np.random.default_rng(9), r, p) for r in rows])
        for p in [(7, 8), (9, 10, 11)]
    ]
    bb = hh.load_backbone(path, mesh=sharding.make_mesh(*shape))
    want = np.asarray(hh.head_features(one, prompts[0], **inputs))
    got = np.asarray(hh.head_features(bb, prompts[0], **inputs))
    assert got.shape == want.shape and rel_err(got, want) <= 1e-5
    got = np.asarray(head_features_prompts(bb, prompts, layers=(1, 2), **inputs))
    for m, ids in enumerate(prompts):
        want = np.asarray(hh.head_features(one, ids, layers=(1, 2), **inputs))
        assert rel_err(got[m], want) <= 1e-5


# --- configs ----------------------------------------------------------------------------------


def test_interleaved_sections_follow_transformers_rotary():
    """Each rotary frequency takes the axis transformers' ``Qwen3VLTextRotaryEmbedding`` gives
    it, for the released sections and others."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    from headhunt_jax.models.decoder import mrope_axes

    for section, head_dim in [
        ((24, 20, 20), 128),
        ((2, 3, 3), 16),
        ((6, 5, 5), 32),
        ((4, 2, 2), 16),
    ]:
        rope_parameters = {
            "rope_type": "default",
            "mrope_section": list(section),
            "rope_theta": 1e4,
        }
        text = transformers.Qwen3VLTextConfig(head_dim=head_dim, rope_parameters=rope_parameters)
        freq = torch.arange(3, dtype=torch.float32)[:, None, None, None].expand(
            3, 1, 1, head_dim // 2
        )
        want = Qwen3VLTextRotaryEmbedding(text).recomposition_frequencies(freq.clone())
        cfg = types.SimpleNamespace(mrope_section=interleaved_sections(section, head_dim // 2))
        np.testing.assert_array_equal(mrope_axes(cfg), want[0, 0, : head_dim // 2].numpy())


def _released(size: str) -> dict:
    """A config.json in the released files' layout (transformers 4.57: ``rope_scaling`` with
    ``rope_theta`` beside it, the tower's model_type 'qwen3_vl'), with the preset's shapes."""
    cfg = PRESETS[size]
    v, t = cfg.vision, cfg.text
    vision = {
        "model_type": "qwen3_vl",
        "depth": v.depth,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads,
        "out_hidden_size": v.out_hidden_size,
        "deepstack_visual_indexes": list(v.deepstack_visual_indexes),
        "hidden_act": "gelu_pytorch_tanh",
        "num_position_embeddings": 2304,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    text = {
        "model_type": "qwen3_vl_text",
        "vocab_size": 151936,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_scaling": {
            "mrope_interleaved": True,
            "mrope_section": [24, 20, 20],
            "rope_type": "default",
        },
        "rope_theta": 5000000,
        "tie_word_embeddings": t.tie_word_embeddings,
    }
    return {
        "model_type": "qwen3_vl",
        "text_config": text,
        "vision_config": vision,
        "tie_word_embeddings": t.tie_word_embeddings,
        **{k: v for k, v in dataclasses.asdict(cfg).items() if k.endswith("token_id")},
    }


def test_config_from_hf_reads_both_layouts_and_refuses_what_it_cannot_do():
    for size in PRESETS:
        cfg = _released(size)
        assert backbone.config_from_hf(cfg) == PRESETS[size]
        # transformers v5 writes the same model in its own layout
        v5 = transformers.Qwen3VLConfig(**json.loads(json.dumps(cfg))).to_dict()
        assert Qwen3VLConfig.from_hf(v5) == PRESETS[size], size
    base = _released("Qwen3-VL-2B")
    for change, match in [
        (("text_config", "rope_scaling", "mrope_interleaved", False), "mrope_interleaved"),
        (("text_config", "rope_scaling", "mrope_section", [24, 20, 24]), "mrope_section"),
        (("text_config", "rope_scaling", "rope_type", "yarn"), "rope_type"),
        (("text_config", "hidden_act", "gelu"), "hidden_act"),
        (("vision_config", "deepstack_visual_indexes", [5, 24]), "deepstack"),
        (("vision_config", "num_position_embeddings", 2300), "square"),
        (("vision_config", "out_hidden_size", 1024), "out_hidden_size"),
        (("vision_config", "hidden_act", "relu6"), "hidden_act"),
        (("vision_config", "model_type", "siglip"), "model_type"),
    ]:
        cfg = json.loads(json.dumps(base))
        *path, key, value = change
        inner = cfg
        for p in path:
            inner = inner[p]
        inner[key] = value
        with pytest.raises(ValueError, match=match):
            Qwen3VLConfig.from_hf(cfg)
    with pytest.raises(ValueError, match="needs a text_config"):
        Qwen3VLConfig.from_hf({"model_type": "qwen3_vl", "vision_config": {}})
