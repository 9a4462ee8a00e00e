"""InternVL3 / InternVL3.5: InternViT -> pixel shuffle -> MLP projector -> image embeddings placed
at the image-token positions of ``input_ids`` -> Qwen2 (InternVL3) or Qwen3 (InternVL3.5) decoder.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from headhunt_jax.backbones.internvl.vision import InternViT, VisionConfig
from headhunt_jax.models.decoder import Decoder, DecoderConfig, qwen2_config
from headhunt_jax.models.layers import Einsum, LayerNorm


@dataclasses.dataclass(frozen=True)
class InternVLConfig:
    vision: VisionConfig
    text: DecoderConfig
    downsample_ratio: float = 0.5
    image_token_id: int = 151667

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        return (self.image_token_id,)

    @property
    def tokens_per_image(self) -> int:
        return self.image_tokens(self.vision.image_size)

    def image_tokens(self, image_size: int) -> int:
        """Image tokens of one image of ``image_size`` pixels a side, after the pixel shuffle."""
        grid = image_size // self.vision.patch_size
        return int(grid * grid * self.downsample_ratio**2)

    @classmethod
    def from_dict(cls, d: dict) -> "InternVLConfig":
        """The inverse of ``dataclasses.asdict`` (converted checkpoints store that)."""
        return cls(
            vision=VisionConfig(**d["vision"]),
            text=DecoderConfig.from_dict(d["text"]),
            downsample_ratio=d["downsample_ratio"],
            image_token_id=d["image_token_id"],
        )

    @classmethod
    def from_hf(cls, cfg: dict) -> "InternVLConfig":
        if cfg.get("vision_feature_layer", -1) != -1:
            raise ValueError("only vision_feature_layer = -1 is supported")
        if cfg.get("vision_feature_select_strategy", "default") != "default":
            raise ValueError("only vision_feature_select_strategy = 'default' is supported")
        if cfg.get("projector_hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported projector_hidden_act {cfg['projector_hidden_act']!r}")
        text = dict(cfg["text_config"])
        # the text config's own type (qwen3 for InternVL3.5); transformers' default is qwen2
        text.setdefault("model_type", "qwen2")
        # transformers ties the head by the top-level flag (default true), not the text config's
        text["tie_word_embeddings"] = cfg.get("tie_word_embeddings", True)
        return cls(
            vision=VisionConfig.from_hf(cfg["vision_config"]),
            text=DecoderConfig.from_hf(text),
            downsample_ratio=float(cfg.get("downsample_ratio", 0.5)),
            image_token_id=int(cfg.get("image_token_id", 151667)),
        )


def _qwen25(hidden, layers, heads, kv_heads, mlp, tie):
    return qwen2_config(151674, hidden, layers, heads, kv_heads, mlp, tie)


def _qwen3(hidden, layers, heads, kv_heads, mlp):
    return DecoderConfig(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=128,
        rope_theta=1_000_000.0,
        attention_bias=False,
        tie_word_embeddings=False,
        qk_norm=True,
    )


# InternVL3.5 (OpenGVLab/InternVL3_5-*-HF): InternViT-300M as in InternVL3 + Qwen3, <IMG_CONTEXT>
# at 151671 (Qwen3's tokenizer has <think>/</think> at 151667/8). The 1B's head is untied, unlike
# Qwen3-0.6B's: its checkpoint stores lm_head apart from embed_tokens (751,632,384 language
# parameters = 28 layers + 2 x 151936 x 1024), and xtuner's InternVL3.5-1B config unties it too.
_INTERNVL35_IMAGE_TOKEN = 151671

# Shapes of the released InternVL3 models (InternViT-300M + Qwen2.5) and InternVL3.5 ones
# (+ Qwen3), for benchmarks: no weights.
PRESETS = {
    "InternVL3-1B": InternVLConfig(VisionConfig(), _qwen25(896, 24, 14, 2, 4864, True)),
    "InternVL3-2B": InternVLConfig(VisionConfig(), _qwen25(1536, 28, 12, 2, 8960, True)),
    "InternVL3-8B": InternVLConfig(VisionConfig(), _qwen25(3584, 28, 28, 4, 18944, False)),
    "InternVL3-14B": InternVLConfig(VisionConfig(), _qwen25(5120, 48, 40, 8, 13824, False)),
    "InternVL3.5-1B": InternVLConfig(  # Qwen3-0.6B
        VisionConfig(), _qwen3(1024, 28, 16, 8, 3072), image_token_id=_INTERNVL35_IMAGE_TOKEN
    ),
    "InternVL3.5-8B": InternVLConfig(  # Qwen3-8B
        VisionConfig(), _qwen3(4096, 36, 32, 8, 12288), image_token_id=_INTERNVL35_IMAGE_TOKEN
    ),
}


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
            "NTD,DE->NTE", (d, e), ("vision_mlp", "embed"), ("embed",), self.dtype, name="linear_1"
        )(x)
        x = nn.gelu(x, approximate=False)
        return Einsum(
            "NTD,DE->NTE", (e, e), ("mlp", "embed"), ("embed",), self.dtype, name="linear_2"
        )(x)


class InternVL(nn.Module):
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

    def __call__(self, input_ids, pixel_values=None, depth=None, logits=False, **kv):
        """input_ids [B, T]; image embeddings fill the image-token positions in reading order.

        The caller checks that the image-token count matches ``pixel_values`` (shapes are static
        here, the count is data). ``kv``: ``prefix_kv`` / ``kv_only`` of ``Decoder``.
        """
        embeds = self.language_model.embed(input_ids)
        if pixel_values is not None:
            images = self.image_embeddings(pixel_values)
            images = images.reshape(-1, images.shape[-1]).astype(embeds.dtype)
            is_image = input_ids == self.cfg.image_token_id
            slot = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, images.shape[0] - 1)
            embeds = jnp.where(is_image[..., None], images[slot].reshape(embeds.shape), embeds)
        return self.language_model(embeds, depth=depth, logits=logits, **kv)
