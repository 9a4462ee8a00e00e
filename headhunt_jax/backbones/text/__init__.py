"""Text-only causal LMs (``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``LlamaForCausalLM``): the
shared decoder on its own, for checking the port; extraction needs a vision family."""

import jax.numpy as jnp

from headhunt_jax.backbones import Family, register
from headhunt_jax.backbones.text.modeling import TextModel
from headhunt_jax.models.decoder import SUPPORTED_TEXT, DecoderConfig
from headhunt_jax.weights import TEXT_TABLE


def init_inputs(cfg: DecoderConfig) -> dict:
    return {"input_ids": jnp.zeros((1, 1), jnp.int32)}


def check_inputs(cfg: DecoderConfig, input_ids, vision_inputs: dict) -> None:
    if vision_inputs:
        raise ValueError(f"a text-only backbone takes no {', '.join(sorted(vision_inputs))}")


FAMILY = register(
    Family(
        name="text",
        model_types=SUPPORTED_TEXT,
        config_type=DecoderConfig,
        module=TextModel,
        keys=TEXT_TABLE,
        init_inputs=init_inputs,
        check_inputs=check_inputs,
    )
)
