"""SigLIP, LLaVA-OneVision's vision tower, as transformers' ``SiglipVisionModel`` without its
pooling head: patch embedding, learned position embeddings, ``models.vision.ViTBlock``s (pre-LN,
no layer scale, a GELU MLP).

SigLIP's ``post_layernorm`` is never applied to the features: transformers selects from the
encoder's hidden states, and SigLIP does not tie the last of them to the normed output. Its
parameters exist (the checkpoint has them) and the layer runs only at init.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from headhunt_jax.backbones.llava_onevision.config import SiglipConfig
from headhunt_jax.models import stack
from headhunt_jax.models.layers import LayerNorm
from headhunt_jax.models.vision import PatchEmbed, ViTBlock, ViTBlockConfig


class SiglipVisionTower(nn.Module):
    """pixel_values [B, C, S, S] (HF layout, S the base resolution) -> the hidden states asked
    for: a tuple, one [B, (S//p)^2, E] per index of ``layers`` (0: the embeddings, i: after
    layer i). Layers after the deepest one asked for are skipped. The layers' parameters are
    stacked (``layers/...``, see ``models/stack.py``) and run as scans; ``post_layernorm`` runs
    only at init, so that each checkpoint tensor has its parameter."""

    cfg: SiglipConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, pixel_values, layers: tuple[int, ...]):
        cfg = self.cfg
        e, p, c, s = cfg.hidden_size, cfg.patch_size, cfg.num_channels, cfg.image_size
        if tuple(pixel_values.shape[1:]) != (c, s, s):
            raise ValueError(
                f"pixel_values {tuple(pixel_values.shape)}: expected [images, {c}, {s}, {s}] (the "
                "base resolution; SigLIP's position embeddings are not interpolated)"
            )
        x = PatchEmbed(p, e, self.dtype, name="patch_embed")(pixel_values.astype(self.dtype))
        pos = self.param(
            "position_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("positions", "embed")),
            (cfg.num_patches, e),
            self.dtype,
        )
        x = x + pos[None]
        layer = ViTBlockConfig(
            cfg.intermediate_size, cfg.num_heads, eps=cfg.layer_norm_eps, act=cfg.hidden_act
        )
        block = ViTBlock(layer, self.dtype, self.attention_impl, parent=None)
        example = jnp.zeros((1, 1, e), self.dtype)
        params = self.param(stack.LAYERS, stack.stacked(block, cfg.num_layers, example))

        def run(x):
            kept, done = {0: x}, 0
            for stop in sorted(set(layers) - {0}):  # one scan up to each kept layer
                x, _ = stack.scan(
                    lambda p, _, x: (block.apply({"params": p}, x), None), params, x, done, stop
                )
                kept[stop], done = x, stop
            return tuple(kept[i] for i in layers)

        if self.is_initializing():
            LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, name="post_layernorm")(x)
        return stack.over_images(run, x)
