"""Decoder-only transformer: Qwen2 / Qwen2.5 (q/k/v bias), Qwen3 (no bias, per-head RMSNorm on
q and k) and the Llama family (no bias).

Heads are an axis: q/k/v kernels are [embed, heads, head_dim], the o kernel [heads, head_dim,
embed]. The layers' parameters are stacked (``models/stack.py``: ``layers/...`` with a leading
layer axis) and the layers run as a scan; each returns its per-head attention output (the input
of ``o_proj``) at the last position, which is what head features are.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.models import stack
from headhunt_jax.models.layers import Einsum, RMSNorm, attention

SUPPORTED_ROPE = ("default", "linear", "llama3")
SUPPORTED_TEXT = ("qwen2", "qwen3", "llama")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    rms_norm_eps: float = 1e-6
    attention_bias: bool = True
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    # Qwen3: RMSNorm over head_dim on each head's q and k, after the projection, before RoPE.
    # (Added after 0.1.0: fingerprints count it only when true.)
    qk_norm: bool = dataclasses.field(default=False, metadata={"added": True})
    # Qwen2.5-VL's M-RoPE: the rotary frequencies split into sections rotated by the temporal,
    # height and width positions in turn (sizes summing to head_dim / 2); empty: 1-D RoPE.
    mrope_section: tuple[int, ...] = dataclasses.field(default=(), metadata={"added": True})
    # Positions up to which the numbers are these (0: any). Dynamic NTK rope scaling leaves the
    # rotary frequencies as they are up to the model's trained length and stretches them only
    # past it, which this decoder does not do: longer inputs are refused. Not part of the
    # fingerprint: a checkpoint without the scaling gives the same numbers where both run.
    max_positions: int = dataclasses.field(
        default=0, metadata={"added": True, "fingerprint": False}
    )

    @property
    def text(self) -> "DecoderConfig":
        """The decoder's config: this one (a text-only backbone's config is its decoder's)."""
        return self

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        return ()

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderConfig":
        """The inverse of ``dataclasses.asdict`` (converted checkpoints store that)."""
        d = dict(d)
        d["rope_scaling"] = tuple(tuple(x) for x in d.get("rope_scaling", ()))
        d["mrope_section"] = tuple(d.get("mrope_section", ()))
        return cls(**d)

    @classmethod
    def from_hf(cls, cfg: dict) -> "DecoderConfig":
        """Builds the config from a Qwen2/Qwen3/Llama ``config.json`` dict (either rope style)."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_TEXT:
            raise ValueError(
                f"unsupported text model_type {model_type!r} (supported: {', '.join(SUPPORTED_TEXT)})"
            )
        if cfg.get("use_sliding_window"):
            raise ValueError("sliding-window attention (use_sliding_window=true) is not supported")
        qwen3 = model_type == "qwen3"
        if qwen3 and cfg.get("attention_bias"):
            # transformers' Qwen3 then biases o_proj too, which this decoder does not have
            raise ValueError("qwen3 with attention_bias=true (q/k/v/o biases) is not supported")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        max_positions = 0
        if rope_type == "dynamic":  # the default frequencies up to the trained length
            max_positions = int(
                rope.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
            )
            rope_type = "default"
        if rope_type not in SUPPORTED_ROPE:
            raise ValueError(
                f"unsupported rope_type {rope_type!r} (supported: {SUPPORTED_ROPE + ('dynamic',)})"
            )
        scaling = () if rope_type == "default" else tuple(sorted(rope.items()))
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            # Qwen3Config's own default head_dim is 128, not hidden / heads
            head_dim=cfg.get("head_dim") or (128 if qwen3 else cfg["hidden_size"] // heads),
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            attention_bias=True
            if model_type == "qwen2"
            else bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=qwen3,
            max_positions=max_positions,
        )


def qwen2_config(vocab, hidden, layers, heads, kv_heads, mlp, tie, **fields) -> DecoderConfig:
    """The shapes of a released Qwen2 / Qwen2.5 decoder (q/k/v bias, RoPE base 1e6, head_dim
    hidden / heads), for the families' presets; ``fields``: any other field."""
    return DecoderConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        attention_bias=True,
        tie_word_embeddings=tie,
        **fields,
    )


def tiny_decoder(vocab: int, **fields) -> DecoderConfig:
    """The decoder of the families' tiny random demo checkpoints (4 layers, GQA 4:2, head_dim
    32); ``fields``: any other field."""
    base = dict(hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2)
    return DecoderConfig(vocab_size=vocab, **{**base, "head_dim": 32, **fields})


def rope_inv_freq(cfg: DecoderConfig) -> np.ndarray:
    """Inverse RoPE frequencies [head_dim // 2], float32 arithmetic as in transformers."""
    dim = cfg.head_dim
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(cfg.rope_theta), exponent)).astype(np.float32)
    scaling = dict(cfg.rope_scaling)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        inv_freq = inv_freq / np.float32(scaling["factor"])
    elif rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def mrope_axes(cfg: DecoderConfig) -> np.ndarray | None:
    """Which position axis (0 temporal, 1 height, 2 width) rotates each frequency [head_dim // 2]
    under M-RoPE (section i takes axis i % 3, as transformers' ``mrope_section``); None for 1-D
    RoPE."""
    if not cfg.mrope_section:
        return None
    return np.repeat(np.arange(len(cfg.mrope_section)) % 3, cfg.mrope_section)


def apply_rope(x, positions, inv_freq, axes=None):
    """x [B, T, N, H], positions [B, T] (or [B, T, 3] under M-RoPE, ``axes`` from
    ``mrope_axes``) -> x rotated (rotate-half convention)."""
    if positions.ndim == 3:  # each frequency takes its own axis' position
        if axes is None:
            raise ValueError("3-D positions need a decoder with mrope_section")
        freqs = jnp.take(positions, jnp.asarray(axes), axis=-1).astype(jnp.float32) * inv_freq
    else:
        freqs = positions[..., None].astype(jnp.float32) * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def cached_attention(q, keys, values, key_mask):
    """One query a row against a cache: q [B, 1, N, H], keys/values [B, K, S, H] (query head n
    reads kv head n // (N / K)), key_mask bool [B, S] -> [B, 1, N, H]; scores and softmax in
    float32."""
    b, _, n, h = q.shape
    k = keys.shape[1]
    q = q.reshape(b, k, n // k, h)
    scores = jnp.einsum("BKGH,BKSH->BKGS", q, keys, preferred_element_type=jnp.float32)
    scores = jnp.where(key_mask[:, None, None, :], scores * h**-0.5, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    return jnp.einsum("BKGS,BKSH->BKGH", probs, values).reshape(b, 1, n, h)


def _residual(residuals, i, x):
    """What joins the hidden states x [B, T, E] after layer i (an int or traced): residuals[i]
    [B, T, E] (its last T positions: a last-position pass) for i < R, else zeros."""
    r = residuals.shape[0]
    row = jax.lax.dynamic_index_in_dim(residuals, jnp.minimum(i, r - 1), keepdims=False)
    row = row[:, row.shape[1] - x.shape[1] :]
    return jnp.where(i < r, row, 0).astype(x.dtype)


class Attention(nn.Module):
    """Causal GQA self-attention: x [B, T, E] -> (output [B, T, E], aux).

    ``aux``: ``keys`` (after RoPE) and ``values`` of this pass [B, K, T, H] (kv heads first: the
    cache layout, ``Decoder``), and ``heads``, the head feature: each head's attention output
    before ``o_proj`` at the last position, [B, N, H]. It is defined here and nowhere else.

    With ``cfg.qk_norm`` (Qwen3) q and k pass through RMSNorms over head_dim (``q_norm``,
    ``k_norm``: one [head_dim] weight shared by the heads) before RoPE.

    ``cache``: keys and values [B, K, P, H] of the P positions before these, attended to before
    this pass's own. ``slot`` (a generation step, one token): ``cache`` is then the layer's
    preallocated cache [B, K, S, H]; this token's key and value are written at that slot, it
    attends to the slots ``key_mask`` [B, S] lets it see, and ``aux`` holds the updated cache.
    ``key_mask`` [B, P + T]: False for keys no query may see. ``kv_only``: the keys and values
    only (output None, no ``heads``). ``last_only``: attend from the last position only.
    """

    cfg: DecoderConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(
        self, x, positions, cache=None, key_mask=None, slot=None, last_only=False, kv_only=False
    ):
        cfg = self.cfg
        e, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = ("heads", "head_dim") if cfg.attention_bias else None
        kv_bias = ("kv_heads", "head_dim") if cfg.attention_bias else None

        def proj(name, heads, axis, b):
            shape, axes = (e, heads, h), ("embed", axis, "head_dim")
            return Einsum("BTE,ENH->BTNH", shape, axes, b, self.dtype, name=name)

        def norm(name, y):
            if not cfg.qk_norm:
                return y
            return RMSNorm(cfg.rms_norm_eps, axis_name="head_dim", dtype=self.dtype, name=name)(y)

        inv_freq, axes = rope_inv_freq(cfg), mrope_axes(cfg)
        key = norm("k_norm", proj("k_proj", k, "kv_heads", kv_bias)(x))
        key = apply_rope(key, positions, inv_freq, axes)
        value = proj("v_proj", k, "kv_heads", kv_bias)(x)
        if kv_only:
            return None, {"keys": key.swapaxes(1, 2), "values": value.swapaxes(1, 2)}
        q_in, q_pos = (x[:, -1:], positions[:, -1:]) if last_only else (x, positions)
        q = apply_rope(
            norm("q_norm", proj("q_proj", n, "heads", bias)(q_in)), q_pos, inv_freq, axes
        )
        o_shape, o_axes = (n, h, e), ("heads", "head_dim", "embed")
        o = Einsum("BTNH,NHE->BTE", o_shape, o_axes, None, self.dtype, name="o_proj")
        if slot is not None:  # written in place: no copy of the cache a step
            key, value = (
                jax.lax.dynamic_update_slice_in_dim(c, new.swapaxes(1, 2).astype(c.dtype), slot, 2)
                for c, new in zip(cache, (key, value), strict=True)
            )
            out = cached_attention(q, key, value, key_mask)
            return o(out), {"keys": key, "values": value, "heads": out[:, -1]}
        keys, values, impl = key, value, self.attention_impl
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if cache is not None:
            keys = jnp.concatenate([cache[0].swapaxes(1, 2), key], axis=1)
            values = jnp.concatenate([cache[1].swapaxes(1, 2), value], axis=1)
            impl = "chunked"  # queries sit after the cache: only this path offsets the mask
        # The last-query pass sees every key: no mask needed.
        out = attention(q, keys, values, causal=not last_only, impl=impl, mask=mask)
        aux = {"keys": key.swapaxes(1, 2), "values": value.swapaxes(1, 2), "heads": out[:, -1]}
        return o(out), aux


class MLP(nn.Module):
    cfg: DecoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        e, m = self.cfg.hidden_size, self.cfg.intermediate_size
        up_bias = ("mlp",) if self.cfg.mlp_bias else None
        down_bias = ("embed",) if self.cfg.mlp_bias else None
        gate = Einsum(
            "BTE,EM->BTM", (e, m), ("embed", "mlp"), up_bias, self.dtype, name="gate_proj"
        )(x)
        up = Einsum("BTE,EM->BTM", (e, m), ("embed", "mlp"), up_bias, self.dtype, name="up_proj")(x)
        down = Einsum(
            "BTM,ME->BTE", (m, e), ("mlp", "embed"), down_bias, self.dtype, name="down_proj"
        )
        return down(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block: (hidden states [B, T, E], positions) -> (hidden states, aux): ``Attention``'s
    aux and ``hidden``, the layer's output at the last position [B, E] (transformers'
    ``output_hidden_states`` entry after this layer, but for the final norm).

    The options are ``Attention``'s: with ``last_only`` (the deepest layer of a feature pass)
    only the last position runs and comes out; with ``kv_only`` (the deepest layer of a
    prefill) the hidden states pass unchanged and there is no ``hidden``."""

    cfg: DecoderConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    @nn.compact
    def __call__(
        self, x, positions, cache=None, key_mask=None, slot=None, last_only=False, kv_only=False
    ):
        eps = self.cfg.rms_norm_eps
        h = RMSNorm(eps, dtype=self.dtype, name="input_norm")(x)
        attn = Attention(self.cfg, self.dtype, self.attention_impl, name="attn")
        a, aux = attn(h, positions, cache, key_mask, slot, last_only, kv_only)
        if kv_only:
            return x, aux
        x = (x[:, -1:] if last_only else x) + a
        h = RMSNorm(eps, dtype=self.dtype, name="post_attention_norm")(x)
        x = x + MLP(self.cfg, self.dtype, name="mlp")(h)
        return x, {**aux, "hidden": x[:, -1]}


class Decoder(nn.Module):
    """The language model, one method a job: ``features`` (head features, with early exit and
    prefix reuse), ``prefill`` (the key/value cache), ``step`` (one generation step) and
    ``logits``.

    One key/value layout serves every job: per layer, keys and values [B, K, S, H] (kv heads
    first), stacked over layers as [L, B, K, S, H]. ``prefill`` writes it; ``features`` reads it
    as a prefix and ``step`` as a generation cache.

    ``attention_impl``: 'chunked' (query blocks, causal blocks skip unseen keys), 'xla' (one
    XLA softmax over [T, T]) or 'cudnn' (fused flash attention on NVIDIA GPUs, bf16/fp16); see
    ``layers.attention``.

    Parameters: ``embed_tokens``, ``layers`` (every layer's, stacked: ``layers/attn/q_proj/kernel``
    is [num_layers, embed, heads, head_dim], see ``models/stack.py``), ``norm``, ``lm_head``.
    """

    cfg: DecoderConfig
    dtype: Any = jnp.float32
    attention_impl: str = "chunked"

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = self.param(
            "embed_tokens",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            (cfg.vocab_size, cfg.hidden_size),
            self.dtype,
        )
        example = (jnp.zeros((1, 1, cfg.hidden_size), self.dtype), jnp.zeros((1, 1), jnp.int32))
        if cfg.mrope_section and sum(cfg.mrope_section) * 2 != cfg.head_dim:
            raise ValueError(
                f"mrope_section {list(cfg.mrope_section)} must sum to head_dim / 2 = "
                f"{cfg.head_dim // 2}"
            )
        self.layers = self.param(
            stack.LAYERS, stack.stacked(self.block(), cfg.num_layers, *example)
        )
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype=self.dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Einsum(
                "BTE,EV->BTV",
                (cfg.hidden_size, cfg.vocab_size),
                ("embed", "vocab"),
                None,
                self.dtype,
            )

    def block(self) -> DecoderLayer:
        """One layer, unbound: it runs on a slice of ``layers`` (``stack.layer``)."""
        return DecoderLayer(self.cfg, self.dtype, self.attention_impl, parent=None)

    def embed(self, input_ids):
        return jnp.take(self.embed_tokens, input_ids, axis=0)

    def unembed(self, x):
        """Hidden states [B, T, E] after the last layer -> logits [B, T, V] (final norm, then
        ``lm_head`` or the tied embeddings)."""
        x = self.norm(x)
        if self.cfg.tie_word_embeddings:
            return jnp.einsum("BTE,VE->BTV", x, self.embed_tokens)
        return self.lm_head(x)

    def _layers(
        self, x, positions, stop, keep, cache=None, key_mask=None, residuals=None, **deepest
    ):
        """Layers [0, stop) over hidden states x: (x, {name: [stop, ...]}), the ``keep``ed parts
        of each layer's aux stacked by layer. Layers [0, stop - 1) run as one scan; with
        ``deepest`` options (``DecoderLayer``'s), layer stop - 1 runs on its own with them.
        ``residuals`` [R, B, T, E] (or None): added to the hidden states after layers 0 .. R-1
        (DeepStack: vision features joining the first layers at their tokens)."""
        if positions is None:
            start = 0 if cache is None else cache[0].shape[3]
            positions = jnp.broadcast_to(start + jnp.arange(x.shape[1]), x.shape[:2])
        block = self.block()

        def run(params, i, x, **options):
            layer_cache = None if cache is None else stack.layer(cache, i)
            x, aux = block.apply({"params": params}, x, positions, layer_cache, key_mask, **options)
            if residuals is not None:
                x = x + _residual(residuals, i, x)
            return x, {name: aux[name] for name in keep}  # a scan stacks only what leaves it

        x = x.astype(self.dtype)
        if not deepest:
            return stack.scan(run, self.layers, x, 0, stop)
        x, outs = stack.scan(run, self.layers, x, 0, stop - 1)
        x, out = run(stack.layer(self.layers, stop - 1), stop - 1, x, **deepest)
        return x, stack.append(outs, out)

    def features(
        self, embeds, positions=None, depth=None, cache=None, kinds=("heads",), residuals=None
    ):
        """Features at the last position of layers < ``depth`` (static; default all), by kind
        (``kinds``, static): {"heads": each head's output before ``o_proj``, [B, depth, N, H];
        "hidden": each layer's output, [B, depth, E], as transformers'
        ``output_hidden_states[1:]`` (the last layer's after the final norm)}.

        The deepest layer runs the last position only. ``positions`` [B, T] (or [B, T, 3] with
        ``cfg.mrope_section``): each token's rotary position; default consecutive, after the
        cache. ``cache``: a ``prefill``'s keys and values of the positions before these (of
        layers < depth at least). ``residuals``: see ``_layers``."""
        depth = depth or self.cfg.num_layers
        _, out = self._layers(
            embeds, positions, depth, kinds, cache, residuals=residuals, last_only=True
        )
        out = {kind: jnp.swapaxes(out[kind], 0, 1) for kind in kinds}
        if "hidden" in out and depth == self.cfg.num_layers:
            last = self.norm(out["hidden"][:, -1:])
            out["hidden"] = jnp.concatenate([out["hidden"][:, :-1], last], axis=1)
        return out

    def prefill(
        self, embeds, positions=None, depth=None, cache=None, key_mask=None, residuals=None
    ):
        """The key/value cache of embeds [B, T, E]: keys and values of layers < ``depth`` (static;
        default all), each [depth, B, K, T, H]; the deepest layer computes nothing else.
        ``cache``: the keys and values of earlier positions, attended to; ``key_mask`` bool
        [B, P + T]: False for keys no query may see (left padding), as transformers'
        ``attention_mask``. ``residuals``: see ``_layers``."""
        depth = depth or self.cfg.num_layers
        keep = ("keys", "values")
        _, out = self._layers(
            embeds, positions, depth, keep, cache, key_mask, residuals, kv_only=True
        )
        return out["keys"], out["values"]

    def logits(self, embeds, positions=None, key_mask=None, residuals=None):
        """Logits [B, T, V] of embeds [B, T, E] through every layer (``residuals``: see
        ``_layers``)."""
        x, _ = self._layers(embeds, positions, self.cfg.num_layers, (), None, key_mask, residuals)
        return self.unembed(x)

    def step(self, input_ids, positions, layers, caches, slot, key_mask):
        """One generation step: token ids [B, 1] at ``positions`` [B, 1] (or [B, 1, 3]) ->
        (logits [B, V], the caches with its keys and values written at ``slot``).

        ``layers``: each layer's parameters on their own (``stack.unstacked``), ``caches``: each
        layer's (keys, values) [B, K, S, H]; ``key_mask`` [B, S]: the slots it sees, its own
        included. The layers run one after another, not as a scan: a scan's slice of the stacked
        weights is a copy, which for one token costs more than the matmul.
        """
        x = self.embed(input_ids).astype(self.dtype)
        block, out = self.block(), []
        for params, cache in zip(layers, caches, strict=True):
            x, aux = block.apply({"params": params}, x, positions, cache, key_mask, slot)
            out.append((aux["keys"], aux["values"]))
        return self.unembed(x)[:, 0], out
