"""transformers' vision-tower tensors -> the Flax tower's params (``vision.Qwen25VisionTower``).

The fused ``attn.qkv`` ([3E, E], rows (q|k|v, head, head_dim)) is split into ``q_proj``,
``k_proj`` and ``v_proj``; ``attn.proj`` is ``o_proj``; the merger's ``mlp.0`` / ``mlp.2`` are
``fc1`` / ``fc2``. Keys may carry the full model's prefix (``model.visual.`` in transformers v5's
in-memory layout, ``visual.`` in the released checkpoints) or none (the tower alone).
"""

import re
from collections.abc import Mapping

import numpy as np

from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VisionConfig

_PREFIX = re.compile(r"^(?:model\.)?(?:visual\.)?")


def tower_params(tensors: Mapping[str, np.ndarray], cfg: Qwen25VisionConfig) -> dict:
    """{HF key: array} (the tower's keys; others are ignored) -> nested params; raises on a
    missing or unexpected tower key and on any shape mismatch."""
    t = {}
    for key, value in tensors.items():
        if key.startswith(("model.language_model.", "language_model.", "lm_head.")):
            continue
        t[_PREFIX.sub("", key)] = np.asarray(value, np.float32)
    e, n, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.hidden_size * cfg.merge_unit
    used = set()

    def take(key, shape):
        if key not in t:
            raise KeyError(f"vision tensor {key!r} missing")
        if tuple(t[key].shape) != tuple(shape):
            raise ValueError(f"vision tensor {key!r}: shape {t[key].shape}, expected {shape}")
        used.add(key)
        return t[key]

    def linear(prefix, fan_in, fan_out):
        return {
            "kernel": take(prefix + ".weight", (fan_out, fan_in)).T,
            "bias": take(prefix + ".bias", (fan_out,)),
        }

    c, tp, p = cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size
    params = {
        "patch_embed": take("patch_embed.proj.weight", (e, c, tp, p, p)).transpose(1, 2, 3, 4, 0)
    }
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        qkv = take(b + "attn.qkv.weight", (3 * e, e)).reshape(3, n, h, e).transpose(0, 3, 1, 2)
        qkv_bias = take(b + "attn.qkv.bias", (3 * e,)).reshape(3, n, h)
        attn = {
            f"{name}_proj": {"kernel": qkv[j], "bias": qkv_bias[j]} for j, name in enumerate("qkv")
        }
        attn["o_proj"] = {
            "kernel": take(b + "attn.proj.weight", (e, e)).T.reshape(n, h, e),
            "bias": take(b + "attn.proj.bias", (e,)),
        }
        params[f"blocks_{i}"] = {
            "norm1": {"scale": take(b + "norm1.weight", (e,))},
            "norm2": {"scale": take(b + "norm2.weight", (e,))},
            "attn": attn,
            "gate_proj": linear(b + "mlp.gate_proj", e, cfg.intermediate_size),
            "up_proj": linear(b + "mlp.up_proj", e, cfg.intermediate_size),
            "down_proj": linear(b + "mlp.down_proj", cfg.intermediate_size, e),
        }
    params["merger"] = {
        "ln_q": {"scale": take("merger.ln_q.weight", (e,))},
        "fc1": linear("merger.mlp.0", d, d),
        "fc2": linear("merger.mlp.2", d, cfg.out_hidden_size),
    }
    extra = sorted(set(t) - used)
    if extra:
        raise ValueError(f"unexpected vision tensors: {extra[:5]}")
    return params
