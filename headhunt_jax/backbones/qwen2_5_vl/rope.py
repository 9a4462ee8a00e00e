"""The decoder's 3-D rotary positions (M-RoPE) of a Qwen2.5-VL prompt, on the host with numpy,
as transformers' ``Qwen2_5_VLModel.get_rope_index``.

Text tokens count up on all three axes. A run of image or video placeholder tokens (one run a
grid, consecutive placeholders of one kind form one run) takes its grid's merged tokens in
(t, h, w) order: temporal ``start + int(t * tokens_per_second * second_per_grid_t)`` (videos;
images: ``start``), height ``start + row``, width ``start + col``. The text after it resumes at
``start + max(h, w) / merge`` (transformers v5), or with ``next_text="max"`` at one past the
largest position given so far (transformers v4 and vLLM: the same for images, later for a video
whose scaled temporal positions pass its spatial extent).
"""

import itertools

import numpy as np

from headhunt_jax.backbones.qwen2_5_vl.config import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID


def rope_index(
    input_ids,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    attention_mask=None,
    *,
    spatial_merge_size: int = 2,
    tokens_per_second: float = 2,
    image_token_id: int = IMAGE_TOKEN_ID,
    video_token_id: int = VIDEO_TOKEN_ID,
    next_text: str = "spatial",
) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` int [B, T] (``attention_mask`` [B, T]: 1 for tokens, 0 for padding, which
    is skipped and keeps position 0), the grids [num, 3] of the images and videos in prompt order
    (over the whole batch), ``second_per_grid_ts`` [num_videos] (default 1) -> (position_ids
    int64 [3, B, T], deltas int64 [B, 1]: max position + 1 - tokens, what later positions add).
    ``spatial_merge_size`` and ``tokens_per_second``: the vision config's.
    """
    if next_text not in ("spatial", "max"):
        raise ValueError(f"next_text must be 'spatial' or 'max', got {next_text!r}")
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {ids.shape}")
    b, t = ids.shape
    mask = np.ones((b, t), bool) if attention_mask is None else np.asarray(attention_mask) != 0
    types = np.where(ids == image_token_id, 1, np.where(ids == video_token_id, 2, 0))
    grids = {
        1: iter(np.asarray(image_grid_thw, np.int64).reshape(-1, 3))
        if image_grid_thw is not None
        else None,
        2: iter(np.asarray(video_grid_thw, np.int64).reshape(-1, 3))
        if video_grid_thw is not None
        else None,
    }
    seconds = iter(
        np.asarray(second_per_grid_ts, np.float32).reshape(-1)
        if second_per_grid_ts is not None
        else [1] * t
    )
    m = spatial_merge_size
    positions = np.zeros((3, b, t), np.int64)
    deltas = []
    for row in range(b):
        kept = types[row][mask[row]]
        parts, current = [], 0
        for kind, group in itertools.groupby(kept.tolist()):
            n = len(list(group))
            if kind == 0:
                parts.append(np.broadcast_to(np.arange(n) + current, (3, n)))
                current += n
                continue
            if grids[kind] is None:
                name = "image_grid_thw" if kind == 1 else "video_grid_thw"
                raise ValueError(f"placeholder tokens of kind {kind} but no {name}")
            try:
                gt, gh, gw = (int(x) for x in next(grids[kind]))
            except StopIteration:
                raise ValueError("more placeholder runs than grids") from None
            lt, lh, lw = gt, gh // m, gw // m
            if kind == 2:
                interval = np.float32(tokens_per_second) * np.float32(next(seconds))
                temporal = (np.arange(lt, dtype=np.float32) * interval).astype(np.int64)
            else:
                temporal = np.arange(lt, dtype=np.int64)
            tt, hh, ww = np.meshgrid(temporal, np.arange(lh), np.arange(lw), indexing="ij")
            pos = np.stack([tt, hh, ww]).reshape(3, -1) + current
            if pos.shape[1] != n:
                raise ValueError(
                    f"a run of {n} placeholder tokens for a grid of {lt}x{lh}x{lw} = "
                    f"{pos.shape[1]} merged tokens"
                )
            parts.append(pos)
            current = int(pos.max()) + 1 if next_text == "max" else current + max(gh, gw) // m
        flat = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), np.int64)
        positions[:, row, mask[row]] = flat
        deltas.append((int(flat.max()) + 1 if flat.size else 0) - int(mask[row].sum()))
    return positions, np.asarray(deltas, np.int64)[:, None]
