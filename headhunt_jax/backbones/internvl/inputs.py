"""InternVL's inputs: the HF model's ``pixel_values`` [num_images, 3, S, S] are the module's,
checked against the image tokens on the host."""

import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.internvl.config import InternVLConfig


def init_inputs(cfg: InternVLConfig) -> dict:
    v = cfg.vision
    return {
        "input_ids": jnp.full((1, cfg.tokens_per_image), cfg.image_token_id, jnp.int32),
        "pixel_values": jnp.zeros((1, v.num_channels, v.image_size, v.image_size), jnp.float32),
    }


def check_inputs(cfg: InternVLConfig, input_ids, vision_inputs: dict) -> None:
    """Image tokens and ``pixel_values`` [num_images, 3, H, W] must agree."""
    unknown = sorted(set(vision_inputs) - {"pixel_values"})
    if unknown:
        raise ValueError(f"InternVL takes pixel_values only, not {', '.join(unknown)}")
    pixel_values = vision_inputs.get("pixel_values")
    n_tokens = int((np.asarray(input_ids) == cfg.image_token_id).sum())
    n_images = 0 if pixel_values is None else int(np.shape(pixel_values)[0])
    if pixel_values is not None and np.ndim(pixel_values) != 4:
        raise ValueError(
            f"pixel_values must be [num_images, 3, H, W], got shape {np.shape(pixel_values)}"
        )
    per_image = cfg.image_tokens(np.shape(pixel_values)[-1]) if n_images else cfg.tokens_per_image
    if n_tokens != n_images * per_image:
        raise ValueError(
            f"input_ids hold {n_tokens} image tokens (id {cfg.image_token_id}) but pixel_values has "
            f"{n_images} images x {per_image} tokens = {n_images * per_image}"
        )
