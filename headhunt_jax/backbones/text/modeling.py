"""Qwen2 / Qwen3 / Llama causal LMs: the shared decoder with the family call signature."""

from typing import Any

import jax.numpy as jnp

from headhunt_jax.models.decoder import Decoder, DecoderConfig
from headhunt_jax.models.family import FamilyModule


class TextModel(FamilyModule):
    """A Qwen2/Qwen3/Llama causal LM with a backbone family's call signature (no vision inputs)."""

    cfg: DecoderConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    def setup(self):
        self.language_model = Decoder(self.cfg, self.dtype, self.attention_impl)

    def embed(self, input_ids):
        return self.language_model.embed(input_ids)
