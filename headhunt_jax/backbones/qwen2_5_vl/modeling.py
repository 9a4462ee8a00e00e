"""Qwen2.5-VL in Flax, as transformers' ``Qwen2_5_VLForConditionalGeneration``.

The vision tower (``vision``) turns each image and video into merged tokens that fill the
placeholder tokens of its row in reading order; the decoder is the shared Qwen2 ``Decoder`` with
M-RoPE, its 3-D positions computed on the host as transformers' ``get_rope_index`` (``rope``).
The module's inputs come from the HF model's keyword inputs by ``inputs.prepare``.
"""

from typing import Any

import jax.numpy as jnp

from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VLConfig
from headhunt_jax.backbones.qwen2_5_vl.inputs import KINDS
from headhunt_jax.backbones.qwen2_5_vl.vision import Qwen25VisionTower
from headhunt_jax.models.decoder import Decoder
from headhunt_jax.models.family import FamilyModule
from headhunt_jax.models.vision import place_features

_PARTS = ("pixels", "segments", "positions", "restore")


class Qwen25VL(FamilyModule):
    """The whole model; ``language_model`` is the shared ``Decoder`` (with M-RoPE).

    Its vision inputs (``embed``'s, from ``inputs.prepare``): ``image_pixels``,
    ``image_segments``, ``image_positions``, ``image_restore``, ``video_...`` (the same four);
    its positions [B, T, 3] come from ``prepare`` too."""

    cfg: Qwen25VLConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    def setup(self):
        self.visual = Qwen25VisionTower(self.cfg.vision, self.dtype, self.attention_impl)
        self.language_model = Decoder(self.cfg.text, self.dtype, self.attention_impl)

    def item_features(self, pixels, segments, positions, restore):
        """[B, K, L, C*T*P*P] items in window slots -> [B, R, E]: each row's merged tokens in
        the order of its placeholders."""
        b, k, slots, d = pixels.shape
        merged = self.visual(
            pixels.reshape(b * k, slots, d),
            segments.reshape(b * k, slots),
            positions.reshape(b * k, slots, 2),
        )
        merged = merged.reshape(b, -1, merged.shape[-1])
        return jnp.take_along_axis(merged, restore[..., None], axis=1)

    def embed(self, input_ids, **inputs):
        """input_ids [B, T] -> embeddings [B, T, E], each item's merged vision tokens at its
        placeholders."""
        embeds = self.language_model.embed(input_ids)
        for _, _, kind, token in KINDS:
            parts = [inputs.pop(f"{kind}_{p}", None) for p in _PARTS]
            if parts[0] is not None:
                feats = self.item_features(*parts)
                embeds = place_features(embeds, input_ids, getattr(self.cfg, token), feats)
        if inputs:
            raise TypeError(f"unexpected inputs {sorted(inputs)} (see inputs.prepare)")
        return embeds
