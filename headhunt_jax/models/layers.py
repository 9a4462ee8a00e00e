"""Building blocks shared by the model files: einsum projections and norms with logical axes.

Every parameter carries logical axis names (``embed``, ``heads``, ``kv_heads``, ``head_dim``,
``mlp``, ``vocab``, ...); ``headhunt_jax.sharding`` maps them to mesh axes.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


class Einsum(nn.Module):
    """A projection written as an einsum whose subscripts name the axes.

    ``kernel_axes`` are the logical names of the kernel's axes, ``bias_axes`` those of the bias
    (the trailing output axes); no bias when ``bias_axes`` is None.
    """

    equation: str
    kernel_shape: Sequence[int]
    kernel_axes: Sequence[str]
    bias_axes: Sequence[str] | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.normal(0.02)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, tuple(self.kernel_axes)),
            tuple(self.kernel_shape),
            self.dtype,
        )
        y = jnp.einsum(self.equation, x.astype(self.dtype), kernel)
        if self.bias_axes is not None:
            bias_shape = tuple(self.kernel_shape[-len(self.bias_axes) :])
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes)),
                bias_shape,
                self.dtype,
            )
            y = y + bias
        return y


class RMSNorm(nn.Module):
    """RMS norm computed in float32, cast back before the weight (as Qwen2/Llama do)."""

    eps: float = 1e-6
    axis_name: str = "embed"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
            self.dtype,
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight * x32.astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with scale and bias, statistics in float32."""

    eps: float = 1e-5
    axis_name: str = "embed"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (features,),
            self.dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
            (features,),
            self.dtype,
        )
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class HeadOutputs(nn.Module):
    """Marks the per-head attention output [B, T, heads, head_dim] (the input of ``o_proj``).

    It is the identity; it exists so that ``apply(..., capture_intermediates=is_head_outputs)``
    returns exactly these tensors, one per layer.
    """

    @nn.compact
    def __call__(self, x):
        return x


def is_head_outputs(module, method_name):
    return isinstance(module, HeadOutputs) and method_name == "__call__"
