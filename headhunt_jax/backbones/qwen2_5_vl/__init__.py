"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``, model_type ``qwen2_5_vl``): a windowed
ViT on flat patches of images at their own resolution, a patch merger and a Qwen2 decoder with
3-D rotary positions (M-RoPE)."""

from headhunt_jax.backbones.qwen2_5_vl.config import PRESETS, Qwen25VLConfig
from headhunt_jax.backbones.qwen2_5_vl.inputs import check_inputs, init_inputs, prepare
from headhunt_jax.backbones.qwen2_5_vl.modeling import Qwen25VL
from headhunt_jax.backbones.qwen2_5_vl.params import KEYS
from headhunt_jax.backbones.qwen2_5_vl.processor import processor as make_processor
from headhunt_jax.backbones.qwen2_5_vl.tiny import tiny_backbone
from headhunt_jax.backbones.registry import Family, register

FAMILY = register(
    Family(
        name="qwen2_5_vl",
        model_types=("qwen2_5_vl",),
        config_type=Qwen25VLConfig,
        module=Qwen25VL,
        keys=KEYS,
        init_inputs=init_inputs,
        check_inputs=check_inputs,
        prepare=prepare,
        traceable_inputs=("pixel_values", "pixel_values_videos"),
        processor=make_processor,
        presets=PRESETS,
        demo_backbones={"qwen2.5-vl": tiny_backbone},
    )
)
