"""What the vision towers share: patch embedding, the pre-norm ViT block, and the placing of vision
features at their placeholder tokens in the language model's input.

InternViT (InternVL) and SigLIP (LLaVA-OneVision) are configurations of ``ViTBlock``: InternViT's
has layer scale, a LayerNorm or an RMSNorm, optional qk-norm and exact GELU; SigLIP's has none of
these and a tanh GELU. Qwen2.5-VL's windowed tower (RMSNorm, rotary q/k, gated MLP) and Qwen3-VL's
(LayerNorm, rotary q/k) have blocks of their own and share the patch kernel, the placement, and
the patches' grids, positions and 2-D rotary embedding (``grids``, ``patch_positions``,
``rotary``, ``rotate``).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from headhunt_jax.models.layers import (
    Einsum,
    LayerNorm,
    RMSNorm,
    attention,
    output_projection,
    qkv_projections,
)

# transformers' activation names (``ACT2FN``) that the towers and projectors use.
ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
}


def patch_kernel(module: nn.Module, name: str, shape, dtype):
    """A patch embedding's kernel [C, (T,) p, p, E] (the HF convolution's weight with its output
    axis last), created in ``module``'s scope as the parameter ``name``."""
    axes = ("channels", *("patch",) * (len(shape) - 2), "embed")
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)
    return module.param(name, init, tuple(shape), dtype)


def embed_patches(patches, kernel):
    """Flattened patches [..., C*(T*)p*p] (in the kernel's axis order) -> [..., E]: a stride-p,
    size-p convolution as one matmul."""
    return patches @ kernel.reshape(-1, kernel.shape[-1])


def patchify(x, patch: int):
    """Images [N, C, S, S] -> their patches [N, (S//p)^2, C*p*p], row-major, each flattened as
    (C, p, p). Pixels past the last whole patch are not read, as a 'valid' convolution does not
    read them."""
    n, c, s, _ = x.shape
    g = s // patch
    x = x[:, :, : g * patch, : g * patch].reshape(n, c, g, patch, g, patch)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * patch * patch)


class PatchEmbed(nn.Module):
    """[N, C, S, S] -> [N, (S//p)^2, E]: ``patchify`` and ``embed_patches``; parameters
    ``kernel`` [C, p, p, E] and ``bias`` [E]."""

    patch: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.patch
        kernel = patch_kernel(self, "kernel", (x.shape[1], p, p, self.features), self.dtype)
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (self.features,),
            self.dtype,
        )
        return embed_patches(patchify(x, p), kernel) + bias


def place_features(embeds, input_ids, token_id: int, features):
    """Writes vision features over the positions of ``token_id`` in ``input_ids`` [B, T].

    ``features`` [B, R, E]: row b's r-th placeholder takes features[b, r]; [K, E]: the batch's
    placeholders in reading order, row after row, take them in turn. The caller checks that
    the counts agree (they are data; the shapes here are static). embeds [B, T, E] -> the same.
    """
    if features.ndim == 2:  # the whole batch as one row
        b, t, e = embeds.shape
        one = place_features(
            embeds.reshape(1, b * t, e), input_ids.reshape(1, b * t), token_id, features[None]
        )
        return one.reshape(embeds.shape)
    mask = input_ids == token_id
    slot = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0, features.shape[1] - 1)
    placed = jnp.take_along_axis(features.astype(embeds.dtype), slot[..., None], axis=1)
    return jnp.where(mask[..., None], placed, embeds)


def _norm(kind: str, eps: float, dtype, name: str) -> nn.Module:
    if kind == "rms_norm":
        return RMSNorm(eps, dtype=dtype, name=name)
    return LayerNorm(eps, dtype=dtype, name=name)


@dataclasses.dataclass(frozen=True)
class ViTBlockConfig:
    """A pre-norm ViT block's settings: ``norm`` 'layer_norm' or 'rms_norm' (eps ``eps``);
    ``act`` an ``ACTIVATIONS`` name; ``qk_norm``: an RMSNorm (eps 1e-6) over all heads of q and
    of k together; ``layer_scale``: learned per-channel scales of the two residual branches."""

    mlp_size: int
    num_heads: int
    norm: str = "layer_norm"
    eps: float = 1e-6
    act: str = "gelu"
    attention_bias: bool = True
    qk_norm: bool = False
    layer_scale: bool = False


class ViTAttention(nn.Module):
    """Bidirectional attention: ``q_proj``/``k_proj``/``v_proj`` [E, N, H], ``o_proj``, and
    with ``qk_norm`` ``q_norm``, ``k_norm`` [E]."""

    cfg: ViTBlockConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x):
        e, n = x.shape[-1], self.cfg.num_heads
        q, k, v = qkv_projections(x, n, e // n, self.cfg.attention_bias, self.dtype)
        if self.cfg.qk_norm:

            def norm(name, y):
                flat = y.reshape(*y.shape[:2], e)
                return RMSNorm(1e-6, dtype=self.dtype, name=name)(flat).reshape(y.shape)

            q, k = norm("q_norm", q), norm("k_norm", k)
        out = attention(q, k, v, causal=False, impl=self.attention_impl)
        return output_projection(out, e, self.dtype)


class ViTBlock(nn.Module):
    """A pre-norm ViT block, [B, T, E] -> [B, T, E]: x + s1 * attn(norm1(x)), then
    x + s2 * fc2(act(fc1(norm2(x)))), the scales s1, s2 ``lambda_1``, ``lambda_2`` [E] with
    ``layer_scale``, else 1. Parameters: ``norm1``, ``attn`` (``ViTAttention``), ``norm2``,
    ``fc1``, ``fc2``."""

    cfg: ViTBlockConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        e, m = x.shape[-1], cfg.mlp_size

        def scaled(name, y):
            if not cfg.layer_scale:
                return y
            init = nn.with_logical_partitioning(nn.initializers.constant(0.1), ("embed",))
            return self.param(name, init, (e,), self.dtype) * y

        attn = ViTAttention(cfg, self.dtype, self.attention_impl, name="attn")
        x = x + scaled("lambda_1", attn(_norm(cfg.norm, cfg.eps, self.dtype, "norm1")(x)))
        h = _norm(cfg.norm, cfg.eps, self.dtype, "norm2")(x)
        h = Einsum("BTE,EM->BTM", (e, m), ("embed", "mlp"), ("mlp",), self.dtype, name="fc1")(h)
        h = ACTIVATIONS[cfg.act](h)
        h = Einsum("BTM,ME->BTE", (m, e), ("mlp", "embed"), ("embed",), self.dtype, name="fc2")(h)
        return x + scaled("lambda_2", h)


# --- flat patches at their own resolution (the Qwen-VL towers) -----------------------------


def grids(grid_thw) -> list[tuple[int, int, int]]:
    """The (t, h, w) patch grids of ``grid_thw`` [num, 3] as ints."""
    grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    return [(int(t), int(h), int(w)) for t, h, w in grid]


def patch_positions(cfg, grid) -> np.ndarray:
    """transformers' ``get_vision_position_ids`` for one grid: (row, col) of every patch in the
    processor's order (merge blocks of m x m neighbours, repeated for every frame) [t*h*w, 2]."""
    t, h, w = grid
    m = cfg.spatial_merge_size
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // m, m, w // m, m)
    rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([rows, cols], -1), (t, 1)).astype(np.int32)


def rotary(cfg, positions):
    """(cos, sin) [..., head_dim] of the Qwen-VL towers' 2-D rotary embedding (``cfg.head_dim``,
    ``cfg.rope_theta``) at positions [..., 2]: head_dim/4 frequencies of base ``rope_theta`` for
    rows, the same for columns, the pair concatenated and repeated for the two halves
    ``rotate_half`` pairs up."""
    quarter = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, quarter, 2, dtype=np.float32) / quarter))
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq.astype(np.float32))
    freqs = freqs.reshape(*freqs.shape[:-2], -1)  # rows' then columns' frequencies
    freqs = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(freqs), jnp.sin(freqs)


def rotate(x, cos, sin):
    """q or k [G, L, heads, H] rotated in float32 (``apply_rotary_pos_emb_vision``)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    cos, sin = cos[:, :, None], sin[:, :, None]
    return (x32 * cos + rotated * sin).astype(x.dtype)
