"""LLaVA-OneVision in Flax, as transformers' ``LlavaOnevisionForConditionalGeneration``.

SigLIP tower (``vision.py``) -> the selected hidden states (concatenated when several) ->
projector (linear, GELU, linear) -> for videos, 2x2 bilinear pooling of each frame's grid
(torch's ``interpolate(..., mode="bilinear")``, align_corners False, no antialiasing) and one
``image_newline`` a video; for a base-size image, the base view followed by the unpadded tile
with a newline a row -> embeddings placed at the ``<video>`` / ``<image>`` positions -> the
shared Qwen2 ``Decoder``.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbones.llava_onevision.config import LlavaOnevisionConfig
from headhunt_jax.backbones.llava_onevision.vision import SiglipVisionTower
from headhunt_jax.models.decoder import Decoder
from headhunt_jax.models.family import FamilyModule
from headhunt_jax.models.layers import Einsum
from headhunt_jax.models.vision import ACTIVATIONS, place_features


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
        x = ACTIVATIONS[self.act](x)
        return Einsum("BTD,DE->BTE", (e, e), ("mlp", "embed"), b, self.dtype, name="linear_2")(x)


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
            embeds = place_features(embeds, input_ids, cfg.image_token_id, images)
        if pixel_values_videos is not None:
            videos = self.video_embeddings(pixel_values_videos)
            videos = videos.reshape(-1, videos.shape[-1])
            embeds = place_features(embeds, input_ids, cfg.video_token_id, videos)
        return embeds
