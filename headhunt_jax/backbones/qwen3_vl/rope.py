"""The decoder's 3-D rotary positions (M-RoPE) of a Qwen3-VL prompt, on the host with numpy, as
transformers' ``Qwen3VLModel.get_rope_index``.

They are Qwen2.5-VL's (``qwen2_5_vl.rope.rope_index``: text counts up on all three axes, a run
of placeholders takes its grid's merged tokens at ``start + (t, row, col)``, the text after it
resumes at ``start + max(h, w) / merge``) with one difference: Qwen3-VL's prompts separate a
video's temporal patches by timestamp text (``<t seconds>`` before each), so each video grid
(t, h, w) is t grids (1, h, w), one run of placeholders each, and time is in the text, not in
the temporal positions.
"""

import numpy as np

from headhunt_jax.backbones.qwen2_5_vl.rope import rope_index as _rope_index
from headhunt_jax.backbones.qwen3_vl.config import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID


def split_video_grids(video_grid_thw) -> np.ndarray:
    """Each video grid (t, h, w) as t grids (1, h, w), in order: int64 [sum t, 3]."""
    grid = np.asarray(video_grid_thw, np.int64).reshape(-1, 3)
    split = np.repeat(grid, grid[:, 0], axis=0)
    split[:, 0] = 1
    return split


def rope_index(
    input_ids,
    image_grid_thw=None,
    video_grid_thw=None,
    attention_mask=None,
    *,
    spatial_merge_size: int = 2,
    image_token_id: int = IMAGE_TOKEN_ID,
    video_token_id: int = VIDEO_TOKEN_ID,
) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` int [B, T] (``attention_mask`` [B, T]: 1 for tokens, 0 for padding, which
    is skipped and keeps position 0), the grids [num, 3] of the images and videos in prompt order
    (over the whole batch) -> (position_ids int64 [3, B, T], deltas int64 [B, 1]: max position +
    1 - tokens, what later positions add)."""
    videos = None if video_grid_thw is None else split_video_grids(video_grid_thw)
    # Qwen2.5-VL's scaled video times multiply the temporal index, 0 for grids of one patch
    return _rope_index(
        input_ids,
        image_grid_thw,
        videos,
        None,
        attention_mask,
        spatial_merge_size=spatial_merge_size,
        image_token_id=image_token_id,
        video_token_id=video_token_id,
    )
