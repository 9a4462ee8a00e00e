"""Qwen2.5-VL pixels for the "images" mode: every decoded frame one image, as transformers'
``Qwen2VLImageProcessorPil`` (the processor Qwen2.5-VL's ``image_processor`` is).

A frame uint8 [H, W, 3] is resized with PIL's bicubic filter (on uint8) to ``smart_resize``'s
size (both sides multiples of patch_size * merge_size, the area between ``min_pixels`` and
``max_pixels``, the aspect kept as closely as possible), rescaled by 1/255 (in float64, then
float32), normalised with the OpenAI CLIP mean and std (float32), and cut into patches: rows of
C*T*P*P values (the frame repeated ``temporal_patch_size`` times), ordered by merge block (the
m x m neighbours of one merged token adjacent); its grid is (1, H'/P, W'/P).
"""

import math

import numpy as np
from PIL import Image

from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VisionConfig

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Qwen2VLImageProcessor's defaults (its size's shortest_edge / longest_edge).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """transformers' ``smart_resize``: (height, width) both multiples of ``factor``, the area in
    [min_pixels, max_pixels] where the rounding allows, the aspect ratio nearly kept."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got "
            f"{max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid(
    cfg: Qwen25VisionConfig,
    height: int,
    width: int,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int, int]:
    """The (t, h, w) patch grid of one ``height`` x ``width`` image."""
    h, w = smart_resize(height, width, cfg.factor, min_pixels, max_pixels)
    return 1, h // cfg.patch_size, w // cfg.patch_size


def image_tokens(
    cfg: Qwen25VisionConfig,
    height: int,
    width: int,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> int:
    """Merged tokens (image placeholders) of one ``height`` x ``width`` image."""
    t, h, w = image_grid(cfg, height, width, min_pixels, max_pixels)
    return t * h * w // cfg.merge_unit


def patchify(cfg: Qwen25VisionConfig, image: np.ndarray) -> np.ndarray:
    """A normalised image float32 [C, H, W] (H, W multiples of P * m) -> [H/P * W/P, C*T*P*P]:
    the image repeated ``temporal_patch_size`` times (transformers' image processor)."""
    return patchify_video(cfg, np.repeat(image[None], cfg.temporal_patch_size, axis=0))


def patchify_video(cfg: Qwen25VisionConfig, frames: np.ndarray) -> np.ndarray:
    """Normalised frames float32 [F, C, H, W] -> [ceil(F/T) * H/P * W/P, C*T*P*P]: every T
    consecutive frames one temporal patch (the last frame repeated to fill the last one), rows
    in merge-block order, as transformers' ``Qwen2VLVideoProcessor.patchify``."""
    f, c, height, width = frames.shape
    p, m, t = cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
    gh, gw = height // p, width // p
    if gh * p != height or gw * p != width or gh % m or gw % m:
        raise ValueError(f"frames {height} x {width} are not whole merge blocks of {p * m} px")
    if pad := -f % t:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    gt = len(frames) // t
    patches = frames.reshape(gt, t, c, gh // m, m, p, gw // m, m, p)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(patches).reshape(gt * gh * gw, c * t * p * p)


def image_pixels(
    frames: np.ndarray,
    cfg: Qwen25VisionConfig,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames [F, H, W, 3] -> (pixel_values float32 [sum of patches, C*T*P*P],
    image_grid_thw int64 [F, 3]): each frame one image."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if cfg.in_channels != 3:
        raise ValueError(f"RGB frames need in_channels 3, the tower has {cfg.in_channels}")
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    rows, grids = [], []
    for frame in frames:
        height, width = frame.shape[:2]
        h, w = smart_resize(height, width, cfg.factor, min_pixels, max_pixels)
        if (h, w) != (height, width):
            frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC))
        x = (frame.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = ((x - mean32) / std32).transpose(2, 0, 1)
        rows.append(patchify(cfg, x))
        grids.append((1, h // cfg.patch_size, w // cfg.patch_size))
    return np.concatenate(rows), np.asarray(grids, np.int64)
