"""Qwen2.5-VL's inputs: the HF model's keyword inputs (``pixel_values`` [patches, C*T*P*P] and
``image_grid_thw``, ``pixel_values_videos`` and ``video_grid_thw``, ``second_per_grid_ts``) hold
data (the grids) that decide shapes, so ``prepare`` turns them on the host into the module's
inputs: per modality the items of each row in window slots (``vision.batch_layout``; every array
batch-major, so a mesh splits them like input_ids), and each prompt's positions [B, T, 3].
"""

import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VLConfig
from headhunt_jax.backbones.qwen2_5_vl.rope import rope_index
from headhunt_jax.backbones.qwen2_5_vl.vision import batch_layout, grids, merged_tokens

HF_INPUTS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
    "mm_token_type_ids",
    "attention_mask",
)
# (HF pixels, HF grids, the module's prefix, placeholder id attribute)
KINDS = (
    ("pixel_values", "image_grid_thw", "image", "image_token_id"),
    ("pixel_values_videos", "video_grid_thw", "video", "video_token_id"),
)


def _runs(row: np.ndarray, token_id: int) -> list[int]:
    """Lengths of the runs of ``token_id`` in a row of ids, in order."""
    is_token = np.concatenate([[False], row == token_id, [False]])
    edges = np.flatnonzero(np.diff(is_token.astype(np.int8)))
    return list(edges[1::2] - edges[::2])


def _items(cfg: Qwen25VLConfig, input_ids, pixels, grid_thw, token_id):
    """Each row's items [(grid, its pixel rows)]: the grids in order, row by row, one a run of
    placeholders (as transformers assigns them)."""
    item_grids = grids(grid_thw)
    rows_of = np.cumsum([0] + [t * h * w for t, h, w in item_grids])
    if not isinstance(pixels, jax.core.Tracer):  # traced pixels are gathered as they are
        pixels = np.asarray(pixels, np.float32)
    out, n = [], 0
    for row in np.asarray(input_ids):
        items = []
        for _ in _runs(row, token_id):
            items.append((item_grids[n], pixels[rows_of[n] : rows_of[n + 1]]))
            n += 1
        out.append(items)
    return out


def check_inputs(cfg: Qwen25VLConfig, input_ids, inputs: dict) -> None:
    """Raises a clear ValueError when the HF keyword inputs do not fit input_ids: the pixel rows
    against the grids, each run of placeholders against its grid's merged tokens."""
    unknown = sorted(set(inputs) - set(HF_INPUTS))
    if unknown:
        raise ValueError(f"Qwen2.5-VL takes {', '.join(HF_INPUTS)}, not {', '.join(unknown)}")
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {ids.shape}")
    mask = inputs.get("attention_mask")
    if mask is not None and (np.shape(mask) != ids.shape or not np.all(np.asarray(mask) == 1)):
        raise ValueError("attention_mask: padded batches are not supported (give rows unpadded)")
    types = inputs.get("mm_token_type_ids")
    if types is not None:
        want = np.where(ids == cfg.image_token_id, 1, np.where(ids == cfg.video_token_id, 2, 0))
        if np.shape(types) != ids.shape or not np.array_equal(np.asarray(types), want):
            raise ValueError("mm_token_type_ids do not match the placeholder tokens of input_ids")
    v = cfg.vision
    for pixels_key, grid_key, kind, token in KINDS:
        token_id = getattr(cfg, token)
        runs = [n for row in ids for n in _runs(row, token_id)]
        pixels, grid = inputs.get(pixels_key), inputs.get(grid_key)
        if pixels is None and grid is None:
            if runs:
                raise ValueError(
                    f"input_ids hold {kind} tokens (id {token_id}) but no {pixels_key}"
                )
            continue
        if pixels is None or grid is None:
            raise ValueError(f"{pixels_key} and {grid_key} go together")
        grid = np.asarray(grid)
        if grid.ndim != 2 or grid.shape[1] != 3 or (grid < 1).any():
            raise ValueError(
                f"{grid_key} must be positive [{kind}s, 3] (t, h, w), got {grid.shape}"
            )
        m = v.spatial_merge_size
        if (grid[:, 1:] % m).any():
            raise ValueError(f"{grid_key} {grid.tolist()}: h and w must be multiples of {m}")
        shape, rows = np.shape(pixels), int(np.prod(grid, axis=1).sum())
        if shape != (rows, v.patch_dim):
            raise ValueError(
                f"{pixels_key} {shape}: the grids {grid.tolist()} need [{rows}, {v.patch_dim}]"
            )
        want = [merged_tokens(v, g) for g in grids(grid)]
        if runs != want:
            raise ValueError(
                f"input_ids hold runs of {runs} {kind} tokens (id {token_id}), the {grid_key} "
                f"need {want}"
            )
    seconds = inputs.get("second_per_grid_ts")
    if seconds is not None:
        n = 0 if inputs.get("video_grid_thw") is None else len(inputs["video_grid_thw"])
        if np.size(seconds) != n:
            raise ValueError(f"second_per_grid_ts has {np.size(seconds)} values for {n} videos")


def prepare(cfg: Qwen25VLConfig, prompt_ids, inputs: dict, attention_mask=None):
    """The HF keyword inputs (checked by ``check_inputs``) and each prompt's input_ids [B, T_m]
    (the same vision inputs) -> (the module's vision inputs, each prompt's positions [B, T_m,
    3] int32). ``attention_mask`` [B, T] (one prompt): 0 for left padding, which positions
    skip."""
    out = {}
    for pixels_key, grid_key, kind, token in KINDS:
        if inputs.get(pixels_key) is None:
            continue
        items = _items(
            cfg, prompt_ids[0], inputs[pixels_key], inputs[grid_key], getattr(cfg, token)
        )
        for part, value in batch_layout(cfg.vision, items).items():
            out[f"{kind}_{part}"] = value
    positions = []
    for ids in prompt_ids:
        pos, _ = rope_index(
            ids,
            inputs.get("image_grid_thw"),
            inputs.get("video_grid_thw"),
            inputs.get("second_per_grid_ts"),
            attention_mask,
            spatial_merge_size=cfg.vision.spatial_merge_size,
            tokens_per_second=cfg.vision.tokens_per_second,
            image_token_id=cfg.image_token_id,
            video_token_id=cfg.video_token_id,
        )
        positions.append(np.ascontiguousarray(pos.transpose(1, 2, 0)).astype(np.int32))
    return out, positions


def init_inputs(cfg: Qwen25VLConfig) -> dict:
    """The smallest call that creates every parameter: one image of one merged token."""
    v = cfg.vision
    m = v.spatial_merge_size
    ids = np.full((1, 1), cfg.image_token_id, np.int32)
    grid = np.asarray([[1, m, m]])
    hf = {"pixel_values": np.zeros((m * m, v.patch_dim), np.float32), "image_grid_thw": grid}
    inputs, positions = prepare(cfg, [ids], hf)
    return {
        "input_ids": jnp.asarray(ids),
        "positions": jnp.asarray(positions[0]),
        **{k: jnp.asarray(a) for k, a in inputs.items()},
    }
