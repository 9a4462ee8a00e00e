"""Qwen2 / Qwen3 / Llama causal LMs: the shared decoder with the family call signature."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from headhunt_jax.models.decoder import Decoder, DecoderConfig


class TextModel(nn.Module):
    """A Qwen2/Qwen3/Llama causal LM with a backbone family's call signature (no vision inputs)."""

    cfg: DecoderConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    def setup(self):
        self.language_model = Decoder(self.cfg, self.dtype, self.attention_impl)

    def __call__(self, input_ids, depth=None, logits=False, **options):
        """``options``: the ``Decoder``'s pass options (``positions``, ``prefix_kv``, ...)."""
        embeds = self.language_model.embed(input_ids)
        return self.language_model(embeds, depth=depth, logits=logits, **options)
