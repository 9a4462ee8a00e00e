"""Qwen3-VL's frame sizes, token counts and video timestamps, as its released processors give
them (the pixels themselves are Qwen2.5-VL's layout with patch 16: ``qwen2_5_vl.
processor_pixels``' ``image_pixels``, ``patchify`` and ``patchify_video`` take any tower config).

- Images: transformers' ``Qwen2VLImageProcessor`` with the checkpoint's patch 16, merge 2
  (factor 32), mean and std 0.5, and ``size`` {shortest_edge: 256 x 256, longest_edge: 4096 x
  4096} (the released ``preprocessor_config.json``): each frame by ``smart_resize``.
- Videos: ``Qwen3VLVideoProcessor``, whose pixel limits bound a whole video (frames x height x
  width; released ``video_preprocessor_config.json``: shortest_edge 4096, longest_edge 768 x
  32 x 32 x 32), each frame's share capped at ``max_video_tokens`` (768) tokens' worth and at
  least 1.05 x shortest_edge, as qwen-vl-utils does (``cap_pixels_per_frame``; transformers'
  announced default, the uncapped way when the config says false).
- Timestamps: a temporal patch's time is the mean of its first and last frame's, each frame
  at its index over the fps, an odd count padded with the last frame (``Qwen3VLProcessor.
  _calculate_timestamps``), written ``<{t:.1f} seconds>``.
"""

import math

from headhunt_jax.backbones.qwen2_5_vl.processor_pixels import smart_resize
from headhunt_jax.backbones.qwen3_vl.config import Qwen3VLVisionConfig

MEAN = STD = (0.5, 0.5, 0.5)
# The released preprocessor_config.json's size (Qwen2VLImageProcessor's own defaults differ).
IMAGE_MIN_PIXELS = 256 * 256
IMAGE_MAX_PIXELS = 4096 * 4096
# The released video_preprocessor_config.json's size: limits on frames x height x width.
VIDEO_MIN_PIXELS = 4096
VIDEO_MAX_PIXELS = 768 * 32 * 32 * 32
MAX_VIDEO_TOKENS = 768  # the per-frame cap, in merged tokens


def video_smart_resize(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int = 2,
    factor: int = 32,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
) -> tuple[int, int]:
    """transformers' Qwen3-VL video ``smart_resize``: (height, width) multiples of ``factor``
    whose volume over the frames (the frame count rounded to ``temporal_factor``) lies in
    [min_pixels, max_pixels] where the rounding allows; sides under ``factor`` first scaled up."""
    if num_frames < temporal_factor:
        raise ValueError(f"a video needs at least {temporal_factor} frames, got {num_frames}")
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height} x {width}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got "
            f"{max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_max_pixels(
    num_frames: int,
    factor: int = 32,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    cap: bool = True,
    max_video_tokens: int = MAX_VIDEO_TOKENS,
) -> int:
    """The volume limit of a ``num_frames`` video: ``max_pixels``, or with the per-frame ``cap``
    each frame's share at most ``max_video_tokens`` tokens and at least 1.05 x ``min_pixels``."""
    if not cap:
        return max_pixels
    per_frame = max(
        min(max_video_tokens * factor * factor, max_pixels // num_frames), int(min_pixels * 1.05)
    )
    return per_frame * num_frames


def video_frame_size(
    cfg: Qwen3VLVisionConfig,
    num_frames: int,
    height: int,
    width: int,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    cap: bool = True,
) -> tuple[int, int]:
    """The size each frame of a ``num_frames`` x ``height`` x ``width`` video is resized to."""
    limit = video_max_pixels(num_frames, cfg.factor, min_pixels, max_pixels, cap)
    return video_smart_resize(
        num_frames, height, width, cfg.temporal_patch_size, cfg.factor, min_pixels, limit
    )


def image_tokens(
    cfg: Qwen3VLVisionConfig,
    height: int,
    width: int,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> int:
    """Merged tokens (image placeholders) of one ``height`` x ``width`` image."""
    h, w = smart_resize(height, width, cfg.factor, min_pixels, max_pixels)
    return h * w // cfg.factor**2


def video_tokens(
    cfg: Qwen3VLVisionConfig,
    num_frames: int,
    height: int,
    width: int,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    cap: bool = True,
) -> tuple[int, int]:
    """(temporal patches, merged tokens of each) of a ``num_frames`` x ``height`` x ``width``
    video: the runs of video placeholders, one a temporal patch."""
    h, w = video_frame_size(cfg, num_frames, height, width, min_pixels, max_pixels, cap)
    return -(-num_frames // cfg.temporal_patch_size), h * w // cfg.factor**2


def timestamps(num_frames: int, frame_seconds: float, temporal_patch_size: int = 2) -> list[str]:
    """Each temporal patch's ``<t seconds>`` text for ``num_frames`` frames ``frame_seconds``
    apart, the first at 0 s: ``Qwen3VLProcessor``'s for frame indices 0, 1, ... at 1 /
    ``frame_seconds`` frames a second."""
    if not frame_seconds > 0:
        raise ValueError(f"the seconds between frames must be positive, got {frame_seconds}")
    fps = 1 / frame_seconds
    indices = list(range(num_frames))
    indices += indices[-1:] * (-num_frames % temporal_patch_size)
    times = [i / fps for i in indices]
    t = temporal_patch_size
    return [f"<{(times[i] + times[i + t - 1]) / 2:.1f} seconds>" for i in range(0, len(times), t)]
