"""Qwen3-VL in Flax, as transformers' ``Qwen3VLForConditionalGeneration``.

The vision tower (``vision``) turns each frame of each image and video into merged tokens that
fill the placeholder tokens of its row in reading order, and into DeepStack tokens, one set for
each of the tower's ``deepstack_visual_indexes``, that join the decoder's hidden states at the
same placeholders after its first layers (the decoder's ``residuals``: the i-th set after layer
i). The decoder is the shared Qwen3 ``Decoder`` with interleaved M-RoPE, its 3-D positions
computed on the host as transformers' ``get_rope_index`` (``rope``). The module's inputs come
from the HF model's keyword inputs by ``inputs.prepare``.
"""

from typing import Any

import jax.numpy as jnp

from headhunt_jax.backbones.qwen3_vl.config import Qwen3VLConfig
from headhunt_jax.backbones.qwen3_vl.inputs import KINDS
from headhunt_jax.backbones.qwen3_vl.vision import Qwen3VLVisionTower
from headhunt_jax.models.decoder import Decoder
from headhunt_jax.models.family import FamilyModule
from headhunt_jax.models.vision import place_features

_PARTS = ("pixels", "segments", "positions", "pos_index", "pos_weight", "restore")


def _at_placeholders(levels, input_ids, token_id: int, dtype):
    """DeepStack tokens [levels, B, R, E] -> [levels, B, T, E]: each at its placeholder of
    ``token_id`` in input_ids [B, T] (the r-th of row b takes [:, b, r]), zeros elsewhere."""
    k, b, r, e = levels.shape
    ids = jnp.tile(input_ids, (k, 1))
    zeros = jnp.zeros((k * b, input_ids.shape[1], e), dtype)
    placed = place_features(zeros, ids, token_id, levels.reshape(k * b, r, e))
    return placed.reshape(k, b, -1, e)


class Qwen3VL(FamilyModule):
    """The whole model; ``language_model`` is the shared ``Decoder`` (Qwen3, M-RoPE).

    Its vision inputs (``embed``'s, from ``inputs.prepare``): ``image_pixels``,
    ``image_segments``, ``image_positions``, ``image_pos_index``, ``image_pos_weight``,
    ``image_restore``, ``video_...`` (the same six); its positions [B, T, 3] come from
    ``prepare`` too."""

    cfg: Qwen3VLConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    def setup(self):
        self.visual = Qwen3VLVisionTower(self.cfg.vision, self.dtype, self.attention_impl)
        self.language_model = Decoder(self.cfg.text, self.dtype, self.attention_impl)

    def frame_features(self, pixels, segments, positions, pos_index, pos_weight, restore):
        """[B, F, L, C*T*P*P] frames in slots -> (merged tokens [B, R, E], DeepStack tokens
        [levels, B, R, E]): each row's in the order of its placeholders."""
        b, f, slots, d = pixels.shape
        merged, deep = self.visual(
            pixels.reshape(b * f, slots, d),
            segments.reshape(b * f, slots),
            positions.reshape(b * f, slots, 2),
            pos_index.reshape(b * f, slots, 4),
            pos_weight.reshape(b * f, slots, 4),
        )
        merged = merged.reshape(b, -1, merged.shape[-1])
        deep = deep.reshape(deep.shape[0], b, -1, deep.shape[-1])
        merged = jnp.take_along_axis(merged, restore[..., None], axis=1)
        return merged, jnp.take_along_axis(deep, restore[None, ..., None], axis=2)

    def decoder_inputs(self, input_ids, **inputs):
        """input_ids [B, T] -> (embeddings [B, T, E], each frame's merged tokens at its
        placeholders; residuals [levels, B, T, E], its DeepStack tokens there and zeros elsewhere,
        or None without vision inputs)."""
        embeds = self.language_model.embed(input_ids)
        residuals = None
        for _, _, kind, token in KINDS:
            parts = [inputs.pop(f"{kind}_{p}", None) for p in _PARTS]
            if parts[0] is None:
                continue
            merged, deep = self.frame_features(*parts)
            token_id = getattr(self.cfg, token)
            embeds = place_features(embeds, input_ids, token_id, merged)
            placed = _at_placeholders(deep, input_ids, token_id, embeds.dtype)
            # image and video placeholders are distinct tokens: their levels add up
            residuals = placed if residuals is None else residuals + placed
        if inputs:
            raise TypeError(f"unexpected inputs {sorted(inputs)} (see inputs.prepare)")
        if residuals is not None and residuals.shape[0] == 0:
            residuals = None
        return embeds, residuals

    def embed(self, input_ids, **inputs):
        """input_ids [B, T] -> embeddings [B, T, E], each frame's merged vision tokens at its
        placeholders (without DeepStack: ``decoder_inputs``)."""
        return self.decoder_inputs(input_ids, **inputs)[0]
