"""The Qwen2.5-VL vision tower in Flax, as transformers' ``Qwen2_5_VisionTransformerPretrainedModel``.

transformers runs all images of a batch as one flat sequence of patches reordered window by window
(``window_size`` px squares, the ones at the right and bottom borders cut short), attending within
a window, or within a frame in ``fullatt_block_indexes``, through lists of sequence lengths. Here
each image or video (an *item*) is laid out on the host (``item_layout``) as whole windows of
``window_merged``^2 merged tokens, the slots past a border window's patches padded: a window layer
is one attention over [windows, window slots], a full layer one over the item, and segment ids
(the frame; -1 for padding) keep frames and padding apart. Items are a batch axis, so the work
is per item, never quadratic in the whole batch's patches, and a jitted call compiles once per
distinct padded size.

Blocks: RMSNorm, attention (fused qkv, 2-D rotary embeddings in float32), RMSNorm, SwiGLU; their
parameters are stacked and run as one scan (``models/stack.py``), a layer choosing window or full
attention by its index. The patch merger (RMSNorm, 2x2 neighbours concatenated, linear, GELU,
linear) gives each item's merged tokens in window-slot order; ``restore`` puts them back in the
processor's order.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VisionConfig
from headhunt_jax.models import stack
from headhunt_jax.models.layers import Einsum, RMSNorm, attention, output_projection
from headhunt_jax.models.vision import (
    ACTIVATIONS,
    embed_patches,
    grids,  # noqa: F401  (the family's inputs take it from here)
    patch_kernel,
    patch_positions,
    rotary,
    rotate,
)


def merged_tokens(cfg: Qwen25VisionConfig, grid) -> int:
    """Tokens the tower gives for one (t, h, w) grid (what its placeholders must number)."""
    t, h, w = grid
    return t * h * w // cfg.merge_unit


def window_slots(cfg: Qwen25VisionConfig) -> int:
    """Patch slots of one attention window: window_merged^2 merged tokens of merge_unit patches."""
    return cfg.window_merged**2 * cfg.merge_unit


def window_index(cfg: Qwen25VisionConfig, grid) -> np.ndarray:
    """transformers' ``get_vision_window_index`` for one grid, padding kept: [windows,
    window_merged^2], each frame's merged-token indices (processor order) window by window, -1
    past a border window's tokens. A frame's h/m x w/m grid is padded on the right and bottom to
    whole windows (by a whole extra window when it already divides, as transformers pads), cut
    into windows row-major; the windows left empty are dropped."""
    t, h, w = grid
    m, ws = cfg.spatial_merge_size, cfg.window_merged
    if h % m or w % m:
        raise ValueError(f"grid {t}x{h}x{w}: h and w must be multiples of the merge size {m}")
    gh, gw = h // m, w // m
    index = np.arange(t * gh * gw).reshape(t, gh, gw)
    ph, pw = ws - gh % ws, ws - gw % ws
    nh, nw = (gh + ph) // ws, (gw + pw) // ws
    padded = np.pad(index, ((0, 0), (0, ph), (0, pw)), constant_values=-1)
    windows = padded.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(-1, ws * ws)
    return windows[(windows >= 0).any(axis=1)]


def item_layout(cfg: Qwen25VisionConfig, grid) -> dict[str, np.ndarray]:
    """One image's or video's layout in window slots (L = windows * ``window_slots``):

    - ``patch`` int32 [L]: the item's pixel row in each slot, -1 for padding;
    - ``segments`` int32 [L]: the slot's frame (full attention's segment), -1 for padding;
    - ``positions`` int32 [L, 2]: (row, col) for the rotary embedding, 0 for padding;
    - ``restore`` int32 [merged tokens]: each merged token's slot (in L / merge_unit), in the
      processor's order.
    """
    unit = cfg.merge_unit
    t, h, w = grid
    merged = window_index(cfg, grid).reshape(-1)
    valid = merged >= 0
    patch = np.where(valid[:, None], merged[:, None] * unit + np.arange(unit), -1).reshape(-1)
    ok = patch >= 0
    segments = np.where(valid, merged // max(h * w // unit, 1), -1).repeat(unit)
    positions = np.zeros((patch.size, 2), np.int32)
    positions[ok] = patch_positions(cfg, grid)[patch[ok]]
    restore = np.empty(t * h * w // unit, np.int32)
    restore[merged[valid]] = np.flatnonzero(valid)
    return {
        "patch": patch.astype(np.int32),
        "segments": segments.astype(np.int32),
        "positions": positions,
        "restore": restore,
    }


def batch_layout(cfg: Qwen25VisionConfig, rows: list[list[tuple[tuple, np.ndarray]]]) -> dict:
    """Each batch row's items [(grid, pixel rows [t*h*w, C*T*P*P])] -> the tower's inputs, items
    padded to the row with the most and slots to the largest item:

    - ``pixels`` [B, K, L, C*T*P*P] (zeros in padding), ``segments`` int32 [B, K, L] (-1),
      ``positions`` int32 [B, K, L, 2];
    - ``restore`` int32 [B, R]: the r-th placeholder token of a row takes merged slot
      ``restore[b, r]`` of the row's K * L / merge_unit (R: the most tokens a row needs).

    The layout is the grids' alone, computed here on the host; the pixels are only gathered
    into it, so they may be traced (``jax.grad`` with respect to them): then ``pixels`` is a
    JAX array.
    """
    layouts = [[(item_layout(cfg, g), px) for g, px in items] for items in rows]
    k = max(1, max(len(items) for items in layouts))
    slots = max([lay["patch"].size for items in layouts for lay, _ in items] or [window_slots(cfg)])
    tokens = max(1, max(sum(lay["restore"].size for lay, _ in items) for items in layouts))
    b, unit = len(rows), cfg.merge_unit
    out = {
        "segments": np.full((b, k, slots), -1, np.int32),
        "positions": np.zeros((b, k, slots, 2), np.int32),
        "restore": np.zeros((b, tokens), np.int32),
    }
    traced = any(isinstance(px, jax.core.Tracer) for items in rows for _, px in items)
    xp = jnp if traced else np
    empty = xp.zeros((slots, cfg.patch_dim), xp.float32)
    pixels = [[empty] * k for _ in range(b)]
    for r, items in enumerate(layouts):
        restore = []
        for i, (lay, px) in enumerate(items):
            n = lay["patch"].size
            source = np.full(slots, -1, np.int64)
            source[:n] = lay["patch"]
            rows_of = xp.take(xp.asarray(px, xp.float32), np.maximum(source, 0), axis=0)
            pixels[r][i] = xp.where((source >= 0)[:, None], rows_of, xp.float32(0))
            out["segments"][r, i, :n] = lay["segments"]
            out["positions"][r, i, :n] = lay["positions"]
            restore.append(lay["restore"] + i * (slots // unit))
        if restore:
            flat = np.concatenate(restore)
            out["restore"][r, : flat.size] = flat
    out["pixels"] = xp.stack([xp.stack(row) for row in pixels])
    return out


class VisionAttention(nn.Module):
    """Attention within each window of ``slots`` slots or, where ``full``, within each frame."""

    cfg: Qwen25VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x, cos, sin, segments, full):
        cfg = self.cfg
        e, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        qkv = Einsum(
            "BTE,EJNH->BTJNH",
            (e, 3, n, h),
            ("embed", "qkv", "heads", "head_dim"),
            ("qkv", "heads", "head_dim"),
            self.dtype,
            name="qkv",
        )(x)
        q, k, v = rotate(qkv[:, :, 0], cos, sin), rotate(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
        impl, s = self.attention_impl, window_slots(cfg)

        def over(groups):  # attention within blocks of ``groups`` slots
            g = q.shape[0] * q.shape[1] // groups
            q_, k_, v_ = (y.reshape(g, groups, n, h) for y in (q, k, v))
            seg = segments.reshape(g, groups)
            out = attention(q_, k_, v_, causal=False, impl=impl, segment_ids=(seg, seg))
            return out.reshape(q.shape)

        out = jax.lax.cond(full, lambda: over(q.shape[1]), lambda: over(s))
        return output_projection(out, e, self.dtype)


class VisionBlock(nn.Module):
    cfg: Qwen25VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x, cos, sin, segments, full):
        cfg = self.cfg
        e, m = cfg.hidden_size, cfg.intermediate_size
        h = RMSNorm(1e-6, dtype=self.dtype, name="norm1")(x)
        attn = VisionAttention(cfg, self.dtype, self.attention_impl, name="attn")
        x = x + attn(h, cos, sin, segments, full)
        h = RMSNorm(1e-6, dtype=self.dtype, name="norm2")(x)

        def mlp(name, shape, axes, bias):
            return Einsum("BTD,DF->BTF", shape, axes, bias, self.dtype, name=name)

        gate = mlp("gate_proj", (e, m), ("embed", "mlp"), ("mlp",))(h)
        up = mlp("up_proj", (e, m), ("embed", "mlp"), ("mlp",))(h)
        h = ACTIVATIONS[cfg.hidden_act](gate) * up
        return x + mlp("down_proj", (m, e), ("mlp", "embed"), ("embed",))(h)


class PatchMerger(nn.Module):
    """RMSNorm, m^2 neighbouring patches concatenated, linear, GELU (exact), linear."""

    cfg: Qwen25VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        d, o = cfg.hidden_size * cfg.merge_unit, cfg.out_hidden_size
        x = RMSNorm(1e-6, dtype=self.dtype, name="ln_q")(x)
        x = x.reshape(x.shape[0], -1, d)
        x = Einsum("BTD,DF->BTF", (d, d), ("vision_mlp", "mlp"), ("mlp",), self.dtype, name="fc1")(
            x
        )
        x = nn.gelu(x, approximate=False)
        return Einsum("BTD,DF->BTF", (d, o), ("mlp", "embed"), ("embed",), self.dtype, name="fc2")(
            x
        )


class Qwen25VisionTower(nn.Module):
    """Items in window slots (``batch_layout``): pixels [G, L, C*T*P*P], segments int [G, L],
    positions int [G, L, 2] -> merged tokens [G, L / merge_unit, out_hidden_size] in slot order.

    Parameters: ``patch_embed`` [C, T, P, P, E] (the Conv3d, as one matmul), ``layers`` (the
    blocks, stacked), ``merger``."""

    cfg: Qwen25VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, pixels, segments, positions):
        cfg = self.cfg
        if pixels.ndim != 3 or pixels.shape[-1] != cfg.patch_dim:
            raise ValueError(
                f"pixels {tuple(pixels.shape)}: expected [items, slots, {cfg.patch_dim}] "
                f"(C*T*P*P = {cfg.in_channels}*{cfg.temporal_patch_size}*{cfg.patch_size}^2)"
            )
        if pixels.shape[1] % window_slots(cfg):
            raise ValueError(f"{pixels.shape[1]} slots are not whole windows: use batch_layout")
        c, t, p, e = cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.hidden_size
        kernel = patch_kernel(self, "patch_embed", (c, t, p, p, e), self.dtype)
        x = embed_patches(pixels.astype(self.dtype), kernel)
        cos, sin = rotary(cfg, positions)
        block = VisionBlock(cfg, self.dtype, self.attention_impl, parent=None)
        s = window_slots(cfg)
        example = (
            jnp.zeros((1, s, e), self.dtype),
            jnp.zeros((1, s, cfg.head_dim)),
            jnp.zeros((1, s, cfg.head_dim)),
            jnp.zeros((1, s), jnp.int32),
            False,
        )
        params = self.param(stack.LAYERS, stack.stacked(block, cfg.depth, *example))
        full = jnp.asarray([i in cfg.fullatt_block_indexes for i in range(cfg.depth)])

        def run(layer, i, x):
            return block.apply({"params": layer}, x, cos, sin, segments, full[i]), None

        x, _ = stack.scan(run, params, x, 0, cfg.depth)
        return PatchMerger(cfg, self.dtype, name="merger")(x)
