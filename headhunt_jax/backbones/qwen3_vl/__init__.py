"""Qwen3-VL (``Qwen3VLForConditionalGeneration``, model_type ``qwen3_vl``): a ViT with learned
positions resampled to each image's grid and 2-D rotary embeddings, a patch merger, DeepStack
mergers whose tokens join the first decoder layers, and a Qwen3 decoder with interleaved 3-D
rotary positions (M-RoPE) over timestamped video."""

from headhunt_jax.backbones.qwen3_vl.config import PRESETS, Qwen3VLConfig
from headhunt_jax.backbones.qwen3_vl.inputs import check_inputs, init_inputs, prepare
from headhunt_jax.backbones.qwen3_vl.modeling import Qwen3VL
from headhunt_jax.backbones.qwen3_vl.params import KEYS
from headhunt_jax.backbones.qwen3_vl.processor import processor as make_processor
from headhunt_jax.backbones.qwen3_vl.tiny import tiny_backbone
from headhunt_jax.backbones.registry import Family, register

FAMILY = register(
    Family(
        name="qwen3_vl",
        model_types=("qwen3_vl",),
        config_type=Qwen3VLConfig,
        module=Qwen3VL,
        keys=KEYS,
        init_inputs=init_inputs,
        check_inputs=check_inputs,
        prepare=prepare,
        traceable_inputs=("pixel_values", "pixel_values_videos"),
        processor=make_processor,
        presets=PRESETS,
        demo_backbones={"qwen3-vl": tiny_backbone},
    )
)
