"""Repeated blocks as one: their parameters stacked on a leading axis, run by ``jax.lax.scan``.

A Python loop over the layers traces and compiles every layer on its own, so a first call costs
more the deeper the model (InternVL3-8B: about a minute on 2 CPU cores). Here the blocks of a
stack share one parameter tree whose leaves have a leading axis of length ``num_layers`` (logical
name ``LAYERS``; the sharding rules keep it whole), and a run over layers [start, stop) is one
scan: one body to trace and compile whatever the depth.

A block is an unbound Flax module applied as a pure function of its own slice of the tree
(``block.apply({"params": layer(params, i)}, ...)``), so its outputs leave the scan stacked by
layer; each caller keeps only what it needs (the decoder: the last position's head outputs, and
keys and values for a prefix pass). HF checkpoints hold one tensor a layer, which
``weights.convert`` puts into its slice.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYERS = "layers"  # the logical name of the stacked axis (and the params subtree's name)


def stacked(block: nn.Module, length: int, *example) -> Callable:
    """An init function for ``Module.param``: ``length`` independently initialised copies of the
    parameters of ``block`` (an unbound module; ``example``: inputs that create all of them),
    stacked on a leading axis whose logical name is ``LAYERS``."""

    def init(key):
        keys = jax.random.split(key, length)
        params = jax.vmap(lambda k: block.init(k, *example)["params"])(keys)
        return jax.tree.map(
            lambda p: p.replace(names=(LAYERS, *p.names)),
            params,
            is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
        )

    return init


def layer(params, i):
    """Layer i's slice of a stacked tree (i an int or a traced index)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), params)


def unstacked(params, length: int) -> list:
    """A stacked tree -> its ``length`` layers' trees, each leaf a buffer of its own."""
    return [layer(params, i) for i in range(length)]


def scan(fn: Callable, params, carry, start: int, stop: int, unroll: int = 1):
    """``carry, out = fn(layer params, i, carry)`` for i in [start, stop), as one scan.

    Returns (carry, the outs stacked on a leading axis), or (carry, None) for an empty range.
    The layers are indexed inside the body, not sliced outside it, so that a scan over fewer
    layers than the stack holds reads the stacked weights in place instead of copying a slice.
    """
    if stop <= start:
        return carry, None

    def body(carry, i):
        return fn(layer(params, i), i, carry)

    return jax.lax.scan(body, carry, jnp.arange(start, stop), unroll=unroll)


def append(outs: Any, out: Any):
    """A scan's stacked outs (or None) with one more layer's out after them."""
    if outs is None:
        return jax.tree.map(lambda y: y[None], out)
    return jax.tree.map(lambda ys, y: jnp.concatenate([ys, y[None]]), outs, out)


# Tokens a vision tower runs at once on a CPU: each image's activations are independent, and
# whole-batch activations past glibc's largest reusable block (32 MiB: [32 images, 257, 1024]
# float32 is 34 MB) are mapped fresh on every call, so each run page-faults them in again. In
# steps of at most 4,096 tokens a mid-size tower of 32 images runs 20% faster on 2 cores.
CPU_IMAGE_TOKENS_PER_STEP = 4096


def over_images(run: Callable, x):
    """``run(x)`` for x [N, T, E] whose N images are independent, in steps of whole images.

    On a CPU the images go through ``run`` a group at a time (``jax.lax.map``), about
    ``CPU_IMAGE_TOKENS_PER_STEP`` tokens a step at most; elsewhere all at once. A group takes every
    (N / steps)-th image, so that on a mesh each step takes the same share of every device's
    images. ``run``'s outputs (any pytree of [N, ...] arrays) come back in the images' order.
    """
    n, t = x.shape[:2]
    per = max(1, CPU_IMAGE_TOKENS_PER_STEP // t)
    if jax.default_backend() != "cpu" or per >= n:
        return run(x)
    steps = next(s for s in range(-(-n // per), n + 1) if n % s == 0)  # steps dividing N
    groups = x.reshape(n // steps, steps, *x.shape[1:]).swapaxes(0, 1)
    outs = jax.lax.map(run, groups)
    return jax.tree.map(lambda y: y.swapaxes(0, 1).reshape(n, *y.shape[2:]), outs)
