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


@pytest.mark.parametrize("impl", ["chunked", "xla"])
@pytest.mark.parametrize("causal", [True, False])
def test_segment_ids_and_masks_attend_within_their_part(impl, causal):
    """Two sequences packed into one row with segment ids attend as they do apart; a mask that
    hides a left padding gives the unpadded result."""
    rng = np.random.default_rng(3)
    lengths = (5, 7)
    q, k, v = (rng.standard_normal((1, 12, 4, 8)).astype(np.float32) for _ in range(3))
    ids = np.repeat([0, 1], lengths)[None]
    packed = np.asarray(
        attention(q, k, v, causal=causal, impl=impl, chunk=4, segment_ids=(ids, ids))
    )
    for start, stop in ((0, 5), (5, 12)):
        part = [x[:, start:stop] for x in (q, k, v)]
        np.testing.assert_allclose(
            packed[:, start:stop], reference(*part, causal), rtol=1e-5, atol=1e-6
        )
    visible = np.ones((1, 1, 12, 12), bool)
    visible[..., :3] = False  # three padding keys on the left
    padded = np.asarray(attention(q, k, v, causal=causal, impl=impl, chunk=4, mask=visible))
    np.testing.assert_allclose(
        padded[:, 3:], reference(q[:, 3:], k[:, 3:], v[:, 3:], causal), rtol=1e-5, atol=1e-6
    )


def test_decoder_with_left_padding_and_explicit_positions():
    """A left-padded row with its padding masked and positions counted from its first real token
    gives the features of the unpadded sequence: the decoder's explicit positions and key mask."""
    import jax
    import jax.numpy as jnp

    from headhunt_jax.models.decoder import Decoder, DecoderConfig

    cfg = DecoderConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8,
    )  # fmt: skip
    decoder = Decoder(cfg)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 50, (1, 9)), jnp.int32)
    params = decoder.init(jax.random.key(0), jnp.zeros((1, 9, 32)), method=Decoder.logits)

    def run(embeds, **kw):
        return np.asarray(decoder.apply(params, embeds, method=Decoder.logits, **kw))

    embeds = decoder.apply(params, ids, method=Decoder.embed)
    want = run(embeds)
    pad = 3
    padded = jnp.concatenate([jnp.zeros((1, pad, 32)), embeds], axis=1)
    key_mask = jnp.arange(9 + pad)[None] >= pad
    positions = jnp.maximum(jnp.arange(9 + pad)[None] - pad, 0)
    got = run(padded, positions=positions, key_mask=key_mask)
    np.testing.assert_allclose(got[:, pad:], want, rtol=1e-4, atol=1e-5)


def test_per_head_mask_with_grouped_heads_and_rows_that_see_nothing():
    """A mask per query head ([B, N, T, S], 6 query heads on 2 kv heads) hides each head's own
    keys; a query that sees no key gets the mean of the values, as in XLA's one-shot path."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 9, 6, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 9, 2, 8)).astype(np.float32) for _ in range(2))
    visible = rng.random((2, 6, 9, 9)) > 0.4
    visible[0, 1, 4] = False  # head 1's query 4 of row 0 sees nothing
    got = np.asarray(attention(q, k, v, causal=False, impl="chunked", chunk=4, mask=visible))
    for i in range(2):
        for head in range(6):
            g = head // 3
            scores = q[i, :, head].astype(np.float64) @ k[i, :, g].T / np.sqrt(8)
            w = np.where(visible[i, head], np.exp(scores - scores.max(-1, keepdims=True)), 0)
            want = (w / np.maximum(w.sum(-1, keepdims=True), 1e-300)) @ v[i, :, g]
            seen = visible[i, head].any(-1)
            np.testing.assert_allclose(got[i, seen, head], want[seen], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0, 4, 1], v[0, :, 0].mean(0), rtol=1e-5, atol=1e-6)
    xla = attention(q, k, v, causal=False, impl="xla", mask=visible)
    np.testing.assert_allclose(got, np.asarray(xla), rtol=1e-5, atol=1e-6)
