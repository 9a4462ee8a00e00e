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

transformers = pytest.importorskip("transformers")

from headhunt_jax.backbones.qwen2_5_vl import params as q_params  # noqa: E402
from headhunt_jax.backbones.qwen2_5_vl import vision  # noqa: E402
from headhunt_jax.backbones.qwen2_5_vl.config import (  # noqa: E402
    VISION_PRESETS,
    Qwen25VisionConfig,
)

TOL = 1e-4


def rel_err(got, want):
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


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
    params = q_params.tower_params({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
    tower = vision.Qwen25VisionTower(cfg)
    got = np.asarray(vision.vision_features(tower, params, pixels, grid))
    assert got.shape == want.shape == (vision.num_merged_tokens(cfg, grid), cfg.out_hidden_size)
    err = rel_err(got, want)
    print(f"vision {grids}: rel err {err:.2e}")
    assert err <= TOL


def test_equal_grids_run_as_a_batch_with_the_same_result():
    """Three same-size images (the "images" mode): the vmapped pass equals the concatenated
    one and transformers."""
    raw = tiny_vision()
    model = build_tower(raw)
    cfg = Qwen25VisionConfig.from_hf(raw)
    grid = np.asarray([[1, 6, 10]] * 3, np.int64)
    n = int(grid.prod(-1).sum())
    pixels = np.random.default_rng(2).standard_normal((n, cfg.patch_dim)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.as_tensor(pixels), grid_thw=torch.as_tensor(grid)).pooler_output
    # the keys as the full model holds them (``model.visual.``)
    tensors = {"model.visual." + k: v.numpy() for k, v in model.state_dict().items()}
    params = q_params.tower_params(tensors, cfg)
    tower = vision.Qwen25VisionTower(cfg)
    batched = np.asarray(vision.vision_features(tower, params, pixels, grid))
    concatenated = np.asarray(vision.vision_features(tower, params, pixels, grid, False))
    assert rel_err(batched, want.numpy()) <= TOL
    assert rel_err(batched, concatenated) <= 1e-6


def test_window_index_matches_transformers():
    from transformers.vision_utils import get_vision_window_index

    cfg = Qwen25VisionConfig.from_hf(tiny_vision())
    grid = np.asarray([[1, 6, 10], [1, 4, 8], [3, 6, 4]])
    want_index, want_cu = get_vision_window_index(
        torch.as_tensor(grid), spatial_merge_size=2, window_size=8, patch_size=2
    )
    index, sizes = vision.window_index(cfg, grid)
    np.testing.assert_array_equal(index, want_index.numpy())
    cu = np.concatenate([[0], np.cumsum(sizes) * cfg.merge_unit])
    np.testing.assert_array_equal(cu, want_cu.numpy())


def test_vision_params_init_shapes_match_the_converter():
    import jax

    cfg = Qwen25VisionConfig.from_hf(tiny_vision())
    grid = np.asarray([[1, 4, 4]])
    idx = {k: jax.numpy.asarray(v) for k, v in vision.vision_indices(cfg, grid).items()}
    tower = vision.Qwen25VisionTower(cfg)
    shapes = jax.eval_shape(
        lambda: tower.init(jax.random.PRNGKey(0), np.zeros((16, cfg.patch_dim), np.float32), **idx)
    )
    params = q_params.tower_params(
        {k: v.numpy() for k, v in build_tower(tiny_vision()).state_dict().items()}, cfg
    )
    flat = jax.tree_util.tree_map(lambda x: x.shape, params)
    unboxed = jax.tree_util.tree_map(
        lambda x: x.value.shape if hasattr(x, "value") else x.shape,
        shapes["params"],
        is_leaf=lambda x: hasattr(x, "value"),
    )
    assert flat == unboxed


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
        ids, grids["image_grid"], grids["video_grid"], grids["seconds"], mask_arg, cfg
    )
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(deltas, want_deltas)
    assert pos.shape == (3, *ids.shape) and deltas.shape == (ids.shape[0], 1)


def test_rope_index_next_text_max_follows_the_largest_position():
    """transformers v4 / vLLM: the text after a video starts past its largest temporal position
    (3 text tokens and vision_start: the video starts at 4; temporal 4 + (0, 1, 3, 4), rows
    4 + (0, 1, 2); vision_end then at 8 + 1 = 9, not at 4 + max(3, 2) = 7 as in transformers v5);
    for images both rules agree."""
    from headhunt_jax.backbones.qwen2_5_vl.rope import rope_index

    cfg = Qwen25VisionConfig.from_hf(tiny_vision())
    c = CASES["video_seconds"]
    ids = np.asarray(c["rows"])
    pos, _ = rope_index(ids, None, c["video_grid"], c["seconds"], None, cfg, next_text="max")
    assert pos[:, 0, -4:].tolist() == [[9, 10, 11, 12]] * 3
    spatial, _ = rope_index(ids, None, c["video_grid"], c["seconds"], None, cfg)
    assert spatial[:, 0, -4:].tolist() == [[7, 8, 9, 10]] * 3
    c = CASES["two_images"]
    ids = np.asarray(c["rows"])
    a, _ = rope_index(ids, c["image_grid"], None, None, None, cfg, next_text="max")
    b, _ = rope_index(ids, c["image_grid"], None, None, None, cfg)
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
