"""Configs of LLaVA-OneVision (transformers' ``LlavaOnevisionForConditionalGeneration``): a
SigLIP vision tower, a two-layer GELU projector and a Qwen2 decoder.

Videos: every frame goes through the tower at the base resolution; its projected patch grid
(27 x 27 at 384 px, patch 14) is pooled 2x2 by bilinear interpolation to ceil(g/2) x ceil(g/2)
(14 x 14 = 196 tokens a frame), the frames are concatenated and one ``image_newline`` embedding
ends the video. Images: only an image no larger than the base resolution (one anyres tile plus
the base view); larger images need anyres tiling, which is not implemented.
"""

import dataclasses
import math
import re

from headhunt_jax.models.decoder import DecoderConfig, qwen2_config

# The activations (transformers' names, ``models.vision.ACTIVATIONS``) of SigLIP's MLP and the
# projector that are supported: GELU, exact or tanh-approximated.
GELUS = ("gelu_pytorch_tanh", "gelu_new", "gelu")


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """The SigLIP vision transformer (``SiglipVisionModel`` without its pooling head)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 26
    num_heads: int = 16
    image_size: int = 384
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        """Patches along one side of the base image (a 'valid' convolution: 384 px at patch 14
        gives 27, the last 6 pixels unread)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @classmethod
    def from_hf(cls, cfg: dict) -> "SiglipConfig":
        """From a ``siglip_vision_model`` config dict; refuses what the tower does not do."""
        model_type = cfg.get("model_type", "siglip_vision_model")
        if model_type != "siglip_vision_model":
            raise ValueError(
                f"unsupported vision model_type {model_type!r} (expected siglip_vision_model)"
            )
        act = cfg.get("hidden_act", "gelu_pytorch_tanh")
        if act not in GELUS:
            raise ValueError(f"unsupported SigLIP hidden_act {act!r} (supported: {list(GELUS)})")
        if cfg.get("vision_use_head", True):
            raise ValueError(
                "vision_use_head=true is not supported: LLaVA-OneVision never uses SigLIP's "
                "pooling head and its released checkpoints have none (vision_use_head=false)"
            )
        for key in ("image_size", "patch_size"):
            if not isinstance(cfg.get(key, 0), int):
                raise ValueError(f"vision {key} must be one integer, got {cfg[key]!r}")
        hidden, heads = cfg.get("hidden_size", 768), cfg.get("num_attention_heads", 12)
        if hidden % heads:
            raise ValueError(f"vision hidden_size {hidden} is not a multiple of {heads} heads")
        return cls(
            hidden_size=hidden,
            intermediate_size=cfg.get("intermediate_size", 3072),
            num_layers=cfg.get("num_hidden_layers", 12),
            num_heads=heads,
            image_size=cfg.get("image_size", 224),
            patch_size=cfg.get("patch_size", 16),
            num_channels=cfg.get("num_channels", 3),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
            hidden_act=act,
        )


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig:
    """``vision_feature_layer``: an index into the tower's hidden states (0: the embeddings,
    i: after layer i, negative from the end) or a tuple of them, concatenated along features.
    ``vision_feature_select_strategy``: 'full' keeps every token (SigLIP has no CLS token);
    'default' would drop the first patch, with which transformers' pooling and image packing
    cannot reshape the grid, so ``from_hf`` refuses it."""

    vision: SiglipConfig
    text: DecoderConfig
    image_token_id: int = 151646
    video_token_id: int = 151647
    vision_feature_layer: int | tuple[int, ...] = -1
    vision_feature_select_strategy: str = "full"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        return (self.image_token_id, self.video_token_id)

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """The selected hidden-state indices, non-negative (0 = embeddings)."""
        layers = self.vision_feature_layer
        layers = (layers,) if isinstance(layers, int) else tuple(layers)
        n = self.vision.num_layers + 1
        return tuple(i % n for i in layers)

    @property
    def pooled_grid(self) -> int:
        """Side of a frame's token grid after the 2x2 bilinear pooling (ceil(g / 2))."""
        return math.ceil(self.vision.grid / 2)

    @property
    def tokens_per_frame(self) -> int:
        return self.pooled_grid**2

    def video_tokens(self, num_frames: int) -> int:
        """Tokens one video of ``num_frames`` frames fills at the ``<video>`` positions: every
        frame's pooled grid, then one newline."""
        return num_frames * self.tokens_per_frame + 1

    def image_tokens(self, height: int, width: int) -> int:
        """Tokens of one image of ``height`` x ``width`` pixels (at most the base resolution):
        the base view's g*g, then the tile's rows left after unpadding, each with a newline."""
        rows, cols = unpadded_grid(self.vision.grid, height, width)
        return self.vision.num_patches + rows * (cols + 1)

    @classmethod
    def from_dict(cls, d: dict) -> "LlavaOnevisionConfig":
        """The inverse of ``dataclasses.asdict`` (converted checkpoints store that)."""
        d = dict(d)
        layers = d.get("vision_feature_layer", -1)
        d["vision_feature_layer"] = layers if isinstance(layers, int) else tuple(layers)
        d["vision"] = SiglipConfig(**d["vision"])
        d["text"] = DecoderConfig.from_dict(d["text"])
        return cls(**d)

    @classmethod
    def from_hf(cls, cfg: dict) -> "LlavaOnevisionConfig":
        """From a ``llava_onevision`` ``config.json`` dict; refuses what it does not support."""
        if cfg.get("model_type") != "llava_onevision":
            raise ValueError(
                f"unsupported model_type {cfg.get('model_type')!r} (expected llava_onevision)"
            )
        vision = SiglipConfig.from_hf(dict(cfg.get("vision_config") or {}))
        strategy = cfg.get("vision_feature_select_strategy", "full")
        if strategy != "full":
            raise ValueError(
                f"vision_feature_select_strategy {strategy!r} is not supported: SigLIP has no CLS "
                "token, so 'default' drops a patch and transformers' video pooling and image "
                "packing fail on the g*g-1 tokens left; only 'full' works"
            )
        layers = cfg.get("vision_feature_layer", -1)
        if isinstance(layers, list | tuple):
            if not layers:
                raise ValueError("vision_feature_layer is an empty list")
            layers = tuple(int(i) for i in layers)
        n = vision.num_layers + 1
        bad = [i for i in ((layers,) if isinstance(layers, int) else layers) if not -n <= i < n]
        if bad:
            raise ValueError(
                f"vision_feature_layer {bad} out of range for {vision.num_layers} vision layers "
                f"({n} hidden states)"
            )
        act = cfg.get("projector_hidden_act", "gelu")
        if act not in GELUS:
            raise ValueError(f"unsupported projector_hidden_act {act!r}")
        pinpoints = cfg.get("image_grid_pinpoints")
        s = vision.image_size
        if pinpoints is not None and (
            [s, s] not in [list(p) for p in pinpoints]
            or any(h % s or w % s or h <= 0 or w <= 0 for h, w in pinpoints)
        ):
            raise ValueError(
                f"image_grid_pinpoints must be multiples of the base resolution {s} and include "
                f"[{s}, {s}] (an image no larger than it is then one tile); got {pinpoints}"
            )
        aspect = cfg.get("vision_aspect_ratio", "anyres_max_9")
        m = re.fullmatch(r"anyres_max_(\d+)", str(aspect))
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"unsupported vision_aspect_ratio {aspect!r} (expected anyres_max_N)")
        text = dict(cfg["text_config"])
        text.setdefault("model_type", "qwen2")
        # transformers ties the head when either the top-level or the text config says so
        text["tie_word_embeddings"] = bool(
            cfg.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False)
        )
        return cls(
            vision=vision,
            text=DecoderConfig.from_hf(text),
            image_token_id=int(cfg.get("image_token_id", cfg.get("image_token_index", 151646))),
            video_token_id=int(cfg.get("video_token_id", cfg.get("video_token_index", 151647))),
            vision_feature_layer=layers,
            vision_feature_select_strategy=strategy,
            projector_hidden_act=act,
            projector_bias=bool(cfg.get("multimodal_projector_bias", True)),
        )


def unpadded_grid(grid: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of a g x g tile grid left after transformers' ``unpad_image`` for an image of
    ``height`` x ``width`` that was resized to fit the tile and padded to a square.

    transformers computes ``int(round(h * (g / w), 7))`` in floats; for sizes up to millions of
    pixels that is exactly the integer ``h * g // w``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if width > height:
        pad = (grid - height * grid // width) // 2
        return grid - 2 * pad, grid
    pad = (grid - width * grid // height) // 2
    return grid, grid - 2 * pad


# Shapes of the released llava-hf checkpoints (SigLIP so400m at 384 px with its last layer
# dropped, 26 layers; Qwen2-0.5B / Qwen2-7B with the vocabulary grown by <image> and <video> and
# padded to a multiple of 64), for benchmarks: no weights.
PRESETS = {
    "llava-onevision-qwen2-0.5b-ov": LlavaOnevisionConfig(
        SiglipConfig(), qwen2_config(152000, 896, 24, 14, 2, 4864, True)
    ),
    "llava-onevision-qwen2-7b-ov": LlavaOnevisionConfig(
        SiglipConfig(), qwen2_config(152128, 3584, 28, 28, 4, 18944, False)
    ),
}
