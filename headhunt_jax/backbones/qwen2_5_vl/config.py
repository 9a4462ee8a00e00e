"""Configs of Qwen2.5-VL (transformers' ``Qwen2_5_VLForConditionalGeneration``): the vision
tower (``Qwen2_5_VLVisionConfig``) and the whole model, a Qwen2 decoder with M-RoPE.

The tower reads ``pixel_values`` rows of C*T*P*P values (one temporal_patch_size x patch_size x
patch_size patch each), embeds them with one matmul, runs ``depth`` pre-RMSNorm SwiGLU blocks with
2-D rotary embeddings (window attention over ``window_size``-pixel windows, full attention per
image in ``fullatt_block_indexes``) and merges every ``spatial_merge_size``^2 neighbouring patches
into one ``out_hidden_size`` token for the language model.
"""

import dataclasses

from headhunt_jax.models.decoder import DecoderConfig, qwen2_config

# The MLP activations the tower accepts (transformers' ACT2FN names).
ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "quick_gelu")

_MODEL_TYPES = ("qwen2_5_vl", "qwen2_5_vl_vision")


@dataclasses.dataclass(frozen=True)
class Qwen25VisionConfig:
    """Defaults are those of the released Qwen2.5-VL-7B tower."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    in_channels: int = 3
    hidden_act: str = "silu"
    tokens_per_second: float = 2
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values of one ``pixel_values`` row: C * T * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Patches merged into one output token."""
        return self.spatial_merge_size**2

    @property
    def window_merged(self) -> int:
        """Side of an attention window in merged tokens (112 px / 14 / 2 = 4)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @property
    def factor(self) -> int:
        """Image sides are resized to multiples of this (patch_size * spatial_merge_size)."""
        return self.patch_size * self.spatial_merge_size

    @classmethod
    def from_dict(cls, d: dict) -> "Qwen25VisionConfig":
        """The inverse of ``dataclasses.asdict``."""
        d = dict(d)
        d["fullatt_block_indexes"] = tuple(d.get("fullatt_block_indexes", ()))
        return cls(**d)

    @classmethod
    def from_hf(cls, cfg: dict) -> "Qwen25VisionConfig":
        """From a ``vision_config`` dict of a ``qwen2_5_vl`` config.json; missing keys take
        transformers' defaults (as its ``Qwen2_5_VLVisionConfig`` would); refuses what the tower
        does not do."""
        cfg = dict(cfg)
        model_type = cfg.get("model_type", "qwen2_5_vl_vision")
        if model_type not in _MODEL_TYPES:
            raise ValueError(
                f"unsupported vision model_type {model_type!r} (expected one of {_MODEL_TYPES})"
            )
        act = cfg.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported vision hidden_act {act!r} (supported: {ACTIVATIONS})")
        ints = {}
        for key, default in (
            ("depth", 32),
            ("hidden_size", 3584),
            ("intermediate_size", 3420),
            ("num_heads", 16),
            ("patch_size", 14),
            ("temporal_patch_size", 2),
            ("spatial_merge_size", 2),
            ("window_size", 112),
            ("out_hidden_size", 3584),
        ):
            value = cfg.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"vision {key} must be one positive integer, got {value!r}")
            ints[key] = value
        if "spatial_patch_size" in cfg and cfg["spatial_patch_size"] != ints["patch_size"]:
            raise ValueError(
                f"vision spatial_patch_size {cfg['spatial_patch_size']} differs from patch_size "
                f"{ints['patch_size']}"
            )
        in_channels = cfg.get("in_channels", cfg.get("in_chans", 3))
        if "in_chans" in cfg and cfg["in_chans"] != in_channels:
            raise ValueError(f"vision in_chans {cfg['in_chans']} != in_channels {in_channels}")
        hidden, heads = ints["hidden_size"], ints["num_heads"]
        if hidden % heads:
            raise ValueError(f"vision hidden_size {hidden} is not a multiple of {heads} heads")
        if (hidden // heads) % 4:
            raise ValueError(
                f"vision head_dim {hidden // heads} must be a multiple of 4 (2-D rotary: a quarter "
                "of the frequencies for rows, a quarter for columns, each rotated in pairs)"
            )
        if ints["window_size"] < ints["patch_size"] * ints["spatial_merge_size"]:
            raise ValueError(
                f"vision window_size {ints['window_size']} is smaller than one merged token "
                f"({ints['patch_size']} * {ints['spatial_merge_size']} px)"
            )
        full = cfg.get("fullatt_block_indexes", (7, 15, 23, 31))
        full = tuple(int(i) for i in full)
        if any(not 0 <= i < ints["depth"] for i in full):
            raise ValueError(
                f"vision fullatt_block_indexes {list(full)} out of range for depth {ints['depth']}"
            )
        rope = dict(cfg.get("rope_parameters") or {})
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"vision rope_type {rope['rope_type']!r}: only 'axial' is supported")
        tps = cfg.get("tokens_per_second", 4)
        if isinstance(tps, bool) or not isinstance(tps, int | float) or tps <= 0:
            raise ValueError(f"vision tokens_per_second must be a positive number, got {tps!r}")
        return cls(
            **ints,
            fullatt_block_indexes=full,
            in_channels=int(in_channels),
            hidden_act=act,
            tokens_per_second=tps,
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        )


IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656
VISION_START_TOKEN_ID = 151652
VISION_END_TOKEN_ID = 151653


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    """The whole model: ``vision`` (the tower) and ``text`` (the decoder, with
    ``mrope_section``); image and video placeholders fill with the tower's merged tokens."""

    vision: Qwen25VisionConfig
    text: DecoderConfig
    image_token_id: int = IMAGE_TOKEN_ID
    video_token_id: int = VIDEO_TOKEN_ID
    vision_start_token_id: int = VISION_START_TOKEN_ID
    vision_end_token_id: int = VISION_END_TOKEN_ID

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        return (self.image_token_id, self.video_token_id)

    @classmethod
    def from_dict(cls, d: dict) -> "Qwen25VLConfig":
        d = dict(d)
        d["vision"] = Qwen25VisionConfig.from_dict(d["vision"])
        d["text"] = DecoderConfig.from_dict(d["text"])
        return cls(**d)

    @classmethod
    def from_hf(cls, cfg: dict) -> "Qwen25VLConfig":
        """From a ``qwen2_5_vl`` config.json: transformers v5's layout (``text_config`` and
        ``vision_config``) or the released checkpoints' (the text fields at the top level,
        ``rope_scaling`` of type 'mrope')."""
        if cfg.get("model_type") != "qwen2_5_vl":
            raise ValueError(f"not a qwen2_5_vl config (model_type {cfg.get('model_type')!r})")
        if "vision_config" not in cfg:
            raise ValueError("a qwen2_5_vl config.json needs a vision_config")
        vision = Qwen25VisionConfig.from_hf(cfg["vision_config"])
        text = dict(cfg.get("text_config") or cfg)
        if text.get("model_type", "qwen2_5_vl_text") not in ("qwen2_5_vl_text", "qwen2_5_vl"):
            raise ValueError(f"unsupported text model_type {text.get('model_type')!r}")
        rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
        section = tuple(int(x) for x in rope.pop("mrope_section", (16, 24, 24)))
        if rope.get("rope_type", rope.get("type", "default")) in ("mrope", "default"):
            rope.pop("type", None)
            rope["rope_type"] = "default"
        text["rope_parameters"], text["rope_scaling"] = rope, None
        if "tie_word_embeddings" in cfg:  # v5 keeps it at the top level
            text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
        decoder = DecoderConfig.from_hf({**text, "model_type": "qwen2"})
        decoder = dataclasses.replace(decoder, mrope_section=section)
        if sum(section) * 2 != decoder.head_dim:
            raise ValueError(
                f"mrope_section {list(section)} must sum to head_dim / 2 = {decoder.head_dim // 2}"
            )
        if vision.out_hidden_size != decoder.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {vision.out_hidden_size} != text hidden_size "
                f"{decoder.hidden_size}"
            )
        return cls(
            vision=vision,
            text=decoder,
            image_token_id=int(cfg.get("image_token_id", IMAGE_TOKEN_ID)),
            video_token_id=int(cfg.get("video_token_id", VIDEO_TOKEN_ID)),
            vision_start_token_id=int(cfg.get("vision_start_token_id", VISION_START_TOKEN_ID)),
            vision_end_token_id=int(cfg.get("vision_end_token_id", VISION_END_TOKEN_ID)),
        )


# The released towers (Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct config.json's
# vision_config): the same 32-block ViT, projecting to the decoder's width (2048 / 3584).
VISION_PRESETS = {
    "qwen2.5-vl-3b": Qwen25VisionConfig(out_hidden_size=2048),
    "qwen2.5-vl-7b": Qwen25VisionConfig(out_hidden_size=3584),
}


# Shapes of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct (config.json), for benchmarks: no weights.
PRESETS = {
    "Qwen2.5-VL-3B": Qwen25VLConfig(
        VISION_PRESETS["qwen2.5-vl-3b"],
        qwen2_config(151936, 2048, 36, 16, 2, 11008, True, mrope_section=(16, 24, 24)),
    ),
    "Qwen2.5-VL-7B": Qwen25VLConfig(
        VISION_PRESETS["qwen2.5-vl-7b"],
        qwen2_config(152064, 3584, 28, 28, 4, 18944, False, mrope_section=(16, 24, 24)),
    ),
}
