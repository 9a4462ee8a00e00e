"""LLaVA-OneVision's inputs: the HF model's own keyword inputs (``pixel_values`` + ``image_sizes``,
``pixel_values_videos``) are the module's, checked against the placeholder tokens on the host."""

import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.llava_onevision.config import LlavaOnevisionConfig

VISION_INPUTS = ("pixel_values", "image_sizes", "pixel_values_videos")


def check_inputs(cfg: LlavaOnevisionConfig, input_ids, vision_inputs: dict) -> None:
    """Image tokens and ``pixel_values`` + ``image_sizes``, video tokens and
    ``pixel_values_videos`` [videos, frames, 3, S, S] must agree."""
    unknown = sorted(set(vision_inputs) - set(VISION_INPUTS))
    if unknown:
        raise ValueError(
            f"LLaVA-OneVision takes {', '.join(VISION_INPUTS)}, not {', '.join(unknown)}"
        )
    _check_counts(cfg, input_ids, **vision_inputs)


def init_inputs(cfg: LlavaOnevisionConfig) -> dict:
    """The smallest call that creates every parameter: a one-frame video (the video path uses
    the tower, the projector and ``image_newline``), for ``model.init(key, **inputs)``."""
    v = cfg.vision
    return {
        "input_ids": jnp.full((1, cfg.video_tokens(1)), cfg.video_token_id, jnp.int32),
        "pixel_values_videos": jnp.zeros(
            (1, 1, v.num_channels, v.image_size, v.image_size), jnp.float32
        ),
    }


def _check_counts(
    cfg: LlavaOnevisionConfig,
    input_ids,
    pixel_values=None,
    image_sizes=None,
    pixel_values_videos=None,
) -> None:
    """Raises a clear ValueError when the inputs do not fit together (host-side: the counts are
    data, which the jitted model cannot check)."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {ids.shape}")
    s = cfg.image_size
    n_image = int((ids == cfg.image_token_id).sum())
    want = 0
    if pixel_values is not None:
        if image_sizes is None:
            raise ValueError("pixel_values need image_sizes ([images, 2]: height, width)")
        sizes = np.asarray(image_sizes).reshape(-1, 2)
        shape = np.shape(pixel_values)
        n_img = shape[0] if len(shape) == 5 else shape[0] // 2
        if len(shape) not in (4, 5) or len(sizes) != n_img or tuple(shape[-3:]) != (3, s, s):
            raise ValueError(
                f"pixel_values {shape} / image_sizes {sizes.shape}: expected [images, 2, 3, {s}, "
                f"{s}] and [images, 2]"
            )
        big = [tuple(int(v) for v in hw) for hw in sizes if max(hw) > s or min(hw) < 1]
        if big:
            raise ValueError(
                f"images of size {big} (height, width): only images no larger than the base "
                f"resolution {s} x {s} are supported (anyres tiling is not implemented)"
            )
        want = sum(cfg.image_tokens(int(h), int(w)) for h, w in sizes)
    if n_image != want:
        raise ValueError(
            f"input_ids hold {n_image} image tokens (id {cfg.image_token_id}), the images need {want}"
        )
    n_video = int((ids == cfg.video_token_id).sum())
    want = 0
    if pixel_values_videos is not None:
        shape = np.shape(pixel_values_videos)
        if len(shape) != 5 or tuple(shape[2:]) != (3, s, s):
            raise ValueError(f"pixel_values_videos {shape}: expected [videos, frames, 3, {s}, {s}]")
        want = shape[0] * cfg.video_tokens(shape[1])
    if n_video != want:
        raise ValueError(
            f"input_ids hold {n_video} video tokens (id {cfg.video_token_id}), the videos need "
            f"{want}"
        )
