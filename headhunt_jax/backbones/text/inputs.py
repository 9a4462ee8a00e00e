"""A text-only backbone's inputs: input_ids alone."""

import jax.numpy as jnp

from headhunt_jax.models.decoder import DecoderConfig


def init_inputs(cfg: DecoderConfig) -> dict:
    return {"input_ids": jnp.zeros((1, 1), jnp.int32)}


def check_inputs(cfg: DecoderConfig, input_ids, vision_inputs: dict) -> None:
    if vision_inputs:
        raise ValueError(f"a text-only backbone takes no {', '.join(sorted(vision_inputs))}")
