"""The Qwen2.5-VL vision tower in Flax, as transformers' ``Qwen2_5_VisionTransformerPretrainedModel``.

``pixel_values`` [N, C*T*P*P] (the processor's rows: per image or video, per frame pair, the
patches in merge-block order, 2x2 neighbours adjacent) -> patch embedding (the Conv3d as one
matmul) -> the rows reordered window by window (``window_index``) -> ``depth`` blocks of
RMSNorm, attention with 2-D rotary embeddings, RMSNorm, SwiGLU; attention is within a window
(``window_size`` px square, windows at the right and bottom borders cut short, as transformers'
padded index grid leaves them), or within a frame in ``fullatt_block_indexes`` -> the patch
merger (RMSNorm, 2x2 neighbours concatenated, linear, GELU, linear) -> the merged tokens put back
in the processor's order: [N / 4, out_hidden_size].

Everything that depends on ``grid_thw`` (the reordering, its inverse, the rotary positions, the
segment ids) is computed on the host with numpy by ``vision_indices`` and passed in as arrays,
so a jitted call compiles once per distinct set of grids.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VisionConfig
from headhunt_jax.models.layers import (
    Einsum,
    RMSNorm,
    attention,
    output_projection,
    qkv_projections,
)

_ACT = {
    "silu": nn.silu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
}

INDEX_KEYS = ("order", "positions", "window_ids", "frame_ids", "restore")


def _grids(grid_thw) -> list[tuple[int, int, int]]:
    grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    return [(int(t), int(h), int(w)) for t, h, w in grid]


def num_merged_tokens(cfg: Qwen25VisionConfig, grid_thw) -> int:
    """Tokens the tower gives for these grids (what the decoder's placeholders must number)."""
    return sum(t * h * w for t, h, w in _grids(grid_thw)) // cfg.merge_unit


def window_index(cfg: Qwen25VisionConfig, grid_thw) -> tuple[np.ndarray, np.ndarray]:
    """transformers' ``get_vision_window_index``: (merged-token order, window sizes).

    Each frame's merged-token grid (h/m x w/m) is padded on the right and bottom to whole
    windows of ``window_merged`` tokens (a whole extra window when it already divides, as
    transformers pads), cut into windows row-major, and the padding dropped. Returns the merged
    tokens' indices window by window [N / m^2] and each non-empty window's token count.
    """
    m, ws = cfg.spatial_merge_size, cfg.window_merged
    order, sizes, offset = [], [], 0
    for t, h, w in _grids(grid_thw):
        if h % m or w % m:
            raise ValueError(f"grid {t}x{h}x{w}: h and w must be multiples of the merge size {m}")
        gh, gw = h // m, w // m
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        ph, pw = ws - gh % ws, ws - gw % ws
        nh, nw = (gh + ph) // ws, (gw + pw) // ws
        padded = np.pad(index, ((0, 0), (0, ph), (0, pw)), constant_values=-1)
        padded = padded.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4)
        padded = padded.reshape(t * nh * nw, ws * ws)
        for window in padded:
            kept = window[window >= 0]
            if kept.size:
                order.append(kept + offset)
                sizes.append(kept.size)
        offset += t * gh * gw
    return np.concatenate(order).astype(np.int32), np.asarray(sizes, np.int32)


def patch_positions(cfg: Qwen25VisionConfig, grid_thw) -> np.ndarray:
    """transformers' ``get_vision_position_ids``: (row, col) of every patch in the processor's
    order (merge blocks of m x m neighbours, repeated for every frame) [N, 2]."""
    m = cfg.spatial_merge_size
    out = []
    for t, h, w in _grids(grid_thw):
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // m, m, w // m, m)
        rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([rows, cols], -1), (t, 1)))
    return np.concatenate(out).astype(np.int32)


def vision_indices(cfg: Qwen25VisionConfig, grid_thw) -> dict[str, np.ndarray]:
    """The host-side arrays the tower needs for ``grid_thw`` [num_images_or_videos, 3]:

    - ``order`` int32 [N]: patch rows in window order (each merged token's m^2 patches together);
    - ``positions`` int32 [N, 2]: (row, col) of each reordered patch, for the rotary embedding;
    - ``window_ids`` int32 [N]: the window of each reordered patch (window attention's segments);
    - ``frame_ids`` int32 [N]: the frame of each reordered patch (full attention's segments: as
      transformers' ``cu_seqlens``, every frame of a video attends on its own);
    - ``restore`` int32 [N / m^2]: merged tokens back in the processor's order.
    """
    unit = cfg.merge_unit
    merged, sizes = window_index(cfg, grid_thw)
    order = (merged[:, None] * unit + np.arange(unit)[None]).reshape(-1).astype(np.int32)
    window_ids = np.repeat(np.arange(sizes.size, dtype=np.int32), sizes * unit)
    frame_sizes = [h * w for t, h, w in _grids(grid_thw) for _ in range(t)]
    frames = np.repeat(np.arange(len(frame_sizes), dtype=np.int32), frame_sizes)
    return {
        "order": order,
        "positions": patch_positions(cfg, grid_thw)[order],
        "window_ids": window_ids,
        "frame_ids": frames[order],
        "restore": np.argsort(merged, kind="stable").astype(np.int32),
    }


def rotary(cfg: Qwen25VisionConfig, positions):
    """(cos, sin) [N, head_dim] of the 2-D rotary embedding (``Qwen2_5_VLVisionRotaryEmbedding``):
    head_dim/4 frequencies of base ``rope_theta`` for rows, the same for columns, the pair
    concatenated and repeated for the two halves ``rotate_half`` pairs up; float32."""
    quarter = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, quarter, 2, dtype=np.float32) / quarter))
    inv_freq = jnp.asarray(inv_freq.astype(np.float32))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [N, 2, head_dim / 4]
    freqs = freqs.reshape(freqs.shape[0], -1)  # rows' then columns' frequencies
    freqs = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(freqs), jnp.sin(freqs)


def _rotate(x, cos, sin):
    """q or k [B, N, heads, H] rotated in float32 (``apply_rotary_pos_emb_vision``)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    cos, sin = cos[None, :, None], sin[None, :, None]
    return (x32 * cos + rotated * sin).astype(x.dtype)


class VisionAttention(nn.Module):
    cfg: Qwen25VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x, cos, sin, segments):
        cfg = self.cfg
        e, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim

        q, k, v = qkv_projections(x, n, h, True, self.dtype)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = attention(
            q, k, v, causal=False, impl=self.attention_impl, segment_ids=(segments, segments)
        )
        return output_projection(out, e, self.dtype)


class VisionBlock(nn.Module):
    cfg: Qwen25VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x, cos, sin, segments):
        cfg = self.cfg
        e, m = cfg.hidden_size, cfg.intermediate_size
        h = RMSNorm(1e-6, dtype=self.dtype, name="norm1")(x)
        x = x + VisionAttention(cfg, self.dtype, self.attention_impl, name="attn")(
            h, cos, sin, segments
        )
        h = RMSNorm(1e-6, dtype=self.dtype, name="norm2")(x)

        def mlp(name, shape, axes, bias):
            return Einsum("BTD,DF->BTF", shape, axes, bias, self.dtype, name=name)

        gate = mlp("gate_proj", (e, m), ("embed", "mlp"), ("mlp",))(h)
        up = mlp("up_proj", (e, m), ("embed", "mlp"), ("mlp",))(h)
        h = _ACT[cfg.hidden_act](gate) * up
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
    """``(pixel_values [N, C*T*P*P], **vision_indices(cfg, grid_thw))`` -> [N / m^2,
    out_hidden_size], the merged tokens in the processor's order."""

    cfg: Qwen25VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, pixel_values, order, positions, window_ids, frame_ids, restore):
        cfg = self.cfg
        if pixel_values.ndim != 2 or pixel_values.shape[1] != cfg.patch_dim:
            raise ValueError(
                f"pixel_values {tuple(pixel_values.shape)}: expected [patches, {cfg.patch_dim}] "
                f"(C*T*P*P = {cfg.in_channels}*{cfg.temporal_patch_size}*{cfg.patch_size}^2)"
            )
        n = pixel_values.shape[0]
        if n % cfg.merge_unit or order.shape != (n,) or restore.shape != (n // cfg.merge_unit,):
            raise ValueError(
                f"{n} patch rows do not fit the indices (order {order.shape}, restore "
                f"{restore.shape}): compute them with vision_indices(cfg, grid_thw)"
            )
        c, t, p, e = cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.hidden_size
        kernel = self.param(
            "patch_embed",
            nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("channels", "patch", "patch", "patch", "embed")
            ),
            (c, t, p, p, e),
            self.dtype,
        )
        x = pixel_values.astype(self.dtype) @ kernel.reshape(cfg.patch_dim, e)
        x = x[order][None]  # [1, N, E] in window order
        cos, sin = rotary(cfg, positions)
        windows, frames = window_ids[None], frame_ids[None]
        full = set(cfg.fullatt_block_indexes)
        for i in range(cfg.depth):
            segments = frames if i in full else windows
            block = VisionBlock(cfg, self.dtype, self.attention_impl, name=f"blocks_{i}")
            x = block(x, cos, sin, segments)
        merged = PatchMerger(cfg, self.dtype, name="merger")(x)[0]
        return merged[restore]


def vision_features(module: Qwen25VisionTower, params, pixel_values, grid_thw, batch_equal=True):
    """One jitted tower pass for these grids (the indices computed here, on the host; one
    compilation per distinct set of grids) -> [N / m^2, out_hidden_size].

    Images and videos never attend to each other, so when every grid is the same (the "images"
    mode: each frame of a segment one image) and ``batch_equal``, the tower runs once over a
    batch of them (``vmap``): the same result, without full attention's segment mask over the
    whole concatenated sequence (quadratic in the number of images).
    """
    grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    pixel_values = jnp.asarray(pixel_values)
    if batch_equal and len(grid) > 1 and (grid == grid[:1]).all():
        indices = {k: jnp.asarray(v) for k, v in vision_indices(module.cfg, grid[:1]).items()}
        batch = pixel_values.reshape(len(grid), -1, pixel_values.shape[-1])
        out = _apply_batch(module, params, batch, indices)
        return out.reshape(-1, out.shape[-1])
    indices = {k: jnp.asarray(v) for k, v in vision_indices(module.cfg, grid).items()}
    return _apply(module, params, pixel_values, indices)


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, params, pixel_values, indices):
    return module.apply({"params": params}, pixel_values, **indices)


@functools.partial(jax.jit, static_argnums=0)
def _apply_batch(module, params, pixel_values, indices):
    return jax.vmap(lambda x: module.apply({"params": params}, x, **indices))(pixel_values)
