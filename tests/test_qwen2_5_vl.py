"""Qwen2.5-VL pieces: the vision tower against transformers'
``Qwen2_5_VisionTransformerPretrainedModel`` on tiny random configs, the 3-D rotary positions
against ``Qwen2_5_VLModel.get_rope_index`` and the pixels against ``Qwen2VLImageProcessorPil`` on
decoded frames of real clips.

Error measure: max |jax - torch| / max |torch| (float32, eager attention).
"""

import dataclasses

import numpy as np
import pytest
import torch
from numerics import rel_err

transformers = pytest.importorskip("transformers")

from headhunt_jax.backbones.qwen2_5_vl import vision  # noqa: E402
from headhunt_jax.backbones.qwen2_5_vl.config import (  # noqa: E402
    VISION_PRESETS,
    Qwen25VisionConfig,
)

TOL = 1e-4


def tiny_vision(**kw):
    # patch 2, merge 2, window 8 px: windows of 2 x 2 merged tokens (4 x 4 patches)
    base = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=40,
        num_heads=4,
        patch_size=2,
        temporal_patch_size=2,
        spatial_merge_size=2,
        window_size=8,
        fullatt_block_indexes=[1],
        out_hidden_size=24,
        in_channels=3,
        hidden_act="silu",
        tokens_per_second=2,
    )
    base.update(kw)
    return base


def build_tower(vision_cfg: dict, seed=0):
    torch.manual_seed(seed)
    config = transformers.Qwen2_5_VLVisionConfig(**vision_cfg)
    config._attn_implementation = "eager"
    model = transformers.Qwen2_5_VisionTransformerPretrainedModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


# Two images whose merged grids (3 x 5, 2 x 4) need border windows and a whole padding window,
# and a three-frame video (each frame its own full-attention segment).
GRIDS = {
    "two_images": [[1, 6, 10], [1, 4, 8]],
    "video": [[3, 6, 4]],
    "mixed": [[1, 4, 8], [2, 10, 6]],
}


def tower_params(model, cfg):
    """The tower's HF tensors (``visual.`` keys, as in a checkpoint) -> its Flax params through
    the family's key table."""
    import flax
    import jax

    from headhunt_jax import weights
    from headhunt_jax.backbones.qwen2_5_vl.params import KEYS

    tower = vision.Qwen25VisionTower(cfg)
    lay = vision.batch_layout(cfg, [[((1, 2, 2), np.zeros((4, cfg.patch_dim), np.float32))]])
    args = (lay["pixels"][0], lay["segments"][0], lay["positions"][0])
    shapes = jax.eval_shape(lambda: tower.init(jax.random.key(0), *args))["params"]
    shapes = flax.traverse_util.flatten_dict(flax.core.meta.unbox(shapes), sep="/")
    tensors = (("visual." + k, v.numpy()) for k, v in model.state_dict().items())
    expected = {"visual/" + k: v.shape for k, v in shapes.items()}
    flat = weights.convert(tensors, expected, np.float32, "tower", table=KEYS)
    flat = {k.removeprefix("visual/"): v for k, v in flat.items()}
    return tower, flax.traverse_util.unflatten_dict(flat, sep="/")


def run_tower(tower, params, pixels, grid, rows=None):
    """The tower over each row's items (default: all in one row) -> the merged tokens of all
    items in order, as transformers' ``pooler_output``."""
    cfg = tower.cfg
    grids = vision.grids(grid)
    ends = np.cumsum([0] + [t * h * w for t, h, w in grids])
    items = [(g, pixels[ends[i] : ends[i + 1]]) for i, g in enumerate(grids)]
    rows = rows or [len(items)]
    split = np.cumsum([0, *rows])
    lay = vision.batch_layout(cfg, [items[a:b] for a, b in zip(split, split[1:], strict=False)])
    b, k, slots, d = lay["pixels"].shape
    merged = tower.apply(
        {"params": params},
        lay["pixels"].reshape(b * k, slots, d),
        lay["segments"].reshape(b * k, slots),
        lay["positions"].reshape(b * k, slots, 2),
    )
    merged = np.asarray(merged).reshape(b, -1, merged.shape[-1])
    out = [
        merged[r, lay["restore"][r, : sum(vision.merged_tokens(cfg, g) for g, _ in row)]]
        for r, row in enumerate(items[a:b] for a, b in zip(split, split[1:], strict=False))
    ]
    return np.concatenate(out)


@pytest.mark.parametrize("grids", list(GRIDS))
def test_vision_tower_matches_transformers(grids):
    raw = tiny_vision()
    model = build_tower(raw)
    cfg = Qwen25VisionConfig.from_hf(raw)
    grid = np.asarray(GRIDS[grids], np.int64)
    n = int(grid.prod(-1).sum())
    pixels = np.random.default_rng(1).standard_normal((n, cfg.patch_dim)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.as_tensor(pixels), grid_thw=torch.as_tensor(grid)).pooler_output
    want = want.numpy()
    tower, params = tower_params(model, cfg)
    got = run_tower(tower, params, pixels, grid)
    assert got.shape == want.shape
    err = rel_err(got, want)
    print(f"vision {grids}: rel err {err:.2e}")
    assert err <= TOL
    if len(grid) > 1:  # the items in rows of their own: the same tokens
        assert rel_err(run_tower(tower, params, pixels, grid, [1] * len(grid)), want) <= TOL


def test_window_index_matches_transformers():
    from transformers.vision_utils import get_vision_window_index

    cfg = Qwen25VisionConfig.from_hf(tiny_vision())
    grid = np.asarray([[1, 6, 10], [1, 4, 8], [3, 6, 4]])
    want_index, want_cu = get_vision_window_index(
        torch.as_tensor(grid), spatial_merge_size=2, window_size=8, patch_size=2
    )
    index, sizes, offset = [], [], 0
    for g in vision.grids(grid):
        windows = vision.window_index(cfg, g)
        index += [w[w >= 0] + offset for w in windows]
        sizes += [int((w >= 0).sum()) for w in windows]
        offset += vision.merged_tokens(cfg, g)
    np.testing.assert_array_equal(np.concatenate(index), want_index.numpy())
    cu = np.concatenate([[0], np.cumsum(sizes) * cfg.merge_unit])
    np.testing.assert_array_equal(cu, want_cu.numpy())


# --- 3-D rotary positions -------------------------------------------------------------------

IMG, VID, START, END = 151655, 151656, 151652, 151653


def _hf_rope(ids, mask=None, image_grid=None, video_grid=None, seconds=None, tps=2):
    """transformers' ``get_rope_index`` (it reads only ``self.config`` and a static helper)."""
    import types

    config = transformers.Qwen2_5_VLConfig(vision_config=tiny_vision(tokens_per_second=tps))
    model = types.SimpleNamespace(
        config=config,
        get_vision_position_ids=lambda *a, **k: (
            transformers.Qwen2_5_VLModel.get_vision_position_ids(None, *a, **k)
        ),
    )
    ids_t = torch.as_tensor(ids)
    mm = (ids_t == IMG).int() + 2 * (ids_t == VID).int()

    def t(x, dtype=None):
        return None if x is None else torch.as_tensor(np.asarray(x), dtype=dtype)

    pos, deltas = transformers.Qwen2_5_VLModel.get_rope_index(
        model,
        ids_t,
        mm,
        image_grid_thw=t(image_grid),
        video_grid_thw=t(video_grid),
        second_per_grid_ts=t(seconds, torch.float32),
        attention_mask=t(mask),
    )
    return pos.numpy(), deltas.numpy()


def _vision_run(token, grid, merge=2):
    tt, h, w = grid
    return [START] + [token] * (tt * (h // merge) * (w // merge)) + [END]


def _text(n, seed):
    return list(np.random.default_rng(seed).integers(0, 1000, n))


CASES = {
    "text_only": dict(rows=[_text(9, 0)]),
    "one_image": dict(
        rows=[_text(3, 1) + _vision_run(IMG, (1, 6, 10)) + _text(4, 2)], image_grid=[[1, 6, 10]]
    ),
    "two_images": dict(
        rows=[
            _text(2, 3)
            + _vision_run(IMG, (1, 6, 10))
            + _text(3, 4)
            + _vision_run(IMG, (1, 4, 8))
            + _text(2, 5)
        ],
        image_grid=[[1, 6, 10], [1, 4, 8]],
    ),
    # tokens_per_second 2 * 0.75 s: temporal 0, 1, 3, 4 (truncated), past the spatial extent
    "video_seconds": dict(
        rows=[_text(3, 6) + _vision_run(VID, (4, 6, 4)) + _text(3, 7)],
        video_grid=[[4, 6, 4]],
        seconds=[0.75],
    ),
    "batch_left_padding": dict(
        rows=[
            [0] * 5 + _text(2, 8) + _vision_run(IMG, (1, 4, 8)) + _text(3, 9),
            _text(1, 10) + _vision_run(VID, (2, 4, 4)) + _text(2, 11) + _vision_run(IMG, (1, 4, 4)),
        ],
        pad=[5, 0],
        image_grid=[[1, 4, 8], [1, 4, 4]],
        video_grid=[[2, 4, 4]],
        seconds=[2.0],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rope_index_matches_transformers(case):
    from headhunt_jax.backbones.qwen2_5_vl.rope import rope_index

    c = CASES[case]
    width = max(len(r) for r in c["rows"])
    ids = np.zeros((len(c["rows"]), width), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(c["rows"]):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    for i, p in enumerate(c.get("pad", [])):
        mask[i, width - len(c["rows"][i]) : width - len(c["rows"][i]) + p] = 0
    mask_arg = mask if "pad" in c else None
    grids = dict(
        image_grid=c.get("image_grid"), video_grid=c.get("video_grid"), seconds=c.get("seconds")
    )
    want_pos, want_deltas = _hf_rope(ids, mask_arg, **grids)
    cfg = Qwen25VisionConfig.from_hf(tiny_vision())
    pos, deltas = rope_index(
        ids, grids["image_grid"], grids["video_grid"], grids["seconds"], mask_arg, **_merge(cfg)
    )
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(deltas, want_deltas)
    assert pos.shape == (3, *ids.shape) and deltas.shape == (ids.shape[0], 1)


def _merge(cfg) -> dict:
    """What ``rope_index`` reads of a vision config."""
    return dict(spatial_merge_size=cfg.spatial_merge_size, tokens_per_second=cfg.tokens_per_second)


def test_rope_index_next_text_max_follows_the_largest_position():
    """transformers v4 / vLLM: the text after a video starts past its largest temporal position
    (3 text tokens and vision_start: the video starts at 4; temporal 4 + (0, 1, 3, 4), rows
    4 + (0, 1, 2); vision_end then at 8 + 1 = 9, not at 4 + max(3, 2) = 7 as in transformers v5);
    for images both rules agree."""
    from headhunt_jax.backbones.qwen2_5_vl.rope import rope_index

    cfg = Qwen25VisionConfig.from_hf(tiny_vision())
    c = CASES["video_seconds"]
    ids = np.asarray(c["rows"])
    pos, _ = rope_index(
        ids, None, c["video_grid"], c["seconds"], None, **_merge(cfg), next_text="max"
    )
    assert pos[:, 0, -4:].tolist() == [[9, 10, 11, 12]] * 3
    spatial, _ = rope_index(ids, None, c["video_grid"], c["seconds"], None, **_merge(cfg))
    assert spatial[:, 0, -4:].tolist() == [[7, 8, 9, 10]] * 3
    c = CASES["two_images"]
    ids = np.asarray(c["rows"])
    a, _ = rope_index(ids, c["image_grid"], None, None, None, **_merge(cfg), next_text="max")
    b, _ = rope_index(ids, c["image_grid"], None, None, None, **_merge(cfg))
    np.testing.assert_array_equal(a, b)


# --- pixels ---------------------------------------------------------------------------------


def _decoded(name, count, stride=7):
    import av

    from headhunt_jax.synthetic import footage_dir

    frames = []
    with av.open(str(footage_dir() / name)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % stride == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


@pytest.mark.parametrize(
    "clip, limits",
    [
        ("bigbuckbunny.mp4", {}),  # 1280 x 720: rounded to 1288 x 728, under the default max
        ("bikes.mp4", {"max_pixels": 128 * 28 * 28}),  # 640 x 272 scaled down to the max
        ("carphone_pristine.mp4", {"min_pixels": 300 * 28 * 28}),  # 176 x 144 scaled up
        ("carphone_distorted.mp4", {}),
    ],
)
def test_image_pixels_match_the_transformers_processor(clip, limits):
    from headhunt_jax.backbones.qwen2_5_vl import processor_pixels as pp

    frames = _decoded(clip, 2)
    cfg = VISION_PRESETS["qwen2.5-vl-7b"]
    processor = transformers.Qwen2VLImageProcessorPil(**limits)
    want = processor(images=list(frames), return_tensors="np")
    pixels, grid = pp.image_pixels(frames, cfg, **limits)
    np.testing.assert_array_equal(grid, want["image_grid_thw"])
    assert pixels.dtype == np.float32 and pixels.shape == want["pixel_values"].shape
    err = np.abs(pixels - want["pixel_values"]).max()
    print(f"pixels {clip} {frames.shape[1:3]} -> grid {grid[0].tolist()}: max abs err {err:.1e}")
    assert err <= 1e-6
    h, w = frames.shape[1:3]
    tokens = pp.image_tokens(cfg, h, w, **limits)
    assert tokens * len(frames) == int(want["image_grid_thw"].prod(-1).sum()) // 4
    assert tokens == processor.get_number_of_image_patches(h, w, limits) // 4


def test_smart_resize_matches_transformers_and_token_counts():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf

    from headhunt_jax.backbones.qwen2_5_vl import processor_pixels as pp

    rng = np.random.default_rng(0)
    for h, w in [(240, 320), (720, 1280), (1, 150), (27, 29), *rng.integers(20, 4000, (50, 2))]:
        for limits in ({}, {"min_pixels": 128 * 28 * 28, "max_pixels": 512 * 28 * 28}):
            assert pp.smart_resize(int(h), int(w), 28, **limits) == hf(int(h), int(w), 28, **limits)
    cfg = VISION_PRESETS["qwen2.5-vl-3b"]
    # 16 frames, each one image, at the processor's default min/max pixels
    assert 16 * pp.image_tokens(cfg, 240, 320) == 16 * 99  # 252 x 308 px: 9 x 11 tokens
    assert 16 * pp.image_tokens(cfg, 720, 1280) == 16 * 1196  # 728 x 1288 px: 26 x 46 tokens
    with pytest.raises(ValueError, match="aspect ratio"):
        pp.smart_resize(1, 300)


# --- config ---------------------------------------------------------------------------------


def test_config_from_hf_reads_released_vision_configs_and_refuses_what_it_cannot_do():
    released = {  # Qwen2.5-VL-7B-Instruct config.json's vision_config
        "depth": 32,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "hidden_act": "silu",
        "hidden_size": 1280,
        "in_channels": 3,
        "in_chans": 3,
        "initializer_range": 0.02,
        "intermediate_size": 3420,
        "model_type": "qwen2_5_vl",
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "torch_dtype": "bfloat16",
        "window_size": 112,
    }
    cfg = Qwen25VisionConfig.from_hf(released)
    assert cfg == VISION_PRESETS["qwen2.5-vl-7b"]
    assert (
        Qwen25VisionConfig.from_hf({**released, "out_hidden_size": 2048})
        == VISION_PRESETS["qwen2.5-vl-3b"]
    )
    assert Qwen25VisionConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    assert (cfg.head_dim, cfg.patch_dim, cfg.window_merged) == (80, 1176, 4)
    # what transformers itself builds from the same dict
    hf = transformers.Qwen2_5_VLConfig(vision_config=released).vision_config
    assert Qwen25VisionConfig.from_hf(hf.to_dict()) == cfg
    for bad, match in [
        ({"hidden_act": "relu6"}, "hidden_act"),
        ({"model_type": "siglip_vision_model"}, "model_type"),
        ({"patch_size": [14, 14], "spatial_patch_size": [14, 14]}, "patch_size"),
        ({"num_heads": 12}, "multiple"),
        ({"fullatt_block_indexes": [32]}, "out of range"),
        ({"window_size": 14}, "window_size"),
        ({"rope_parameters": {"rope_type": "default"}}, "rope_type"),
    ]:
        with pytest.raises(ValueError, match=match):
            Qwen25VisionConfig.from_hf({**released, **bad})


# --- the whole model ------------------------------------------------------------------------

hf = pytest.importorskip("hf_reference")
Q = hf.QWEN_VL_TOKENS


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A tiny Qwen2.5-VL (GQA) saved by ``save_pretrained`` and read by ``load_backbone``."""
    import headhunt_jax as hh

    model = hf.build(hf.tiny_qwen2_5_vl_config())
    path = hf.save(model, tmp_path_factory.mktemp("qwen") / "ckpt")
    return model, hh.load_backbone(path)


def _run(kind, grid):
    t, h, w = grid
    token = Q["image_token_id"] if kind == "image" else Q["video_token_id"]
    return [Q["vision_start_token_id"]] + [token] * (t * h * w // 4) + [Q["vision_end_token_id"]]


def _sample(rng, parts, prompt=(7, 8, 9)):
    """input_ids of one row: text, then each (kind, grid) as a placeholder run, then ``prompt``."""
    ids = list(rng.integers(0, 290, 3))
    for kind, grid in parts:
        ids += _run(kind, grid) + list(rng.integers(0, 290, 2))
    return ids + list(prompt)


def _inputs(rng, rows, seconds=None):
    """HF keyword inputs for rows of [(kind, (t, h, w))] (grids in temporal patches: a video's
    pixel rows hold two frames each), as the processor gives them."""
    patch_dim = 3 * 2 * 2 * 2
    out = {}
    for kind, pix, grid_key in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        grids = [g for row in rows for k, g in row if k == kind]
        if grids:
            n = int(np.prod(grids, axis=1).sum())
            out[pix] = rng.standard_normal((n, patch_dim)).astype(np.float32)
            out[grid_key] = np.asarray(grids, np.int64)
    if seconds is not None:
        out["second_per_grid_ts"] = np.asarray(seconds, np.float32)
    return out


def _types(ids):
    """transformers' ``mm_token_type_ids`` (without them it gives 1-D positions)."""
    return np.where(ids == Q["image_token_id"], 1, np.where(ids == Q["video_token_id"], 2, 0))


MODEL_CASES = {
    # two images of different sizes, their merged grids 3 x 5 and 2 x 2: padded border windows
    "two_images": ([[("image", (1, 6, 10)), ("image", (1, 4, 4))]], None),
    # a video of 3 temporal patches, 0.75 s each: temporal positions scaled and truncated
    "video_seconds": ([[("video", (3, 4, 6))]], [0.75]),
    # batch 2: rows with other items and counts, an image and a video in one row
    "batch_2": (
        [[("image", (1, 4, 8)), ("video", (2, 4, 4))], [("image", (1, 6, 6))]],
        [1.5],
    ),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_features_and_logits_match_transformers(qwen, case):
    import headhunt_jax as hh
    from headhunt_jax import features

    model, bb = qwen
    rows, seconds = MODEL_CASES[case]
    rng = np.random.default_rng(3)
    ids = [_sample(rng, row) for row in rows]
    width = max(map(len, ids))
    ids = np.asarray([[5] * (width - len(r)) + r for r in ids])  # rows of equal length: text first
    inputs = _inputs(rng, rows, seconds)
    hf_inputs = {**inputs, "mm_token_type_ids": _types(ids), "attention_mask": np.ones_like(ids)}
    want, want_logits = hf.reference_head_features(model, ids, **hf_inputs)
    got = np.asarray(hh.head_features(bb, ids, **hf_inputs))  # the processor's output, unchanged
    logits = np.asarray(features.logits(bb, ids, **inputs))
    err, logit_err = rel_err(got, want), rel_err(logits, want_logits)
    print(f"qwen2.5-vl {case}: features {err:.2e}, logits {logit_err:.2e}")
    assert got.shape == want.shape == (len(rows), 3, 4, 16)
    assert err <= TOL and logit_err <= TOL
    layers = (0, 2)  # early exit at the deepest layer asked for
    part = np.asarray(hh.head_features(bb, ids, layers=layers, **inputs))
    assert rel_err(part, want[:, list(layers)]) <= TOL


def test_prefix_reuse_keeps_the_m_rope_positions(qwen):
    """Two prompts of different lengths after a video whose scaled temporal positions pass its
    spatial extent: each prompt's suffix continues from the prefix's positions."""
    from headhunt_jax.features import head_features_prompts

    model, bb = qwen
    rng = np.random.default_rng(4)
    rows = [[("image", (1, 4, 4)), ("video", (3, 4, 4))]] * 2
    inputs = _inputs(rng, rows, [2.0, 2.0])
    prompts = [  # the same text before the prompts (the same seed)
        np.asarray([_sample(np.random.default_rng(6), r, prompt) for r in rows])
        for prompt in [(7, 8), (9, 10, 11, 12)]
    ]
    got = np.asarray(head_features_prompts(bb, prompts, layers=(1, 2), **inputs))
    for m, ids in enumerate(prompts):
        want, _ = hf.reference_head_features(model, ids, mm_token_type_ids=_types(ids), **inputs)
        assert rel_err(got[m], want[:, [1, 2]]) <= TOL


def test_inputs_that_do_not_fit_are_refused(qwen):
    import headhunt_jax as hh

    _, bb = qwen
    rng = np.random.default_rng(0)
    rows = [[("image", (1, 4, 4))]]
    ids = np.asarray([_sample(rng, rows[0])])
    good = _inputs(rng, rows)
    for bad, match in [
        ({"image_grid_thw": np.asarray([[1, 4, 8]])}, "need"),
        ({"pixel_values": good["pixel_values"][:8]}, "need"),
        ({"image_grid_thw": np.asarray([[1, 3, 4]])}, "multiples"),
        ({"attention_mask": np.zeros_like(ids)}, "padded"),
        ({"pixel_values_videos": good["pixel_values"]}, "go together"),
        ({"image_sizes": np.asarray([[4, 4]])}, "not image_sizes"),
    ]:
        with pytest.raises(ValueError, match=match):
            hh.head_features(bb, ids, **{**good, **bad})
    with pytest.raises(ValueError, match="no pixel_values"):
        hh.head_features(bb, ids)


# --- processor and extraction ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """The demo's tiny Qwen2.5-VL checkpoint (frames of at most 16 tokens)."""
    import headhunt_jax as hh
    from headhunt_jax import tiny_checkpoints

    path = tmp_path_factory.mktemp("tiny_qwen") / "ckpt"
    tiny_checkpoints.write("qwen2.5-vl", path, ["Anything odd here?"])
    return hh.load_backbone(path)


def test_prompt_ids_follow_the_chat_template(tiny_qwen):
    """The token sequence: transformers' ``apply_chat_template`` with the released template on
    the same messages, each pad then expanded to its grid's tokens."""
    from headhunt_jax.backbones.qwen2_5_vl import processor as qp

    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tiny_qwen.processor().tokenizer)
    prompt = "Anything odd here?"
    for mode, content in (
        ("images", [{"type": "image"}] * 3),
        ("video", [{"type": "video"}]),
    ):
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]
        text = tok.apply_chat_template(
            messages, chat_template=qp.CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        assert text == qp.chat_text(prompt, 3, mode)
        proc = tiny_qwen.processor(mode=mode)
        ids = proc.prompt_ids(prompt, 3, (56, 84))  # 2 x 3 merged tokens a temporal patch
        pad = qp.IMAGE_PAD if mode == "images" else qp.VIDEO_PAD
        n = 6 * (3 if mode == "images" else 2)  # 3 images, or 3 frames in 2 temporal patches
        want = tok(text.replace(pad, pad * (n if mode == "video" else 6)))["input_ids"]
        assert ids.tolist() == want and int((ids == tok.convert_tokens_to_ids(pad)).sum()) == n
    with pytest.raises(ValueError, match="multiples of 28"):
        tiny_qwen.processor().prompt_ids(prompt, 3, (50, 84))
    with pytest.raises(ValueError, match="takes mode only"):
        tiny_qwen.processor(frames=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        tiny_qwen.processor(mode="clips")


def test_reader_pixels_match_the_transformers_image_processor(tiny_qwen):
    """Frames of a real clip as ``VideoReader`` resizes them by the processor's rule, through
    ``vision_inputs``: transformers' ``Qwen2VLImageProcessorPil`` on the same decoded frames."""
    from headhunt_jax.synthetic import footage_dir
    from headhunt_jax.video import VideoReader

    path = footage_dir() / "bikes.mp4"
    proc = tiny_qwen.processor()
    with VideoReader(path, frames_per_segment=4, segment_length=48, **proc.frames) as reader:
        seg = next(iter(reader))
    frames = _decoded("bikes.mp4", 48, stride=1)[seg.frame_indices]
    limits = {"min_pixels": proc.min_pixels, "max_pixels": proc.max_pixels}
    want = transformers.Qwen2VLImageProcessorPil(**limits)(images=list(frames), return_tensors="np")
    got = proc.vision_inputs(seg.pixels[None])
    np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
    assert np.abs(got["pixel_values"] - want["pixel_values"]).max() <= 1e-6


def test_video_mode_pairs_frames_into_temporal_patches(tiny_qwen):
    """A video whose frames come in equal pairs has the patches of its even frames as images
    (the image processor's layout, checked against transformers above); an odd count repeats
    the last frame; second_per_grid_ts is two frame intervals."""
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((1, 3, 3, 56, 84)).astype(np.float32)
    pairs = np.repeat(frames, 2, axis=1)  # 6 frames: 3 equal pairs
    video = tiny_qwen.processor(mode="video").vision_inputs(pairs, np.asarray([0.1]))
    images = tiny_qwen.processor().vision_inputs(frames)
    np.testing.assert_array_equal(video["pixel_values_videos"], images["pixel_values"])
    assert video["video_grid_thw"].tolist() == [[3, 4, 6]]
    np.testing.assert_allclose(video["second_per_grid_ts"], [0.2])
    odd = tiny_qwen.processor(mode="video").vision_inputs(pairs[:, :5], np.asarray([0.1]))
    np.testing.assert_array_equal(odd["pixel_values_videos"], images["pixel_values"])


def _clips(tmp_path, rates=(24, 24)):
    """Two clips of other sizes, 100 frames each (two 48-frame segments), at ``rates`` fps."""
    import av

    paths = []
    sizes = (("small.mp4", (96, 64)), ("wide.mp4", (160, 90)))
    for (name, (w, h)), rate in zip(sizes, rates, strict=True):
        paths.append(tmp_path / name)
        with av.open(str(paths[-1]), "w") as out:
            stream = out.add_stream("mpeg4", rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for i in range(100):
                img = np.full((h, w, 3), (i * 5) % 255, np.uint8)
                img[: h // 2, : w // 3] = 200 - i
                out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(stream.encode())
    return paths


def test_detector_extracts_with_the_mode_it_was_fitted_on(tmp_path, tiny_qwen):
    from headhunt_jax import detection, fitting
    from headhunt_jax.extract import extract_features
    from headhunt_jax.store import FeatureStore

    paths = _clips(tmp_path)
    kw = dict(frames_per_segment=4, segment_length=48, batch_size=2, progress=False)
    extract_features(
        tiny_qwen,
        paths,
        "Anything odd here?",
        tmp_path / "train",
        labels={"small.mp4": 0, "wide.mp4": 1},
        processor_options={"mode": "video"},
        **kw,
    )
    detector = fitting.fit(FeatureStore(tmp_path / "train"), [[1, 0], [3, 2]])
    assert detector.processor_options == {"mode": "video"}
    detector.save(tmp_path / "detector")
    detector = type(detector).load(tmp_path / "detector")
    assert detector.processor_options == {"mode": "video"}
    results, failures = detection.detect(
        tiny_qwen, detector, paths, tmp_path / "work", progress=False
    )
    assert len(results) == 2 and not failures
    work = FeatureStore(next(p for p in (tmp_path / "work").rglob("store.json")).parent)
    assert dict(work.spec.processor)["mode"] == "video"


@pytest.mark.parametrize("mode", ["images", "video"])
def test_extract_videos_of_two_sizes(tmp_path, tiny_qwen, mode):
    """Two clips of other sizes: a batch per size, one compilation each; the stored features
    are those of ``head_features`` on the processor's inputs."""
    import headhunt_jax as hh
    from headhunt_jax import features
    from headhunt_jax.extract import extract_features
    from headhunt_jax.store import FeatureStore
    from headhunt_jax.video import VideoReader

    paths = _clips(tmp_path)
    prompt = "Anything odd here?"
    features.forward.clear_cache()
    report = extract_features(
        tiny_qwen,
        paths,
        prompt,
        tmp_path / "store",
        frames_per_segment=4,
        segment_length=48,
        batch_size=2,
        processor_options={"mode": mode},
        progress=False,
    )
    assert report.written == ("small.mp4", "wide.mp4") and report.batches == 2
    assert features.forward._cache_size() == 2  # one compilation a frame size
    store = FeatureStore(tmp_path / "store")
    assert dict(store.spec.processor)["mode"] == mode and store.spec.image_size == 0
    proc = tiny_qwen.processor(mode=mode)
    for path in paths:
        with VideoReader(path, frames_per_segment=4, segment_length=48, **proc.frames) as reader:
            seg = next(iter(reader))
        ids = proc.prompt_ids(prompt, 4, seg.pixels.shape[-2:])[None]
        step = (seg.frame_indices[-1] - seg.frame_indices[0]) / 3 / 24  # seconds between frames
        vision = proc.vision_inputs(seg.pixels[None], np.asarray([step]))
        want = np.asarray(hh.head_features(tiny_qwen, ids, **vision))[0]
        got = store.read(path.name).features[0]
        assert rel_err(got, want) <= 1e-5


def test_converted_checkpoint_gives_the_same_features(qwen, tmp_path):
    """``convert`` (orbax) and back: the stacked tower and decoder restore exactly."""
    import headhunt_jax as hh
    from headhunt_jax import backbone

    _, bb = qwen
    rng = np.random.default_rng(7)
    rows = [[("image", (1, 6, 10)), ("video", (2, 4, 4))]]
    ids = np.asarray([_sample(rng, rows[0])])
    inputs = _inputs(rng, rows, [1.0])
    again = hh.load_backbone(backbone.save_converted(bb, tmp_path / "converted"))
    assert again.fingerprint == bb.fingerprint and type(again.config) is type(bb.config)
    np.testing.assert_array_equal(
        np.asarray(hh.head_features(again, ids, **inputs)),
        np.asarray(hh.head_features(bb, ids, **inputs)),
    )
