"""Qwen3-VL's inputs: the HF model's keyword inputs (``pixel_values`` [patches, C*T*P*P] and
``image_grid_thw``, ``pixel_values_videos`` and ``video_grid_thw``) hold data (the grids) that
decide shapes, so ``prepare`` turns them on the host into the module's inputs: per modality each
row's frames in slots (``vision.frame_layout``; every array batch-major, so a mesh splits them
like input_ids), and each prompt's positions [B, T, 3].

Placeholders: an image is one run of t*h*w / m^2 image tokens (t = 1 from the processor); a
video is t runs of h*w / m^2 video tokens, one a temporal patch, separated by timestamp text.
"""

import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.qwen3_vl.config import Qwen3VLConfig
from headhunt_jax.backbones.qwen3_vl.rope import rope_index
from headhunt_jax.backbones.qwen3_vl.vision import frame_layout
from headhunt_jax.models.vision import grids

HF_INPUTS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
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


def _run_frames(grid_thw, video: bool) -> list[list[tuple[int, int, int]]]:
    """The frames of each run of placeholders, in order: [(h, w, first pixel row)]; an image's
    run holds its t frames, a video's one frame each."""
    runs, start = [], 0
    for t, h, w in grids(grid_thw):
        frames = [(h, w, start + i * h * w) for i in range(t)]
        runs += [[f] for f in frames] if video else [frames]
        start += t * h * w
    return runs


def expected_runs(cfg: Qwen3VLConfig, grid_thw, video: bool) -> list[int]:
    """The placeholders of each run the grids need, in order."""
    unit = cfg.vision.merge_unit
    return [sum(h * w for h, w, _ in run) // unit for run in _run_frames(grid_thw, video)]


def _frames(input_ids, pixels, grid_thw, token_id: int, video: bool):
    """Each row's frames [(h, w, their pixel rows)], in the order of its placeholder runs (as
    transformers assigns them: the batch's runs in reading order take the grids in turn)."""
    runs = iter(_run_frames(grid_thw, video))
    if not isinstance(pixels, jax.core.Tracer):  # traced pixels are gathered as they are
        pixels = np.asarray(pixels, np.float32)
    out = []
    for row in np.asarray(input_ids):
        frames = []
        for _ in _runs(row, token_id):
            frames += [(h, w, pixels[s : s + h * w]) for h, w, s in next(runs)]
        out.append(frames)
    return out


def _check_kind(cfg: Qwen3VLConfig, ids, inputs: dict, pixels_key, grid_key, kind, token):
    token_id, v = getattr(cfg, token), cfg.vision
    runs = [n for row in ids for n in _runs(row, token_id)]
    pixels, grid = inputs.get(pixels_key), inputs.get(grid_key)
    if pixels is None and grid is None:
        if runs:
            raise ValueError(f"input_ids hold {kind} tokens (id {token_id}) but no {pixels_key}")
        return
    if pixels is None or grid is None:
        raise ValueError(f"{pixels_key} and {grid_key} go together")
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.shape[1] != 3 or (grid < 1).any():
        raise ValueError(f"{grid_key} must be positive [{kind}s, 3] (t, h, w), got {grid.shape}")
    m = v.spatial_merge_size
    if (grid[:, 1:] % m).any():
        raise ValueError(f"{grid_key} {grid.tolist()}: h and w must be multiples of {m}")
    shape, rows = np.shape(pixels), int(np.prod(grid, axis=1).sum())
    if shape != (rows, v.patch_dim):
        raise ValueError(
            f"{pixels_key} {shape}: the grids {grid.tolist()} need [{rows}, {v.patch_dim}]"
        )
    want = expected_runs(cfg, grid, video=kind == "video")
    if runs != want:
        raise ValueError(
            f"input_ids hold runs of {runs} {kind} tokens (id {token_id}), the {grid_key} "
            f"need {want}" + (" (one run a temporal patch)" if kind == "video" else "")
        )


def check_inputs(cfg: Qwen3VLConfig, input_ids, inputs: dict) -> None:
    """Raises a clear ValueError when the HF keyword inputs do not fit input_ids: the pixel rows
    against the grids, each run of placeholders against its grid's (or temporal patch's) merged
    tokens."""
    unknown = sorted(set(inputs) - set(HF_INPUTS))
    if unknown:
        raise ValueError(f"Qwen3-VL takes {', '.join(HF_INPUTS)}, not {', '.join(unknown)}")
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
    for kind in KINDS:
        _check_kind(cfg, ids, inputs, *kind)


def prepare(cfg: Qwen3VLConfig, prompt_ids, inputs: dict, attention_mask=None):
    """The HF keyword inputs (checked by ``check_inputs``) and each prompt's input_ids [B, T_m]
    (the same vision inputs) -> (the module's vision inputs, each prompt's positions [B, T_m,
    3] int32). ``attention_mask`` [B, T] (one prompt): 0 for left padding, which positions
    skip."""
    out = {}
    for pixels_key, grid_key, kind, token in KINDS:
        if inputs.get(pixels_key) is None:
            continue
        rows = _frames(
            prompt_ids[0],
            inputs[pixels_key],
            inputs[grid_key],
            getattr(cfg, token),
            video=kind == "video",
        )
        for part, value in frame_layout(cfg.vision, rows).items():
            out[f"{kind}_{part}"] = value
    positions = []
    for ids in prompt_ids:
        pos, _ = rope_index(
            ids,
            inputs.get("image_grid_thw"),
            inputs.get("video_grid_thw"),
            attention_mask,
            spatial_merge_size=cfg.vision.spatial_merge_size,
            image_token_id=cfg.image_token_id,
            video_token_id=cfg.video_token_id,
        )
        positions.append(np.ascontiguousarray(pos.transpose(1, 2, 0)).astype(np.int32))
    return out, positions


def init_inputs(cfg: Qwen3VLConfig) -> dict:
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
