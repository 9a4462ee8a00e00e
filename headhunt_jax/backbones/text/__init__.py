"""Text-only causal LMs (``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``LlamaForCausalLM``): the
shared decoder on its own, for checking the port; extraction needs a vision family."""

from headhunt_jax.backbones.registry import Family, register
from headhunt_jax.backbones.text.inputs import check_inputs, init_inputs
from headhunt_jax.backbones.text.modeling import TextModel
from headhunt_jax.models.decoder import SUPPORTED_TEXT, DecoderConfig
from headhunt_jax.weights import TEXT_TABLE

FAMILY = register(
    Family(
        name="text",
        model_types=SUPPORTED_TEXT,
        config_type=DecoderConfig,
        module=TextModel,
        keys=TEXT_TABLE,
        init_inputs=init_inputs,
        check_inputs=check_inputs,
    )
)
