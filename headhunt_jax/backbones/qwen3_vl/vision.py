"""The Qwen3-VL vision tower in Flax, as transformers' ``Qwen3VLVisionModel``.

transformers runs every image and video of a batch as one flat sequence of patches, attending
within each frame (one temporal patch of an item) through lists of sequence lengths. Frames never
see each other, so here the *frame* is the unit: each batch row's frames (of one modality, in the
order of its placeholders) are laid out on the host (``frame_layout``) as [F, L] slots, a frame's
patches in the processor's order (m x m merge blocks) and padded to the row's largest frame;
segment ids (0, -1 for padding) keep the padding apart. The work is per frame, never quadratic
in a row's patches, and a jitted call compiles once per padded size.

Each patch gets, besides its patch embedding (the Conv3d as one matmul, with bias), the learned
position table resampled to its frame's grid: a bilinear interpolation (align_corners) of the
square ``grid_side`` x ``grid_side`` table, as four taps and weights per patch computed on the
host (``interpolation``). Blocks: LayerNorm, attention (fused qkv, 2-D rotary embeddings in
float32), LayerNorm, GELU MLP; their parameters are stacked and run as one scan. The patch merger
(LayerNorm, m^2 neighbours concatenated, linear, GELU, linear) gives each frame's merged tokens;
the DeepStack mergers (the same, but the LayerNorm after the concatenation) give the merged
tokens of the blocks in ``deepstack_visual_indexes``, which the scan keeps as it passes them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.qwen3_vl.config import Qwen3VLVisionConfig
from headhunt_jax.models import stack
from headhunt_jax.models.layers import Einsum, LayerNorm, attention, output_projection
from headhunt_jax.models.vision import (
    ACTIVATIONS,
    embed_patches,
    patch_kernel,
    patch_positions,
    rotary,
    rotate,
)

__all__ = ["interpolation", "frame_layout", "Qwen3VLVisionTower"]


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps (floor, floor + 1, clamped to the table) and their weights [n, 2] of
    positions ``index`` on an axis of ``size`` patches, aligned corners on a ``side``-long table:
    position i reads the table at i * (side - 1) / (size - 1), in float32 as transformers."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.clip(1 - np.abs(src[:, None] - floor[:, None] - offsets), 0, None)
    return taps, weights.astype(np.float32)


def interpolation(cfg: Qwen3VLVisionConfig, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The learned position table resampled to one frame of h x w patches (transformers'
    ``get_vision_interpolation_indices_and_weights``, bilinear, align_corners): for each patch in
    the processor's order, the four table rows it mixes, int32 [h*w, 4], and their weights,
    float32 [h*w, 4]."""
    side = cfg.grid_side
    rc = patch_positions(cfg, (1, h, w))
    row_taps, row_weights = _axis_taps(rc[:, 0], h, side)
    col_taps, col_weights = _axis_taps(rc[:, 1], w, side)
    index = (row_taps[:, :, None] * side + col_taps[:, None, :]).reshape(-1, 4)
    weight = (row_weights[:, :, None] * col_weights[:, None, :]).reshape(-1, 4)
    return index.astype(np.int32), weight


def frame_layout(cfg: Qwen3VLVisionConfig, rows: list[list[tuple[int, int, Any]]]) -> dict:
    """Each batch row's frames [(h, w, pixel rows [h*w, C*T*P*P])], in the order of the row's
    placeholders -> the tower's inputs, frames padded to the row with the most and slots to the
    largest frame (L, a multiple of merge_unit):

    - ``pixels`` [B, F, L, C*T*P*P] (zeros in padding), ``segments`` int32 [B, F, L] (0, -1 in
      padding), ``positions`` int32 [B, F, L, 2] (row, col for the rotary embedding);
    - ``pos_index`` int32 [B, F, L, 4], ``pos_weight`` float32 [B, F, L, 4]: ``interpolation``;
    - ``restore`` int32 [B, R]: the r-th placeholder of a row takes merged slot
      ``restore[b, r]`` of the row's F * L / merge_unit (R: the most tokens a row needs).

    The layout is the grids' alone; the pixels are only gathered into it, so they may be traced
    (``jax.grad`` with respect to them): then ``pixels`` is a JAX array.
    """
    unit = cfg.merge_unit
    f = max(1, max(len(frames) for frames in rows))
    slots = max([h * w for frames in rows for h, w, _ in frames] or [unit])
    tokens = max(1, max(sum(h * w for h, w, _ in frames) // unit for frames in rows))
    b = len(rows)
    out = {
        "segments": np.full((b, f, slots), -1, np.int32),
        "positions": np.zeros((b, f, slots, 2), np.int32),
        "pos_index": np.zeros((b, f, slots, 4), np.int32),
        "pos_weight": np.zeros((b, f, slots, 4), np.float32),
        "restore": np.zeros((b, tokens), np.int32),
    }
    traced = any(isinstance(px, jax.core.Tracer) for frames in rows for _, _, px in frames)
    xp = jnp if traced else np
    empty = xp.zeros((slots, cfg.patch_dim), xp.float32)
    pixels = [[empty] * f for _ in range(b)]
    for r, frames in enumerate(rows):
        restore = []
        for i, (h, w, px) in enumerate(frames):
            n = h * w
            pad = ((0, slots - n), (0, 0))
            pixels[r][i] = xp.pad(xp.asarray(px, xp.float32), pad)
            out["segments"][r, i, :n] = 0
            out["positions"][r, i, :n] = patch_positions(cfg, (1, h, w))
            out["pos_index"][r, i, :n], out["pos_weight"][r, i, :n] = interpolation(cfg, h, w)
            restore.append(np.arange(n // unit) + i * (slots // unit))
        if restore:
            flat = np.concatenate(restore)
            out["restore"][r, : flat.size] = flat
    out["pixels"] = xp.stack([xp.stack(row) for row in pixels])
    return out


class VisionAttention(nn.Module):
    """Attention within each frame: fused ``qkv`` [D, 3, N, H] (bias), 2-D rotary q and k,
    ``o_proj`` (bias)."""

    cfg: Qwen3VLVisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x, cos, sin, segments):
        cfg = self.cfg
        d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        qkv = Einsum(
            "BTD,DJNH->BTJNH",
            (d, 3, n, h),
            ("embed", "qkv", "heads", "head_dim"),
            ("qkv", "heads", "head_dim"),
            self.dtype,
            name="qkv",
        )(x)
        q, k, v = rotate(qkv[:, :, 0], cos, sin), rotate(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
        seg = (segments, segments)
        out = attention(q, k, v, causal=False, impl=self.attention_impl, segment_ids=seg)
        return output_projection(out, d, self.dtype)


class VisionBlock(nn.Module):
    """x + attn(norm1(x)), then x + fc2(act(fc1(norm2(x)))); LayerNorms of eps 1e-6."""

    cfg: Qwen3VLVisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x, cos, sin, segments):
        cfg = self.cfg
        d, m = cfg.hidden_size, cfg.intermediate_size
        h = LayerNorm(1e-6, dtype=self.dtype, name="norm1")(x)
        attn = VisionAttention(cfg, self.dtype, self.attention_impl, name="attn")
        x = x + attn(h, cos, sin, segments)
        h = LayerNorm(1e-6, dtype=self.dtype, name="norm2")(x)
        h = Einsum("BTD,DM->BTM", (d, m), ("embed", "mlp"), ("mlp",), self.dtype, name="fc1")(h)
        h = ACTIVATIONS[cfg.hidden_act](h)
        return x + Einsum(
            "BTM,MD->BTD", (m, d), ("mlp", "embed"), ("embed",), self.dtype, name="fc2"
        )(h)


class PatchMerger(nn.Module):
    """[G, L, D] -> [G, L / m^2, out_hidden_size]: LayerNorm (over D, or with ``postshuffle``
    over the m^2 D concatenated), m^2 neighbouring patches concatenated, linear, GELU (exact),
    linear."""

    cfg: Qwen3VLVisionConfig
    postshuffle: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        d, o = cfg.hidden_size * cfg.merge_unit, cfg.out_hidden_size
        axis = "vision_mlp" if self.postshuffle else "embed"
        norm = LayerNorm(1e-6, axis_name=axis, dtype=self.dtype, name="norm")
        if not self.postshuffle:  # each patch, before they are concatenated
            x = norm(x)
        x = x.reshape(x.shape[0], -1, d)
        if self.postshuffle:
            x = norm(x)
        x = Einsum("BTD,DF->BTF", (d, d), ("vision_mlp", "mlp"), ("mlp",), self.dtype, name="fc1")(
            x
        )
        x = nn.gelu(x, approximate=False)
        return Einsum("BTD,DF->BTF", (d, o), ("mlp", "embed"), ("embed",), self.dtype, name="fc2")(
            x
        )


def _embed(module: nn.Module, pixels, pos_index, pos_weight):
    """Patch embeddings plus the resampled position table, [G, L, D], the parameters created
    in ``module``'s scope (``Qwen3VLVisionTower``'s)."""
    cfg, dtype = module.cfg, module.dtype
    c, t, p, d = cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.hidden_size
    kernel = patch_kernel(module, "patch_embed", (c, t, p, p, d), dtype)
    zeros = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
    bias = module.param("patch_bias", zeros, (d,), dtype)
    normal = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("positions", "embed"))
    table = module.param("pos_embed", normal, (cfg.num_position_embeddings, d), dtype)
    x = embed_patches(pixels.astype(dtype), kernel) + bias
    taps = jnp.take(table, pos_index, axis=0)  # [G, L, 4, D]
    return x + jnp.einsum("GLK,GLKD->GLD", pos_weight.astype(dtype), taps)


class Qwen3VLVisionTower(nn.Module):
    """Frames in slots (``frame_layout``): pixels [G, L, C*T*P*P], segments int [G, L],
    positions int [G, L, 2], pos_index int [G, L, 4], pos_weight [G, L, 4] -> (merged tokens
    [G, L / merge_unit, out_hidden_size], DeepStack tokens [len(deepstack_visual_indexes), G,
    L / merge_unit, out_hidden_size]).

    Parameters: ``patch_embed`` [C, T, P, P, D] and ``patch_bias`` [D] (the Conv3d, as one
    matmul), ``pos_embed`` [num_position_embeddings, D], ``layers`` (the blocks, stacked),
    ``merger``, ``deepstack_merger_<i>``."""

    cfg: Qwen3VLVisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, pixels, segments, positions, pos_index, pos_weight):
        cfg = self.cfg
        if pixels.ndim != 3 or pixels.shape[-1] != cfg.patch_dim:
            raise ValueError(
                f"pixels {tuple(pixels.shape)}: expected [frames, slots, {cfg.patch_dim}] "
                f"(C*T*P*P = {cfg.in_channels}*{cfg.temporal_patch_size}*{cfg.patch_size}^2)"
            )
        x = _embed(self, pixels, pos_index, pos_weight)
        cos, sin = rotary(cfg, positions)
        block = VisionBlock(cfg, self.dtype, self.attention_impl, parent=None)
        unit, h = cfg.merge_unit, cfg.head_dim
        example = (
            jnp.zeros((1, unit, cfg.hidden_size), self.dtype),
            jnp.zeros((1, unit, h)),
            jnp.zeros((1, unit, h)),
            jnp.zeros((1, unit), jnp.int32),
        )
        params = self.param(stack.LAYERS, stack.stacked(block, cfg.depth, *example))
        levels = cfg.deepstack_visual_indexes
        level_of = jnp.asarray([levels.index(i) if i in levels else -1 for i in range(cfg.depth)])

        def run(layer, i, carry):
            x, kept = carry
            x = block.apply({"params": layer}, x, cos, sin, segments)
            here = (jnp.arange(len(levels)) == level_of[i])[:, None, None, None]
            return (x, jnp.where(here, x[None], kept)), None

        kept = jnp.zeros((len(levels), *x.shape), x.dtype)
        (x, kept), _ = stack.scan(run, params, (x, kept), 0, cfg.depth)
        merged = PatchMerger(cfg, dtype=self.dtype, name="merger")(x)
        deep = [
            PatchMerger(cfg, True, self.dtype, name=f"deepstack_merger_{j}")(kept[j])
            for j in range(len(levels))
        ]
        deep = jnp.stack(deep) if deep else jnp.zeros((0, *merged.shape), merged.dtype)
        return merged, deep
