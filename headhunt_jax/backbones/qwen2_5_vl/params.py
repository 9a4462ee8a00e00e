"""Qwen2.5-VL checkpoints' keys (``Qwen2_5_VLForConditionalGeneration``) -> params.

Key layouts: the released checkpoints and transformers v5's ``save_pretrained`` write
``model.*`` (the decoder), ``visual.*`` and ``lm_head.*``; v5's in-memory layout is
``model.language_model.*`` and ``model.visual.*``. The tower's fused ``attn.qkv`` ([3E, E], rows
q | k | v, each head by head) is the fused ``qkv`` kernel [E, 3, N, H]; ``attn.proj`` is
``o_proj``; the merger's ``mlp.0`` / ``mlp.2`` are ``fc1`` / ``fc2``.
"""

from headhunt_jax import weights as w

_B = r"visual\.blocks\.(\d+)\."
_VL = r"visual/layers_\1/"

KEYS = w.KeyTable(
    w.DECODER_ROWS
    + [
        (r"visual\.patch_embed\.proj\.weight", "visual/patch_embed", w.conv),
        (_B + r"norm([12])\.weight", _VL + r"norm\2/scale", None),
        (_B + r"attn\.qkv\.weight", _VL + "attn/qkv/kernel", w.fused_heads_in),
        (_B + r"attn\.qkv\.bias", _VL + "attn/qkv/bias", w.reshape),
        (_B + r"attn\.proj\.weight", _VL + "attn/o_proj/kernel", w.heads_out),
        (_B + r"attn\.proj\.bias", _VL + "attn/o_proj/bias", None),
        (_B + r"mlp\.(gate|up|down)_proj\.weight", _VL + r"\2_proj/kernel", w.linear),
        (_B + r"mlp\.(gate|up|down)_proj\.bias", _VL + r"\2_proj/bias", None),
        (r"visual\.merger\.ln_q\.weight", "visual/merger/ln_q/scale", None),
        (r"visual\.merger\.mlp\.0\.weight", "visual/merger/fc1/kernel", w.linear),
        (r"visual\.merger\.mlp\.0\.bias", "visual/merger/fc1/bias", None),
        (r"visual\.merger\.mlp\.2\.weight", "visual/merger/fc2/kernel", w.linear),
        (r"visual\.merger\.mlp\.2\.bias", "visual/merger/fc2/bias", None),
    ],
    [
        ("model.language_model.", "lm."),
        ("model.visual.", "visual."),
        ("visual.", "visual."),
        ("model.", "lm."),
        ("lm_head.", "lm_head."),
    ],
)
