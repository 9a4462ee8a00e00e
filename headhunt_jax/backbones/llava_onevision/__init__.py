"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, model_type ``llava_onevision``):
SigLIP + projector + Qwen2; videos pooled 2x2 a frame."""

from headhunt_jax.backbones.llava_onevision.config import PRESETS, LlavaOnevisionConfig
from headhunt_jax.backbones.llava_onevision.inputs import check_inputs, init_inputs
from headhunt_jax.backbones.llava_onevision.modeling import LlavaOnevision
from headhunt_jax.backbones.llava_onevision.params import KEYS
from headhunt_jax.backbones.llava_onevision.processor import processor as make_processor
from headhunt_jax.backbones.llava_onevision.tiny import tiny_backbone
from headhunt_jax.backbones.registry import Family, register

FAMILY = register(
    Family(
        name="llava_onevision",
        model_types=("llava_onevision",),
        config_type=LlavaOnevisionConfig,
        module=LlavaOnevision,
        keys=KEYS,
        init_inputs=init_inputs,
        check_inputs=check_inputs,
        processor=make_processor,
        presets=PRESETS,
        demo_backbones={"llava-onevision": tiny_backbone},
    )
)
