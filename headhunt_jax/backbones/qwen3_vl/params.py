"""Qwen3-VL checkpoints' keys (``Qwen3VLForConditionalGeneration``) -> params.

Key layout (the released checkpoints and transformers v5's ``save_pretrained``):
``model.language_model.*`` (the decoder), ``model.visual.*`` and ``lm_head.*``. The tower's
Conv3d is ``patch_embed`` (and ``patch_bias``); its fused ``attn.qkv`` ([3D, D], rows q | k | v,
each head by head) is the fused ``qkv`` kernel [D, 3, N, H]; ``attn.proj`` is ``o_proj``; the
mergers' ``linear_fc1`` / ``linear_fc2`` are ``fc1`` / ``fc2``, DeepStack merger i is
``deepstack_merger_<i>``.
"""

from headhunt_jax import weights as w

_B = r"visual\.blocks\.(\d+)\."
_VL = r"visual/layers_\1/"
_M = r"visual\.(merger|deepstack_merger_\d+)\."

KEYS = w.KeyTable(
    w.DECODER_ROWS
    + [
        (r"visual\.patch_embed\.proj\.weight", "visual/patch_embed", w.conv),
        (r"visual\.patch_embed\.proj\.bias", "visual/patch_bias", None),
        (r"visual\.pos_embed\.weight", "visual/pos_embed", None),
        (_B + r"norm([12])\.weight", _VL + r"norm\2/scale", None),
        (_B + r"norm([12])\.bias", _VL + r"norm\2/bias", None),
        (_B + r"attn\.qkv\.weight", _VL + "attn/qkv/kernel", w.fused_heads_in),
        (_B + r"attn\.qkv\.bias", _VL + "attn/qkv/bias", w.reshape),
        (_B + r"attn\.proj\.weight", _VL + "attn/o_proj/kernel", w.heads_out),
        (_B + r"attn\.proj\.bias", _VL + "attn/o_proj/bias", None),
        (_B + r"mlp\.linear_fc([12])\.weight", _VL + r"fc\2/kernel", w.linear),
        (_B + r"mlp\.linear_fc([12])\.bias", _VL + r"fc\2/bias", None),
        (_M + r"norm\.weight", r"visual/\1/norm/scale", None),
        (_M + r"norm\.bias", r"visual/\1/norm/bias", None),
        (_M + r"linear_fc([12])\.weight", r"visual/\1/fc\2/kernel", w.linear),
        (_M + r"linear_fc([12])\.bias", r"visual/\1/fc\2/bias", None),
    ],
    [
        ("model.language_model.", "lm."),
        ("model.visual.", "visual."),
        ("lm_head.", "lm_head."),
    ],
    renames=[(r"^visual\.deepstack_merger_list\.(\d+)\.", r"visual.deepstack_merger_\1.")],
)
