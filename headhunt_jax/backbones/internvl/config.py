"""InternVL3 / InternVL3.5 configs, from either format of a checkpoint, and the released sizes.

Two formats hold the same model:

- transformers' ``InternVLForConditionalGeneration`` (model_type ``internvl``, the ``-hf``
  repositories): ``text_config``, ``vision_config``, ``image_token_id``;
- InternVL's own ``InternVLChatModel`` (model_type ``internvl_chat``, ``trust_remote_code``, the
  format the original HeadHunt-VAD code loads): ``llm_config``, ``vision_config`` in InternViT's
  names, ``downsample_ratio``, ``select_layer``, ``ps_version``, ``template``; the image token is
  the tokenizer's ``<IMG_CONTEXT>``.

Both give one ``InternVLConfig``, so that one architecture has one fingerprint whichever format
its weights come in.
"""

import dataclasses
from pathlib import Path

from headhunt_jax.models.decoder import DecoderConfig, qwen2_config

# The original's language models that this decoder is (its config's architectures[0]).
_CHAT_LANGUAGE_MODELS = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
# <IMG_CONTEXT>'s id in the released tokenizers (Qwen2.5's and Qwen3's vocabularies plus
# InternVL's added tokens), for a checkpoint without its tokenizer.json.
_IMAGE_TOKEN = {"qwen2": 151667, "qwen3": 151671}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """InternViT, InternVL's vision tower (transformers' ``InternVLVisionConfig``); defaults are
    InternViT-300M's."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    attention_bias: bool = True
    use_qk_norm: bool = False
    use_mean_pooling: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, cfg: dict) -> "VisionConfig":
        def square(v, what):
            v = list(v) if isinstance(v, list | tuple) else [v, v]
            if v[0] != v[1]:
                raise ValueError(f"non-square vision {what} {v} is not supported")
            return int(v[0])

        if cfg.get("norm_type", "layer_norm") not in ("layer_norm", "rms_norm"):
            raise ValueError(f"unsupported vision norm_type {cfg['norm_type']!r}")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported vision hidden_act {cfg['hidden_act']!r}")
        if not cfg.get("use_absolute_position_embeddings", True):
            raise ValueError(
                "vision configs without absolute position embeddings are not supported"
            )
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            image_size=square(cfg.get("image_size", 448), "image_size"),
            patch_size=square(cfg.get("patch_size", 14), "patch_size"),
            num_channels=cfg.get("num_channels", 3),
            norm_type=cfg.get("norm_type", "layer_norm"),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
            attention_bias=bool(cfg.get("attention_bias", False)),
            use_qk_norm=bool(cfg.get("use_qk_norm", False)),
            use_mean_pooling=bool(cfg.get("use_mean_pooling", True)),
        )

    @classmethod
    def from_chat(cls, cfg: dict) -> "VisionConfig":
        """From InternVLChatModel's ``vision_config`` (InternViT's own names). Its tower has no
        final norm (``use_mean_pooling`` here); drop path and flash attention change nothing
        at inference."""
        if cfg.get("use_moe"):
            raise ValueError("a mixture-of-experts vision tower (use_moe) is not supported")
        if cfg.get("qk_normalization") and cfg.get("layer_norm_eps", 1e-6) != 1e-6:
            raise ValueError(
                "qk_normalization with layer_norm_eps other than 1e-6 is not supported"
            )
        hf = {
            **cfg,
            "attention_bias": cfg.get("qkv_bias", False),
            "use_qk_norm": cfg.get("qk_normalization", False),
            "use_mean_pooling": True,
        }
        return cls.from_hf(hf)


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
        """From a ``config.json`` dict of either format (see the module docstring)."""
        if cfg.get("model_type") == "internvl_chat":
            return cls._from_chat(cfg)
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

    @classmethod
    def _from_chat(cls, cfg: dict) -> "InternVLConfig":
        """InternVLChatModel's config. Fields that change no number are read and let be: the
        tiling grid (``dynamic_image_size``, ``max_dynamic_patch``, ``use_thumbnail``: a
        segment's frames are one tile each), ``pad2square``, LoRA flags of training."""
        if cfg.get("ps_version", "v1") != "v2":  # the original's default is v1
            raise ValueError(
                f"ps_version {cfg.get('ps_version', 'v1')!r} (the transposed pixel shuffle of "
                "InternVL 1.5) is not supported: only 'v2'"
            )
        if cfg.get("select_layer", -1) != -1:
            raise ValueError(
                f"select_layer {cfg['select_layer']} is not supported: only -1 (the vision "
                "tower's last layer)"
            )
        if cfg.get("template", "internvl2_5") != "internvl2_5":
            raise ValueError(
                f"template {cfg['template']!r} is not supported: only 'internvl2_5' (InternVL3 "
                "and InternVL3.5's)"
            )
        if cfg.get("system_message"):
            raise ValueError("a system_message of its own is not supported")
        llm = dict(cfg["llm_config"])
        arch = (llm.get("architectures") or ["?"])[0]
        if arch not in _CHAT_LANGUAGE_MODELS:
            raise ValueError(
                f"language model {arch} is not supported (supported: "
                f"{', '.join(_CHAT_LANGUAGE_MODELS)})"
            )
        llm["model_type"] = _CHAT_LANGUAGE_MODELS[arch]
        # the Qwen configs' own default; InternVL3's code unties every size
        llm["tie_word_embeddings"] = bool(llm.get("tie_word_embeddings") or False)
        vision = VisionConfig.from_chat(cfg["vision_config"])
        size = cfg.get("force_image_size") or vision.image_size
        if size != vision.image_size:
            raise ValueError(
                f"force_image_size {size} differs from the vision tower's image_size "
                f"{vision.image_size}: not supported"
            )
        text = DecoderConfig.from_hf(llm)
        image_token = cfg.get("img_context_token_id") or _IMAGE_TOKEN[llm["model_type"]]
        return cls(vision, text, float(cfg.get("downsample_ratio", 0.5)), int(image_token))


def checkpoint_config(cfg: dict, directory: Path) -> dict:
    """config.json's dict with what an InternVLChatModel checkpoint keeps elsewhere: its image
    token, ``<IMG_CONTEXT>`` in its tokenizer (the original sets it from there at run time)."""
    file = Path(directory) / "tokenizer.json"
    if cfg.get("model_type") != "internvl_chat" or not file.is_file():
        return cfg
    from headhunt_jax.backbones.internvl.prompt import IMG_CONTEXT
    from headhunt_jax.models.tokenizer import load_tokenizer

    token = load_tokenizer(file).token_to_id(IMG_CONTEXT)
    if token is None:
        raise ValueError(f"{file}: no {IMG_CONTEXT} token: not an InternVL tokenizer")
    return {**cfg, "img_context_token_id": token}


def _qwen25(hidden, layers, heads, kv_heads, mlp, tie, **fields):
    return qwen2_config(151674, hidden, layers, heads, kv_heads, mlp, tie, **fields)


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


# InternVL3.5 (OpenGVLab/InternVL3_5-*): InternViT-300M as in InternVL3 + Qwen3, <IMG_CONTEXT>
# at 151671 (Qwen3's tokenizer has <think>/</think> at 151667/8). The 1B's head is untied, unlike
# Qwen3-0.6B's: its checkpoint stores lm_head apart from embed_tokens (751,632,384 language
# parameters = 28 layers + 2 x 151936 x 1024), and xtuner's InternVL3.5-1B config unties it too.
_INTERNVL35_IMAGE_TOKEN = _IMAGE_TOKEN["qwen3"]
# InternVL3's language models keep Qwen2.5's dynamic NTK rope scaling (factor 2), which changes
# no number below their 32,768 positions (``DecoderConfig.max_positions``). Every size's head is
# untied (the 1B's and 2B's too, unlike Qwen2.5-0.5B's and 1.5B's: their checkpoints of 1.88
# and 4.18 GB in bf16 hold a separate lm_head, and InternVL's own config code unties every size).
_DYNAMIC = {"max_positions": 32768}

# Shapes of the released InternVL3 models (InternViT-300M + Qwen2.5) and InternVL3.5 ones
# (+ Qwen3), in either format: no weights.
PRESETS = {
    "InternVL3-1B": InternVLConfig(
        VisionConfig(), _qwen25(896, 24, 14, 2, 4864, False, **_DYNAMIC)
    ),
    "InternVL3-2B": InternVLConfig(
        VisionConfig(), _qwen25(1536, 28, 12, 2, 8960, False, **_DYNAMIC)
    ),
    "InternVL3-8B": InternVLConfig(
        VisionConfig(), _qwen25(3584, 28, 28, 4, 18944, False, **_DYNAMIC)
    ),
    "InternVL3-14B": InternVLConfig(
        VisionConfig(), _qwen25(5120, 48, 40, 8, 13824, False, **_DYNAMIC)
    ),
    "InternVL3.5-1B": InternVLConfig(  # Qwen3-0.6B
        VisionConfig(), _qwen3(1024, 28, 16, 8, 3072), image_token_id=_INTERNVL35_IMAGE_TOKEN
    ),
    "InternVL3.5-8B": InternVLConfig(  # Qwen3-8B
        VisionConfig(), _qwen3(4096, 36, 32, 8, 12288), image_token_id=_INTERNVL35_IMAGE_TOKEN
    ),
}
