"""InternVL checkpoints' keys -> params: InternVLForConditionalGeneration's (both of its key
layouts), and InternVLChatModel's, renamed onto them (its fused ``attn.qkv`` cut in three)."""

from headhunt_jax import weights as w

KEYS = w.KeyTable(
    w.DECODER_ROWS
    + [
        # vision tower
        (r"vision\.embeddings\.cls_token", "vision/cls_token", w.reshape),
        (r"vision\.embeddings\.position_embeddings", "vision/position_embeddings", w.reshape),
        (
            r"vision\.embeddings\.patch_embeddings\.projection\.weight",
            "vision/patch_embed/kernel",
            w.conv,
        ),
        (
            r"vision\.embeddings\.patch_embeddings\.projection\.bias",
            "vision/patch_embed/bias",
            None,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.weight",
            r"vision/layers_\1/attn/\2_proj/kernel",
            w.heads_in,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.bias",
            r"vision/layers_\1/attn/\2_proj/bias",
            w.reshape,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.attention\.projection_layer\.weight",
            r"vision/layers_\1/attn/o_proj/kernel",
            w.heads_out,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.attention\.projection_layer\.bias",
            r"vision/layers_\1/attn/o_proj/bias",
            None,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.attention\.([qk])_norm\.weight",
            r"vision/layers_\1/attn/\2_norm/scale",
            None,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.layernorm_before\.weight",
            r"vision/layers_\1/norm1/scale",
            None,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.layernorm_before\.bias",
            r"vision/layers_\1/norm1/bias",
            None,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.layernorm_after\.weight",
            r"vision/layers_\1/norm2/scale",
            None,
        ),
        (
            r"vision\.encoder\.layer\.(\d+)\.layernorm_after\.bias",
            r"vision/layers_\1/norm2/bias",
            None,
        ),
        (r"vision\.encoder\.layer\.(\d+)\.(lambda_[12])", r"vision/layers_\1/\2", None),
        (
            r"vision\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.weight",
            r"vision/layers_\1/\2/kernel",
            w.linear,
        ),
        (r"vision\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.bias", r"vision/layers_\1/\2/bias", None),
        (r"vision\.layernorm\.weight", "vision/final_norm/scale", None),
        (r"vision\.layernorm\.bias", "vision/final_norm/bias", None),
        # projector
        (r"proj\.layer_norm\.weight", "projector/norm/scale", None),
        (r"proj\.layer_norm\.bias", "projector/norm/bias", None),
        (r"proj\.(linear_[12])\.weight", r"projector/\1/kernel", w.linear),
        (r"proj\.(linear_[12])\.bias", r"projector/\1/bias", None),
    ],
    # Both InternVL key layouts: transformers v5 (model.language_model.*) and v4; and the
    # original's (vision_model.*, mlp1.*, language_model.model.*, language_model.lm_head.*).
    [
        ("vision_model.", "vision."),
        ("model.language_model.", "lm."),
        ("language_model.model.", "lm."),
        ("language_model.lm_head.", "lm_head."),
        ("model.vision_tower.", "vision."),
        ("vision_tower.", "vision."),
        ("model.multi_modal_projector.", "proj."),
        ("multi_modal_projector.", "proj."),
        ("lm_head.", "lm_head."),
    ],
    # InternVLChatModel's names -> transformers' (after the prefixes above).
    [
        (r"^vision\.embeddings\.class_embedding$", "vision.embeddings.cls_token"),
        (r"^vision\.embeddings\.position_embedding$", "vision.embeddings.position_embeddings"),
        (
            r"^vision\.embeddings\.patch_embedding\.",
            "vision.embeddings.patch_embeddings.projection.",
        ),
        (
            r"^vision\.encoder\.layers\.(\d+)\.attn\.proj\.",
            r"vision.encoder.layer.\1.attention.projection_layer.",
        ),
        (r"^vision\.encoder\.layers\.(\d+)\.attn\.", r"vision.encoder.layer.\1.attention."),
        (r"^vision\.encoder\.layers\.(\d+)\.norm1\.", r"vision.encoder.layer.\1.layernorm_before."),
        (r"^vision\.encoder\.layers\.(\d+)\.norm2\.", r"vision.encoder.layer.\1.layernorm_after."),
        (r"^vision\.encoder\.layers\.(\d+)\.ls([12])$", r"vision.encoder.layer.\1.lambda_\2"),
        (r"^vision\.encoder\.layers\.(\d+)\.", r"vision.encoder.layer.\1."),
        (r"^mlp1\.0\.", "proj.layer_norm."),
        (r"^mlp1\.1\.", "proj.linear_1."),
        (r"^mlp1\.3\.", "proj.linear_2."),
    ],
    # The original's vision attention: q, k and v rows fused in one tensor.
    [
        (
            r"(vision\.encoder\.layer\.\d+\.attention)\.qkv\.(weight|bias)",
            [r"\1.q_proj.\2", r"\1.k_proj.\2", r"\1.v_proj.\2"],
        )
    ],
)
