"""InternVL3 / InternVL3.5, in either checkpoint format: transformers' ``InternVLForConditionalGeneration``
(model_type ``internvl``) or InternVL's own ``InternVLChatModel`` (``internvl_chat``)."""

import functools

from headhunt_jax.backbones.internvl.config import PRESETS, InternVLConfig, checkpoint_config
from headhunt_jax.backbones.internvl.inputs import check_inputs, init_inputs
from headhunt_jax.backbones.internvl.modeling import InternVL
from headhunt_jax.backbones.internvl.params import KEYS
from headhunt_jax.backbones.internvl.processor import processor
from headhunt_jax.backbones.internvl.tiny import tiny_backbone
from headhunt_jax.backbones.registry import Family, register

FAMILY = register(
    Family(
        name="internvl",
        model_types=("internvl", "internvl_chat"),
        config_type=InternVLConfig,
        module=InternVL,
        keys=KEYS,
        init_inputs=init_inputs,
        check_inputs=check_inputs,
        checkpoint_config=checkpoint_config,
        processor=processor,
        presets=PRESETS,
        demo_backbones={
            "internvl3": functools.partial(tiny_backbone, text_model="qwen2"),
            "internvl3.5": functools.partial(tiny_backbone, text_model="qwen3"),
        },
    )
)
