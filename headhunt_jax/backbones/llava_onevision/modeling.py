"""LLaVA-OneVision in Flax, as transformers' ``LlavaOnevisionForConditionalGeneration``.

SigLIP tower (patch embedding as one matmul over flattened patches, learned position
embeddings, pre-LN blocks with a GELU MLP) -> the selected hidden states (concatenated when
several) -> projector (linear, GELU, linear) -> for videos, 2x2 bilinear pooling of each frame's
grid (torch's ``interpolate(..., mode="bilinear")``, align_corners False, no antialiasing) and one
``image_newline`` a video; for a base-size image, the base view followed by the unpadded tile
with a newline a row -> embeddings placed at the ``<video>`` / ``<image>`` positions -> the
shared Qwen2 ``Decoder``.

SigLIP's ``post_layernorm`` is never applied to the features: transformers selects from the
encoder's hidden states, and SigLIP does not tie the last of them to the normed output. Its
parameters exist (the checkpoint has them) and the layer runs only at init.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.llava_onevision.config import (
    GELU_TANH,
    LlavaOnevisionConfig,
    SiglipConfig,
)
from headhunt_jax.models import stack
from headhunt_jax.models.decoder import Decoder
from headhunt_jax.models.family import FamilyModule
from headhunt_jax.models.layers import (
    Einsum,
    LayerNorm,
    attention,
    output_projection,
    qkv_projections,
)


def _gelu(name: str):
    return lambda x: nn.gelu(x, approximate=GELU_TANH[name])


class PatchEmbed(nn.Module):
    """A stride-p, size-p 'valid' convolution as one matmul over flattened patches.

    [B, C, S, S] -> [B, (S//p)^2, E] (pixels past the last whole patch are not read, as the
    convolution does not); kernel [C, p, p, E] (the HF conv weight, transposed).
    """

    patch: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, c, s, _ = x.shape
        p, g = self.patch, s // self.patch
        init = nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("channels", "patch", "patch", "embed")
        )
        kernel = self.param("kernel", init, (c, p, p, self.features), self.dtype)
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (self.features,),
            self.dtype,
        )
        patches = (
            x[:, :, : g * p, : g * p]
            .reshape(b, c, g, p, g, p)
            .transpose(0, 2, 4, 1, 3, 5)
            .reshape(b, g * g, c * p * p)
        )
        return patches @ kernel.reshape(c * p * p, self.features) + bias


class SiglipAttention(nn.Module):
    cfg: SiglipConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        e, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim

        q, k, v = qkv_projections(x, n, h, True, self.dtype)
        out = attention(q, k, v, causal=False, impl=self.attention_impl)
        return output_projection(out, e, self.dtype)


class SiglipLayer(nn.Module):
    cfg: SiglipConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        e, m, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
        h = LayerNorm(eps, dtype=self.dtype, name="norm1")(x)
        x = x + SiglipAttention(cfg, self.dtype, self.attention_impl, name="attn")(h)
        h = LayerNorm(eps, dtype=self.dtype, name="norm2")(x)
        h = Einsum("BTE,EM->BTM", (e, m), ("embed", "mlp"), ("mlp",), self.dtype, name="fc1")(h)
        h = _gelu(cfg.hidden_act)(h)
        h = Einsum("BTM,ME->BTE", (m, e), ("mlp", "embed"), ("embed",), self.dtype, name="fc2")(h)
        return x + h


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
        block = SiglipLayer(cfg, self.dtype, self.attention_impl, parent=None)
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


def bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of torch's bilinear resize (align_corners=False, no antialiasing),
    computed in float32 as torch does for float32 inputs."""
    scale = np.float32(in_size) / np.float32(out_size)
    w = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        src = max(scale * np.float32(i + 0.5) - np.float32(0.5), np.float32(0.0))
        i0 = min(int(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = np.float32(src - i0)
        w[i, i0] += np.float32(1.0) - frac
        w[i, i1] += frac
    return w


def pool_frames(x, grid: int):
    """Projected frame tokens [frames, g*g, E] -> [frames, ceil(g/2)^2, E], as transformers'
    ``apply_pooling`` (bilinear interpolation to ceil(g/2) x ceil(g/2))."""
    n, t, e = x.shape
    out = math.ceil(grid / 2)
    w = jnp.asarray(bilinear_weights(grid, out))
    table = x.reshape(n, grid, grid, e).astype(jnp.float32)
    y = jnp.einsum("oy,Byxe,px->Bope", w, table, w, precision=jax.lax.Precision.HIGHEST)
    return y.reshape(n, out * out, e).astype(x.dtype)


class Projector(nn.Module):
    """linear_1 -> GELU -> linear_2, from the (concatenated) vision features to the text width."""

    text_hidden: int
    act: str = "gelu"
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, e = x.shape[-1], self.text_hidden
        b = ("embed",) if self.bias else None
        x = Einsum("BTD,DE->BTE", (d, e), ("vision_mlp", "embed"), b, self.dtype, name="linear_1")(
            x
        )
        x = _gelu(self.act)(x)
        return Einsum("BTD,DE->BTE", (e, e), ("mlp", "embed"), b, self.dtype, name="linear_2")(x)


def _place(embeds, input_ids, token_id, features):
    """Writes features [K, E] over the positions of ``token_id`` in reading order (the caller
    checks that there are K of them)."""
    mask = input_ids == token_id
    slot = jnp.clip(jnp.cumsum(mask.reshape(-1)) - 1, 0, features.shape[0] - 1)
    placed = features.astype(embeds.dtype)[slot].reshape(embeds.shape)
    return jnp.where(mask[..., None], placed, embeds)


class LlavaOnevision(FamilyModule):
    """The whole model; ``language_model`` is the shared ``Decoder``, so head features come out
    as for every other backbone."""

    cfg: LlavaOnevisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    def setup(self):
        cfg = self.cfg
        if cfg.vision_feature_select_strategy != "full":
            raise ValueError(
                "only vision_feature_select_strategy='full' is supported (SigLIP has no CLS token)"
            )
        self.vision = SiglipVisionTower(cfg.vision, self.dtype, self.attention_impl)
        self.projector = Projector(
            cfg.text.hidden_size, cfg.projector_hidden_act, cfg.projector_bias, self.dtype
        )
        self.image_newline = self.param(
            "image_newline",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
            (cfg.text.hidden_size,),
            self.dtype,
        )
        self.language_model = Decoder(cfg.text, self.dtype, self.attention_impl)

    def frame_features(self, pixel_values):
        """[frames, 3, S, S] -> projected features [frames, g*g, text hidden] of the selected
        layers."""
        hidden = self.vision(pixel_values, self.cfg.feature_layers)
        x = hidden[0] if len(hidden) == 1 else jnp.concatenate(hidden, axis=-1)
        return self.projector(x)

    def video_embeddings(self, pixel_values_videos):
        """[B, F, 3, S, S] -> [B, F * ceil(g/2)^2 + 1, text hidden]: pooled frames, then the
        newline (transformers' ``get_video_features``)."""
        b, f = pixel_values_videos.shape[:2]
        x = self.frame_features(pixel_values_videos.reshape(b * f, *pixel_values_videos.shape[2:]))
        x = pool_frames(x, self.cfg.vision.grid).reshape(b, -1, x.shape[-1])
        newline = jnp.broadcast_to(self.image_newline.astype(x.dtype), (b, 1, x.shape[-1]))
        return jnp.concatenate([x, newline], axis=1)

    def image_embeddings(self, pixel_values, image_sizes, num_tokens: int):
        """Base-size images -> the ``num_tokens`` feature vectors of all of them in reading
        order, as transformers' ``get_image_features`` + ``pack_image_features`` lay them out
        for images no larger than the base resolution: per image the base view's g*g tokens,
        then the tile's rows kept by ``unpad_image``, each followed by ``image_newline``.

        pixel_values [I, P, 3, S, S] (P >= 2: base view, tile; the processor's layout) or
        [2 I, 3, S, S]; image_sizes [I, 2] (height, width), may be traced: the layout is a
        gather computed from them.
        """
        g = self.cfg.vision.grid
        pix = jnp.asarray(pixel_values)
        if pix.ndim == 4:
            pix = pix.reshape(-1, 2, *pix.shape[1:])
        if pix.ndim != 5 or pix.shape[1] < 2:
            raise ValueError(
                f"pixel_values {tuple(pix.shape)}: expected [images, patches >= 2, 3, S, S]"
            )
        n = pix.shape[0]
        feats = self.frame_features(pix[:, :2].reshape(2 * n, *pix.shape[2:]))
        feats = feats.reshape(n, 2, g * g, -1)
        table = jnp.concatenate(
            [
                feats[:, 0].reshape(n * g * g, -1),
                feats[:, 1].reshape(n * g * g, -1),
                self.image_newline.astype(feats.dtype)[None],
            ]
        )
        sizes = jnp.asarray(image_sizes).astype(jnp.int32).reshape(n, 2)
        h, w = jnp.maximum(sizes[:, 0], 1), jnp.maximum(sizes[:, 1], 1)  # zeros: padding
        wide = w > h
        pad_rows = jnp.where(wide, (g - h * g // w) // 2, 0)
        pad_cols = jnp.where(wide, 0, (g - w * g // h) // 2)
        cols = g - 2 * pad_cols
        lengths = g * g + (g - 2 * pad_rows) * (cols + 1)
        ends = jnp.cumsum(lengths)
        k = jnp.arange(num_tokens)
        img = jnp.clip(jnp.searchsorted(ends, k, side="right"), 0, n - 1)
        j = k - (ends - lengths)[img]
        t = jnp.maximum(j - g * g, 0)
        row, col = t // (cols[img] + 1), t % (cols[img] + 1)
        tile = n * g * g + img * g * g + (pad_rows[img] + row) * g + pad_cols[img] + col
        index = jnp.where(
            j < g * g, img * g * g + j, jnp.where(col == cols[img], 2 * n * g * g, tile)
        )
        return table[jnp.clip(index, 0, table.shape[0] - 1)]  # slots past the images: unused

    def embed(self, input_ids, pixel_values=None, image_sizes=None, pixel_values_videos=None):
        """input_ids [B, T] -> embeddings [B, T, E]; image features fill the image-token
        positions and video features the video-token positions, in reading order.
        ``check_inputs`` checks the counts (shapes are static here, the counts are data)."""
        cfg = self.cfg
        embeds = self.language_model.embed(input_ids)
        if pixel_values is not None:
            if image_sizes is None:
                raise ValueError("pixel_values need image_sizes ([images, 2]: height, width)")
            num = int(np.prod(input_ids.shape))  # an upper bound; only the image slots are read
            images = self.image_embeddings(pixel_values, image_sizes, num)
            embeds = _place(embeds, input_ids, cfg.image_token_id, images)
        if pixel_values_videos is not None:
            videos = self.video_embeddings(pixel_values_videos)
            videos = videos.reshape(-1, videos.shape[-1])
            embeds = _place(embeds, input_ids, cfg.video_token_id, videos)
        return embeds


def check_inputs(
    cfg: LlavaOnevisionConfig,
    input_ids,
    pixel_values=None,
    image_sizes=None,
    pixel_values_videos=None,
) -> None:
    """Raises a clear ValueError when the inputs do not fit together (host-side: the counts are
    data, which the jitted model cannot check)."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {ids.shape}")
    s = cfg.image_size
    n_image = int((ids == cfg.image_token_id).sum())
    want = 0
    if pixel_values is not None:
        if image_sizes is None:
            raise ValueError("pixel_values need image_sizes ([images, 2]: height, width)")
        sizes = np.asarray(image_sizes).reshape(-1, 2)
        shape = np.shape(pixel_values)
        n_img = shape[0] if len(shape) == 5 else shape[0] // 2
        if len(shape) not in (4, 5) or len(sizes) != n_img or tuple(shape[-3:]) != (3, s, s):
            raise ValueError(
                f"pixel_values {shape} / image_sizes {sizes.shape}: expected [images, 2, 3, {s}, "
                f"{s}] and [images, 2]"
            )
        big = [tuple(int(v) for v in hw) for hw in sizes if max(hw) > s or min(hw) < 1]
        if big:
            raise ValueError(
                f"images of size {big} (height, width): only images no larger than the base "
                f"resolution {s} x {s} are supported (anyres tiling is not implemented)"
            )
        want = sum(cfg.image_tokens(int(h), int(w)) for h, w in sizes)
    if n_image != want:
        raise ValueError(
            f"input_ids hold {n_image} image tokens (id {cfg.image_token_id}), the images need {want}"
        )
    n_video = int((ids == cfg.video_token_id).sum())
    want = 0
    if pixel_values_videos is not None:
        shape = np.shape(pixel_values_videos)
        if len(shape) != 5 or tuple(shape[2:]) != (3, s, s):
            raise ValueError(f"pixel_values_videos {shape}: expected [videos, frames, 3, {s}, {s}]")
        want = shape[0] * cfg.video_tokens(shape[1])
    if n_video != want:
        raise ValueError(
            f"input_ids hold {n_video} video tokens (id {cfg.video_token_id}), the videos need "
            f"{want}"
        )
