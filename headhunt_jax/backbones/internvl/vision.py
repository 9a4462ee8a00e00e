"""InternViT, the vision tower of InternVL, as in transformers' ``InternVLVisionModel``.

Patch + absolute position embeddings (bicubic interpolation when the image size differs from the
pretraining size), then ``models.vision.ViTBlock``s with layer scale, ``layer_norm`` or
``rms_norm``, optional qk-norm over the whole embedding.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.internvl.config import VisionConfig
from headhunt_jax.models import stack
from headhunt_jax.models.layers import LayerNorm
from headhunt_jax.models.vision import PatchEmbed, ViTBlock, ViTBlockConfig


def _cubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of torch's bicubic resize (align_corners=False, A = -0.75, edge clamp)."""
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    w = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = scale * (i + 0.5) - 0.5
        base = math.floor(src)
        t = src - base
        taps = (far(t + 1), near(t), near(1 - t), far(2 - t))
        for offset, tap in zip(range(-1, 3), taps, strict=True):
            w[i, min(max(base + offset, 0), in_size - 1)] += tap
    return w


def interpolate_positions(pos, grid: int):
    """Patch position embeddings [s*s, E] -> [grid*grid, E] by torch-equivalent bicubic resize."""
    side = math.isqrt(pos.shape[0])
    w = jnp.asarray(_cubic_weights(side, grid), jnp.float32)
    table = pos.reshape(side, side, -1).astype(jnp.float32)
    out = jnp.einsum("oy,yxd,px->opd", w, table, w, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(grid * grid, -1).astype(pos.dtype)


def vit_block(cfg: VisionConfig, dtype, attention_impl: str) -> ViTBlock:
    """InternViT's layer, unbound (``stack`` runs it)."""
    block = ViTBlockConfig(
        cfg.intermediate_size,
        cfg.num_heads,
        norm=cfg.norm_type,
        eps=cfg.layer_norm_eps,
        act="gelu",
        attention_bias=cfg.attention_bias,
        qk_norm=cfg.use_qk_norm,
        layer_scale=True,
    )
    return ViTBlock(block, dtype, attention_impl, parent=None)


class InternViT(nn.Module):
    """pixel_values [N, C, H, W] (HF layout) -> last hidden states [N, 1 + (H/p)*(W/p), E].

    The layers' parameters are stacked (``layers/...``, see ``models/stack.py``) and run as a scan.
    """

    cfg: VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, pixel_values):
        cfg = self.cfg
        e, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
        n, ch, height, width = pixel_values.shape
        if ch != c or height != width or height % p:
            raise ValueError(
                f"pixel_values {pixel_values.shape}: expected [N, {c}, S, S] with S a multiple of {p}"
            )
        grid = height // p
        x = PatchEmbed(p, e, self.dtype, name="patch_embed")(pixel_values.astype(self.dtype))

        def embedding(name, shape, axes):
            return self.param(
                name,
                nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
                shape,
                self.dtype,
            )

        cls_token = embedding("cls_token", (e,), ("embed",))
        num_pos = (cfg.image_size // p) ** 2
        pos = embedding("position_embeddings", (num_pos + 1, e), ("positions", "embed"))
        patch_pos = pos[1:] if grid * grid == num_pos else interpolate_positions(pos[1:], grid)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (n, 1, e)), x], axis=1)
        x = x + jnp.concatenate([pos[:1], patch_pos], axis=0)[None]
        block = vit_block(cfg, self.dtype, self.attention_impl)
        example = jnp.zeros((1, 1, e), self.dtype)
        layers = self.param(stack.LAYERS, stack.stacked(block, cfg.num_layers, example))
        x = stack.over_images(
            lambda x: stack.scan(
                lambda p, _, x: (block.apply({"params": p}, x), None), layers, x, 0, cfg.num_layers
            )[0],
            x,
        )
        if not cfg.use_mean_pooling:
            x = LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, name="final_norm")(x)
        return x
