"""The chunked attention path against a plain numpy softmax attention."""

import os
import subprocess
import sys

import numpy as np
import pytest

from headhunt_jax.models.layers import attention


def reference(q, k, v, causal):
    """float64 per-head loop; query i sits at key position S - T + i."""
    b, t, n, h = q.shape
    s, kv = k.shape[1], k.shape[2]
    out = np.zeros((b, t, n, h))
    for i in range(b):
        for head in range(n):
            g = head // (n // kv)
            scores = q[i, :, head] @ k[i, :, g].T / np.sqrt(h)
            if causal:
                visible = (s - t + np.arange(t))[:, None] >= np.arange(s)[None, :]
                scores = np.where(visible, scores, -np.inf)
            w = np.exp(scores - scores.max(-1, keepdims=True))
            out[i, :, head] = (w / w.sum(-1, keepdims=True)) @ v[i, :, g]
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("queries", [23, 1])
def test_chunked_attention_matches_reference(causal, chunk, queries):
    rng = np.random.default_rng(chunk + queries)
    q = rng.standard_normal((2, queries, 6, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 23, 2, 8)).astype(np.float32) for _ in range(2))
    got = np.asarray(attention(q, k, v, causal=causal, impl="chunked", chunk=chunk))
    want = reference(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), causal)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if queries == 23:  # XLA's one-shot path agrees too
        xla = attention(q, k, v, causal=causal, impl="xla")
        np.testing.assert_allclose(got, np.asarray(xla), rtol=1e-5, atol=1e-6)


MEMORY_PROBE = """
import jax, numpy as np
from headhunt_jax.models.layers import attention
q = jax.ShapeDtypeStruct((1, 4096, 4, 16), np.float32)
for impl in ("chunked", "xla"):
    fn = jax.jit(lambda q, k, v: attention(q, k, v, causal=True, impl=impl, chunk=128))
    print(fn.lower(q, q, q).compile().memory_analysis().temp_size_in_bytes)
"""


def test_chunked_attention_memory_is_per_chunk():
    """Scratch memory of a causal pass over 4096 tokens: about one [N, chunk, S] block of
    scores (8 MiB here), not the [N, T, S] of the one-shot path (256 MiB). XLA:CPU's
    concurrency-optimised scheduler keeps blocks alive in parallel; with it off the bound shows."""
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_enable_concurrency_optimized_scheduler=false")
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE], env=env, capture_output=True, text=True, check=True
    )
    chunked, one_shot = (int(x) for x in out.stdout.split())
    block = 4 * 128 * 4096 * 4
    assert chunked <= 3 * block
    assert one_shot >= 8 * block
