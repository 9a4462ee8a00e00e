"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, model_type ``llava_onevision``):
SigLIP + projector + Qwen2; videos pooled 2x2 a frame."""

from headhunt_jax.backbones import Family, register
from headhunt_jax.backbones.llava_onevision import modeling
from headhunt_jax.backbones.llava_onevision.config import PRESETS, LlavaOnevisionConfig
from headhunt_jax.backbones.llava_onevision.modeling import LlavaOnevision
from headhunt_jax.backbones.llava_onevision.params import KEYS, init_inputs
from headhunt_jax.backbones.llava_onevision.processor import processor as make_processor
from headhunt_jax.backbones.llava_onevision.tiny import tiny_backbone

VISION_INPUTS = ("pixel_values", "image_sizes", "pixel_values_videos")


def check_inputs(cfg: LlavaOnevisionConfig, input_ids, vision_inputs: dict) -> None:
    """Image tokens and ``pixel_values`` + ``image_sizes``, video tokens and
    ``pixel_values_videos`` [videos, frames, 3, S, S] must agree."""
    unknown = sorted(set(vision_inputs) - set(VISION_INPUTS))
    if unknown:
        raise ValueError(
            f"LLaVA-OneVision takes {', '.join(VISION_INPUTS)}, not {', '.join(unknown)}"
        )
    modeling.check_inputs(cfg, input_ids, **vision_inputs)


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
