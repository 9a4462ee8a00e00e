"""Configs of Qwen3-VL (transformers' ``Qwen3VLForConditionalGeneration``, dense sizes): the
vision tower (``Qwen3VLVisionConfig``) and the whole model, a Qwen3 decoder with interleaved
M-RoPE and DeepStack.

The tower reads ``pixel_values`` rows of C*T*P*P values (one temporal_patch_size x patch_size x
patch_size patch each), embeds them with one matmul, adds a learned position table of
``num_position_embeddings`` (a square grid, bilinearly resampled to each image's grid), runs
``depth`` pre-LayerNorm GELU blocks with 2-D rotary embeddings (attention within each frame) and
merges every ``spatial_merge_size``^2 neighbouring patches into one ``out_hidden_size`` token for
the language model. The blocks in ``deepstack_visual_indexes`` also feed mergers of their own,
whose tokens the decoder adds to its hidden states at the vision positions after its first
layers (DeepStack).
"""

import dataclasses
import math

from headhunt_jax.models.decoder import DecoderConfig

# The MLP activations the tower accepts (transformers' ACT2FN names).
ACTIVATIONS = ("gelu_pytorch_tanh", "gelu", "gelu_new", "silu", "quick_gelu")

# config.json's vision model_type: transformers' own, or the released checkpoints' (which
# transformers renames on reading).
_VISION_TYPES = ("qwen3_vl_vision", "qwen3_vl")
_TEXT_TYPES = ("qwen3_vl_text", "qwen3_vl")


@dataclasses.dataclass(frozen=True)
class Qwen3VLVisionConfig:
    """Defaults are those of the released Qwen3-VL-8B tower."""

    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 4096
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
    in_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
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
    def factor(self) -> int:
        """Image sides are resized to multiples of this (patch_size * spatial_merge_size)."""
        return self.patch_size * self.spatial_merge_size

    @property
    def grid_side(self) -> int:
        """Side of the learned position table's square grid (sqrt(num_position_embeddings))."""
        return math.isqrt(self.num_position_embeddings)

    @classmethod
    def from_dict(cls, d: dict) -> "Qwen3VLVisionConfig":
        """The inverse of ``dataclasses.asdict``."""
        d = dict(d)
        d["deepstack_visual_indexes"] = tuple(d.get("deepstack_visual_indexes", ()))
        return cls(**d)

    @classmethod
    def from_hf(cls, cfg: dict) -> "Qwen3VLVisionConfig":
        """From a ``vision_config`` dict of a ``qwen3_vl`` config.json; missing keys take
        transformers' defaults (as its ``Qwen3VLVisionConfig`` would); refuses what the tower
        does not do."""
        cfg = dict(cfg)
        model_type = cfg.get("model_type", "qwen3_vl_vision")
        if model_type not in _VISION_TYPES:
            raise ValueError(
                f"unsupported vision model_type {model_type!r} (expected one of {_VISION_TYPES})"
            )
        act = cfg.get("hidden_act", "gelu_pytorch_tanh")
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported vision hidden_act {act!r} (supported: {ACTIVATIONS})")
        ints = {}
        for key, default in (
            ("depth", 27),
            ("hidden_size", 1152),
            ("intermediate_size", 4304),
            ("num_heads", 16),
            ("patch_size", 16),
            ("temporal_patch_size", 2),
            ("spatial_merge_size", 2),
            ("out_hidden_size", 3584),
            ("num_position_embeddings", 2304),
            ("in_channels", 3),
        ):
            value = cfg.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"vision {key} must be one positive integer, got {value!r}")
            ints[key] = value
        hidden, heads = ints["hidden_size"], ints["num_heads"]
        if hidden % heads:
            raise ValueError(f"vision hidden_size {hidden} is not a multiple of {heads} heads")
        if (hidden // heads) % 4:
            raise ValueError(
                f"vision head_dim {hidden // heads} must be a multiple of 4 (2-D rotary: a quarter "
                "of the frequencies for rows, a quarter for columns, each rotated in pairs)"
            )
        side = math.isqrt(ints["num_position_embeddings"])
        if side * side != ints["num_position_embeddings"]:
            # transformers takes int(sqrt(n)) and reads only side^2 rows of the table
            raise ValueError(
                f"vision num_position_embeddings {ints['num_position_embeddings']} is not a square"
            )
        deepstack = tuple(int(i) for i in cfg.get("deepstack_visual_indexes", (8, 16, 24)))
        if any(not 0 <= i < ints["depth"] for i in deepstack) or len(set(deepstack)) != len(
            deepstack
        ):
            raise ValueError(
                f"vision deepstack_visual_indexes {list(deepstack)} must be distinct blocks of "
                f"0..{ints['depth'] - 1}"
            )
        rope = dict(cfg.get("rope_parameters") or {})
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"vision rope_type {rope['rope_type']!r}: only 'axial' is supported")
        return cls(
            **ints,
            deepstack_visual_indexes=deepstack,
            hidden_act=act,
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        )


def interleaved_sections(section, half: int) -> tuple[int, ...]:
    """Qwen3-VL's interleaved M-RoPE as the decoder's ``mrope_section`` (runs of frequencies
    rotated by the temporal, height and width positions in turn, T H W T H W ...).

    Interleaved, frequency j (of head_dim / 2 = ``half``) takes the height position where
    j % 3 == 1 and j < 3 * section[1], the width position where j % 3 == 2 and j < 3 *
    section[2], else the temporal one (transformers' ``Qwen3VLTextRotaryEmbedding``). Those
    axes, cut into runs that cycle T, H, W (a run may be empty), are the sections."""
    _, sh, sw = section
    axes = [
        1 if j % 3 == 1 and j < 3 * sh else 2 if j % 3 == 2 and j < 3 * sw else 0
        for j in range(half)
    ]
    runs: list[int] = []
    for axis in axes:
        if runs and (len(runs) - 1) % 3 == axis:
            runs[-1] += 1
            continue
        while len(runs) % 3 != axis:
            runs.append(0)
        runs.append(1)
    return tuple(runs)


IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656
VISION_START_TOKEN_ID = 151652
VISION_END_TOKEN_ID = 151653


def _text_config(cfg: dict) -> DecoderConfig:
    """The decoder of a ``qwen3_vl`` config.json (``text_config``, either rope style)."""
    text = dict(cfg["text_config"])
    if text.get("model_type", "qwen3_vl_text") not in _TEXT_TYPES:
        raise ValueError(f"unsupported text model_type {text.get('model_type')!r}")
    if text.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported text hidden_act {text['hidden_act']!r} (supported: silu)")
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"unsupported text rope_type {rope_type!r} (supported: default)")
    if rope.get("mrope_interleaved", True) is not True:
        # transformers' Qwen3-VL rotates interleaved whatever this says
        raise ValueError("mrope_interleaved=false is not supported (Qwen3-VL interleaves)")
    section = tuple(int(x) for x in rope.get("mrope_section", (24, 20, 20)))
    theta = rope.get("rope_theta") or text.get("rope_theta") or 500000.0
    text.update(
        model_type="qwen3",
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        rope_scaling=None,
        head_dim=text.get("head_dim", 128),
        tie_word_embeddings=cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False)),
    )
    decoder = DecoderConfig.from_hf(text)
    if len(section) != 3 or sum(section) * 2 != decoder.head_dim:
        raise ValueError(
            f"mrope_section {list(section)} must be 3 sizes summing to head_dim / 2 = "
            f"{decoder.head_dim // 2}"
        )
    sections = interleaved_sections(section, decoder.head_dim // 2)
    return dataclasses.replace(decoder, mrope_section=sections)


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig:
    """The whole model: ``vision`` (the tower) and ``text`` (the Qwen3 decoder, its interleaved
    M-RoPE as ``mrope_section`` runs, ``interleaved_sections``); image and video placeholders
    fill with the tower's merged tokens, and the tower's DeepStack tokens join the hidden states
    there after decoder layers 0 .. len(deepstack_visual_indexes) - 1."""

    vision: Qwen3VLVisionConfig
    text: DecoderConfig
    image_token_id: int = IMAGE_TOKEN_ID
    video_token_id: int = VIDEO_TOKEN_ID
    vision_start_token_id: int = VISION_START_TOKEN_ID
    vision_end_token_id: int = VISION_END_TOKEN_ID

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        return (self.image_token_id, self.video_token_id)

    @property
    def deepstack_layers(self) -> int:
        """Decoder layers after which DeepStack tokens are added (the first ones)."""
        return len(self.vision.deepstack_visual_indexes)

    @classmethod
    def from_dict(cls, d: dict) -> "Qwen3VLConfig":
        d = dict(d)
        d["vision"] = Qwen3VLVisionConfig.from_dict(d["vision"])
        d["text"] = DecoderConfig.from_dict(d["text"])
        return cls(**d)

    @classmethod
    def from_hf(cls, cfg: dict) -> "Qwen3VLConfig":
        """From a ``qwen3_vl`` config.json (``text_config`` and ``vision_config``; the text's
        rope in ``rope_parameters`` (transformers v5) or ``rope_scaling`` with ``rope_theta``
        beside it (the released files))."""
        if cfg.get("model_type") != "qwen3_vl":
            raise ValueError(f"not a qwen3_vl config (model_type {cfg.get('model_type')!r})")
        for key in ("vision_config", "text_config"):
            if key not in cfg:
                raise ValueError(f"a qwen3_vl config.json needs a {key}")
        vision = Qwen3VLVisionConfig.from_hf(cfg["vision_config"])
        decoder = _text_config(cfg)
        if vision.out_hidden_size != decoder.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {vision.out_hidden_size} != text hidden_size "
                f"{decoder.hidden_size}"
            )
        if len(vision.deepstack_visual_indexes) > decoder.num_layers:
            raise ValueError(
                f"{len(vision.deepstack_visual_indexes)} DeepStack levels for "
                f"{decoder.num_layers} decoder layers"
            )
        return cls(
            vision=vision,
            text=decoder,
            image_token_id=int(cfg.get("image_token_id", IMAGE_TOKEN_ID)),
            video_token_id=int(cfg.get("video_token_id", VIDEO_TOKEN_ID)),
            vision_start_token_id=int(cfg.get("vision_start_token_id", VISION_START_TOKEN_ID)),
            vision_end_token_id=int(cfg.get("vision_end_token_id", VISION_END_TOKEN_ID)),
        )


def _qwen3_text(hidden, layers, heads, mlp, tie) -> DecoderConfig:
    """A released Qwen3-VL decoder: vocabulary 151,936, 8 kv heads, head_dim 128, RoPE base 5e6,
    mrope_section (24, 20, 20) interleaved, no biases, q/k norms."""
    return DecoderConfig(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=5_000_000.0,
        rms_norm_eps=1e-6,
        attention_bias=False,
        tie_word_embeddings=tie,
        qk_norm=True,
        mrope_section=interleaved_sections((24, 20, 20), 64),
    )


# The released towers (Qwen/Qwen3-VL-{2B,4B,8B}-Instruct config.json's vision_config): 2B and 4B
# share a 24-block, 1024-wide tower (DeepStack from blocks 5, 11, 17), 8B has a 27-block,
# 1152-wide one (8, 16, 24); all patch 16, temporal 2, merge 2, a 48 x 48 position table.
_SMALL_TOWER = dict(
    depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=(5, 11, 17)
)

# Shapes of Qwen/Qwen3-VL-2B-Instruct, -4B-Instruct and -8B-Instruct (config.json), for
# benchmarks: no weights. Checked against copies of those config.json files quoted in public
# code, not against the files themselves (tests/fixtures/released_configs keeps none of them, so
# their parameter counts are not checked against the checkpoints' stated sizes).
PRESETS = {
    "Qwen3-VL-2B": Qwen3VLConfig(
        Qwen3VLVisionConfig(**_SMALL_TOWER, out_hidden_size=2048),
        _qwen3_text(2048, 28, 16, 6144, True),
    ),
    "Qwen3-VL-4B": Qwen3VLConfig(
        Qwen3VLVisionConfig(**_SMALL_TOWER, out_hidden_size=2560),
        _qwen3_text(2560, 36, 32, 9728, True),
    ),
    "Qwen3-VL-8B": Qwen3VLConfig(
        Qwen3VLVisionConfig(out_hidden_size=4096),
        _qwen3_text(4096, 36, 32, 12288, False),
    ),
}
