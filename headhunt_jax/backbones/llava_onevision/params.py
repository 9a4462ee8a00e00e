"""LLaVA-OneVision checkpoints' keys (``LlavaOnevisionForConditionalGeneration``) -> params.

Key layouts: transformers v5's ``save_pretrained`` writes the legacy layout the released
llava-hf checkpoints have (``language_model.model.*``, ``vision_tower.*``,
``multi_modal_projector.*``, ``image_newline``; ``language_model.lm_head.*`` or ``lm_head.*``);
its in-memory layout (``model.language_model.*``, ``model.vision_tower.*``, ...,
``model.image_newline``) is read too. The tower's keys may carry SigLIP's ``vision_model.``
(transformers v4 ``SiglipVisionModel``) or not (v5).
"""

from headhunt_jax import weights as w

_V = r"vision\.(?:vision_model\.)?"
_L = _V + r"encoder\.layers\.(\d+)\."

KEYS = w.KeyTable(
    w.DECODER_ROWS
    + [
        # SigLIP tower
        (_V + r"embeddings\.patch_embedding\.weight", "vision/patch_embed/kernel", w.conv),
        (_V + r"embeddings\.patch_embedding\.bias", "vision/patch_embed/bias", None),
        (_V + r"embeddings\.position_embedding\.weight", "vision/position_embedding", None),
        (
            _L + r"self_attn\.([qkv])_proj\.weight",
            r"vision/layers_\1/attn/\2_proj/kernel",
            w.heads_in,
        ),
        (_L + r"self_attn\.([qkv])_proj\.bias", r"vision/layers_\1/attn/\2_proj/bias", w.reshape),
        (_L + r"self_attn\.out_proj\.weight", r"vision/layers_\1/attn/o_proj/kernel", w.heads_out),
        (_L + r"self_attn\.out_proj\.bias", r"vision/layers_\1/attn/o_proj/bias", None),
        (_L + r"layer_norm([12])\.weight", r"vision/layers_\1/norm\2/scale", None),
        (_L + r"layer_norm([12])\.bias", r"vision/layers_\1/norm\2/bias", None),
        (_L + r"mlp\.(fc[12])\.weight", r"vision/layers_\1/\2/kernel", w.linear),
        (_L + r"mlp\.(fc[12])\.bias", r"vision/layers_\1/\2/bias", None),
        (_V + r"post_layernorm\.weight", "vision/post_layernorm/scale", None),
        (_V + r"post_layernorm\.bias", "vision/post_layernorm/bias", None),
        # projector and the newline embedding
        (r"proj\.(linear_[12])\.weight", r"projector/\1/kernel", w.linear),
        (r"proj\.(linear_[12])\.bias", r"projector/\1/bias", None),
        (r"image_newline", "image_newline", None),
    ],
    [
        ("model.language_model.", "lm."),
        ("language_model.model.", "lm."),
        ("language_model.lm_head.", "lm_head."),
        ("model.vision_tower.", "vision."),
        ("vision_tower.", "vision."),
        ("model.multi_modal_projector.", "proj."),
        ("multi_modal_projector.", "proj."),
        ("model.image_newline", "image_newline"),
        ("lm_head.", "lm_head."),
    ],
)
