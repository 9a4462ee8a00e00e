"""InternViT, the vision tower of InternVL, as in transformers' ``InternVLVisionModel``.

Patch + absolute position embeddings (bicubic interpolation when the image size differs from the
pretraining size), pre-norm blocks with layer scale, ``layer_norm`` or ``rms_norm``, optional
qk-norm over the whole embedding.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.models import stack
from headhunt_jax.models.layers import (
    Einsum,
    LayerNorm,
    RMSNorm,
    attention,
    output_projection,
    qkv_projections,
)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    attention_bias: bool = True
    use_qk_norm: bool = False
    use_mean_pooling: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, cfg: dict) -> "VisionConfig":
        def square(v, what):
            v = list(v) if isinstance(v, list | tuple) else [v, v]
            if v[0] != v[1]:
                raise ValueError(f"non-square vision {what} {v} is not supported")
            return int(v[0])

        if cfg.get("norm_type", "layer_norm") not in ("layer_norm", "rms_norm"):
            raise ValueError(f"unsupported vision norm_type {cfg['norm_type']!r}")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported vision hidden_act {cfg['hidden_act']!r}")
        if not cfg.get("use_absolute_position_embeddings", True):
            raise ValueError(
                "vision configs without absolute position embeddings are not supported"
            )
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            image_size=square(cfg.get("image_size", 448), "image_size"),
            patch_size=square(cfg.get("patch_size", 14), "patch_size"),
            num_channels=cfg.get("num_channels", 3),
            norm_type=cfg.get("norm_type", "layer_norm"),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
            attention_bias=bool(cfg.get("attention_bias", False)),
            use_qk_norm=bool(cfg.get("use_qk_norm", False)),
            use_mean_pooling=bool(cfg.get("use_mean_pooling", True)),
        )

    @classmethod
    def from_chat(cls, cfg: dict) -> "VisionConfig":
        """From InternVLChatModel's ``vision_config`` (InternViT's own names). Its tower has no
        final norm (``use_mean_pooling`` here); drop path and flash attention change nothing
        at inference."""
        if cfg.get("use_moe"):
            raise ValueError("a mixture-of-experts vision tower (use_moe) is not supported")
        if cfg.get("qk_normalization") and cfg.get("layer_norm_eps", 1e-6) != 1e-6:
            raise ValueError(
                "qk_normalization with layer_norm_eps other than 1e-6 is not supported"
            )
        hf = {
            **cfg,
            "attention_bias": cfg.get("qkv_bias", False),
            "use_qk_norm": cfg.get("qk_normalization", False),
            "use_mean_pooling": True,
        }
        return cls.from_hf(hf)


def _cubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of torch's bicubic resize (align_corners=False, A = -0.75, edge clamp)."""
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    w = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = scale * (i + 0.5) - 0.5
        base = math.floor(src)
        t = src - base
        taps = (far(t + 1), near(t), near(1 - t), far(2 - t))
        for offset, tap in zip(range(-1, 3), taps, strict=True):
            w[i, min(max(base + offset, 0), in_size - 1)] += tap
    return w


def interpolate_positions(pos, grid: int):
    """Patch position embeddings [s*s, E] -> [grid*grid, E] by torch-equivalent bicubic resize."""
    side = math.isqrt(pos.shape[0])
    w = jnp.asarray(_cubic_weights(side, grid), jnp.float32)
    table = pos.reshape(side, side, -1).astype(jnp.float32)
    out = jnp.einsum("oy,yxd,px->opd", w, table, w, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(grid * grid, -1).astype(pos.dtype)


def _norm(cfg: VisionConfig, dtype, name):
    if cfg.norm_type == "rms_norm":
        return RMSNorm(cfg.layer_norm_eps, dtype=dtype, name=name)
    return LayerNorm(cfg.layer_norm_eps, dtype=dtype, name=name)


class VisionAttention(nn.Module):
    cfg: VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        e, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        q, k, v = qkv_projections(x, n, h, cfg.attention_bias, self.dtype)
        if cfg.use_qk_norm:  # the norm spans all heads together

            def norm(name, y):
                flat = y.reshape(*y.shape[:2], e)
                return RMSNorm(1e-6, dtype=self.dtype, name=name)(flat).reshape(y.shape)

            q, k = norm("q_norm", q), norm("k_norm", k)
        out = attention(q, k, v, causal=False, impl=self.attention_impl)
        return output_projection(out, e, self.dtype)


class VisionLayer(nn.Module):
    cfg: VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        e, m = cfg.hidden_size, cfg.intermediate_size

        def scale(name):
            init = nn.with_logical_partitioning(nn.initializers.constant(0.1), ("embed",))
            return self.param(name, init, (e,), self.dtype)

        x = x + scale("lambda_1") * VisionAttention(
            cfg, self.dtype, self.attention_impl, name="attn"
        )(_norm(cfg, self.dtype, "norm1")(x))
        h = _norm(cfg, self.dtype, "norm2")(x)
        h = Einsum("BTE,EM->BTM", (e, m), ("embed", "mlp"), ("mlp",), self.dtype, name="fc1")(h)
        h = nn.gelu(h, approximate=False)
        h = Einsum("BTM,ME->BTE", (m, e), ("mlp", "embed"), ("embed",), self.dtype, name="fc2")(h)
        return x + scale("lambda_2") * h


class PatchEmbed(nn.Module):
    """A stride-p, size-p convolution as one matmul over flattened patches.

    [N, C, S, S] -> [N, (S/p)^2, E]; kernel [C, p, p, E] (the HF conv weight, transposed).
    """

    patch: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, c, s, _ = x.shape
        p, g = self.patch, s // self.patch
        init = nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("channels", "patch", "patch", "embed")
        )
        kernel = self.param("kernel", init, (c, p, p, self.features), self.dtype)
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (self.features,),
            self.dtype,
        )
        patches = (
            x.reshape(n, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * p * p)
        )
        return patches @ kernel.reshape(c * p * p, self.features) + bias


class InternViT(nn.Module):
    """pixel_values [N, C, H, W] (HF layout) -> last hidden states [N, 1 + (H/p)*(W/p), E].

    The layers' parameters are stacked (``layers/...``, see ``models/stack.py``) and run as a scan.
    """

    cfg: VisionConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(self, pixel_values):
        cfg = self.cfg
        e, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
        n, ch, height, width = pixel_values.shape
        if ch != c or height != width or height % p:
            raise ValueError(
                f"pixel_values {pixel_values.shape}: expected [N, {c}, S, S] with S a multiple of {p}"
            )
        grid = height // p
        x = PatchEmbed(p, e, self.dtype, name="patch_embed")(pixel_values.astype(self.dtype))

        def embedding(name, shape, axes):
            return self.param(
                name,
                nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
                shape,
                self.dtype,
            )

        cls_token = embedding("cls_token", (e,), ("embed",))
        num_pos = (cfg.image_size // p) ** 2
        pos = embedding("position_embeddings", (num_pos + 1, e), ("positions", "embed"))
        patch_pos = pos[1:] if grid * grid == num_pos else interpolate_positions(pos[1:], grid)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (n, 1, e)), x], axis=1)
        x = x + jnp.concatenate([pos[:1], patch_pos], axis=0)[None]
        block = VisionLayer(cfg, self.dtype, self.attention_impl, parent=None)
        example = jnp.zeros((1, 1, e), self.dtype)
        layers = self.param(stack.LAYERS, stack.stacked(block, cfg.num_layers, example))
        x = stack.over_images(
            lambda x: stack.scan(
                lambda p, _, x: (block.apply({"params": p}, x), None), layers, x, 0, cfg.num_layers
            )[0],
            x,
        )
        if not cfg.use_mean_pooling:
            x = LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, name="final_norm")(x)
        return x
