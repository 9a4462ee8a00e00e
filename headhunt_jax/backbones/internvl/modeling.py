"""InternVL3 / InternVL3.5: InternViT -> pixel shuffle -> MLP projector -> image embeddings placed
at the image-token positions of ``input_ids`` -> Qwen2 (InternVL3) or Qwen3 (InternVL3.5) decoder.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from headhunt_jax.backbones.internvl.config import InternVLConfig
from headhunt_jax.backbones.internvl.vision import InternViT
from headhunt_jax.models.decoder import Decoder
from headhunt_jax.models.family import FamilyModule
from headhunt_jax.models.layers import Einsum, LayerNorm
from headhunt_jax.models.vision import place_features


def pixel_shuffle(x, ratio: float):
    """[N, S, S, C] -> [N, S*r, S*r, C/r^2], the same element order as transformers' InternVL."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * ratio), int(c / ratio)).transpose(0, 2, 1, 3)
    x = x.reshape(n, int(h * ratio), int(w * ratio), int(c / ratio**2))
    return x.transpose(0, 2, 1, 3)


class Projector(nn.Module):
    text_hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, e = x.shape[-1], self.text_hidden
        x = LayerNorm(1e-5, axis_name="vision_mlp", dtype=self.dtype, name="norm")(x)
        x = Einsum(
            "ITD,DE->ITE", (d, e), ("vision_mlp", "embed"), ("embed",), self.dtype, name="linear_1"
        )(x)
        x = nn.gelu(x, approximate=False)
        return Einsum(
            "ITD,DE->ITE", (e, e), ("mlp", "embed"), ("embed",), self.dtype, name="linear_2"
        )(x)


class InternVL(FamilyModule):
    cfg: InternVLConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    def setup(self):
        self.vision = InternViT(self.cfg.vision, self.dtype, self.attention_impl)
        self.projector = Projector(self.cfg.text.hidden_size, self.dtype)
        self.language_model = Decoder(self.cfg.text, self.dtype, self.attention_impl)

    def image_embeddings(self, pixel_values):
        """[num_images, 3, S, S] -> [num_images, tokens_per_image, text hidden]."""
        x = self.vision(pixel_values)[:, 1:]  # the CLS token is dropped
        n, t, c = x.shape
        side = int(t**0.5)
        x = pixel_shuffle(x.reshape(n, side, side, c), self.cfg.downsample_ratio)
        return self.projector(x.reshape(n, -1, x.shape[-1]))

    def embed(self, input_ids, pixel_values=None):
        """input_ids [B, T] -> embeddings [B, T, E]; image embeddings fill the image-token
        positions in reading order.

        The caller checks that the image-token count matches ``pixel_values`` (shapes are static
        here, the count is data).
        """
        embeds = self.language_model.embed(input_ids)
        if pixel_values is not None:
            images = self.image_embeddings(pixel_values)
            images = images.reshape(-1, images.shape[-1])
            embeds = place_features(embeds, input_ids, self.cfg.image_token_id, images)
        return embeds
