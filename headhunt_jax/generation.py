"""Greedy decoding with a KV cache, for every backbone family: what ``detect --explain`` asks the
frozen MLLM about an event.

One prefill runs the prompt (and its vision inputs) through every layer and keeps each layer's
keys and values in a cache preallocated for the answer; then one compiled step a token runs in a
``lax.while_loop`` on the device: the new token's keys and values are written into the cache in
place and its query attends to the filled slots (a mask hides the empty ones and left padding).
Nothing is retraced per token and the cache never grows. The tokens equal transformers'
``generate(do_sample=False)``: positions count the real tokens of each row (left padding skipped)
and each new token takes the next one; a row that has produced EOS is padded.

A prompt's first tokens can be computed once and shared (``prefill`` -> ``Prefix``): e.g. a
segment's frames, then several questions about them.
"""

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax import files
from headhunt_jax.backbone import Backbone
from headhunt_jax.errors import InputError
from headhunt_jax.features import check_inputs, check_length, prepare_inputs, vision_inputs
from headhunt_jax.models import stack

CACHE_BLOCK = 64  # cache lengths are rounded up to a multiple: fewer compilations


@dataclasses.dataclass(frozen=True)
class Prefix:
    """Every layer's keys and values of the first P tokens of B prompts (``prefill``).

    ``keys``/``values`` [num_layers, B, K, P, H] (the decoder's cache layout); ``next_positions`` [B] (or [B, 3] under
    M-RoPE): the rotary position of the token after the prefix."""

    keys: jax.Array
    values: jax.Array
    next_positions: np.ndarray

    @property
    def length(self) -> int:
        return int(self.keys.shape[3])

    @property
    def batch(self) -> int:
        return int(self.keys.shape[1])

    def positions_after(self, length: int) -> np.ndarray:
        """The rotary positions of ``length`` text tokens after the prefix, int32 [B, length]
        (or [B, length, 3])."""
        start = np.asarray(self.next_positions)
        offsets = np.arange(length, dtype=np.int32)
        offsets = offsets[None, :, None] if start.ndim == 2 else offsets[None, :]
        return (start[:, None] + offsets).astype(np.int32)

    def rows(self, index) -> "Prefix":
        """The prefix of some of its prompts (``index``: a slice or indices)."""
        return Prefix(self.keys[:, index], self.values[:, index], self.next_positions[index])


@dataclasses.dataclass(frozen=True)
class Generation:
    """``tokens`` int32 [B, max_new_tokens], padded with ``pad_token_id`` after EOS;
    ``lengths`` [B]: each row's new tokens up to and including its EOS; ``text``: the decoded
    answers (without EOS), when a tokenizer was given."""

    tokens: np.ndarray
    lengths: np.ndarray
    text: list[str] | None = None


def eos_ids(bb: Backbone) -> tuple[int, ...]:
    """The checkpoint's end-of-sequence ids: ``generation_config.json``'s, else ``config.json``'s
    (its text config's); empty when neither says."""
    for name in ("generation_config.json", "config.json"):
        file = None if bb.path is None else Path(bb.path) / name
        if file is None or not file.exists():
            continue
        cfg = files.read_json(file, "a generation config")
        eos = cfg.get("eos_token_id", (cfg.get("text_config") or {}).get("eos_token_id"))
        if eos is not None:
            return tuple(int(e) for e in np.atleast_1d(eos))
    return ()


def _eos(bb, eos_token_id) -> tuple[int, ...]:
    if eos_token_id is None:
        return eos_ids(bb)
    return tuple(int(e) for e in np.atleast_1d(eos_token_id))


def _positions(bb: Backbone, ids: np.ndarray, mask: np.ndarray, vision: dict):
    """(the module's vision inputs, each token's rotary positions [B, T] or [B, T, 3]), left
    padding skipped (``features.prepare_inputs``)."""
    vision, (positions,) = prepare_inputs(bb, [ids], vision, attention_mask=mask)
    return vision, np.asarray(positions, np.int32)


def _next_positions(positions: np.ndarray) -> np.ndarray:
    """The position after each row's last token, [B] (or [B, 3]): the last one + 1 (a prompt's
    last token is text, so its three M-RoPE axes agree)."""
    return positions[:, -1] + 1


def _check(bb: Backbone, input_ids, vision: dict, mask) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids)
    check_inputs(bb, ids, vision)
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"input_ids must be integers, got {ids.dtype}")
    mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask) != 0
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask {mask.shape} must have input_ids' shape {ids.shape}")
    if not mask[:, -1].all():
        raise InputError("attention_mask: rows must be left-padded (each row's last token real)")
    if bb.config.vision_token_ids and np.isin(ids[:, -1], bb.config.vision_token_ids).any():
        raise InputError("a prompt must end with a text token, not a vision placeholder")
    return ids.astype(np.int32), mask


def _on_device(*arrays):
    """The inputs as device arrays. On a sharded backbone they are replicated: every data
    replica decodes the same (small) batch against the parameters split over 'model'."""
    return tuple(jax.tree.map(jnp.asarray, a) for a in arrays)


@functools.partial(jax.jit, static_argnames=("model",))
def _prefill(model, params, ids, vision, positions, key_mask, cache):
    """Every layer's keys and values of ids [B, T], [L, B, K, T, H] each (after ``cache``)."""
    variables = {"params": params}
    return model.apply(variables, ids, None, positions, cache, key_mask, method="prefill", **vision)


def prefill(bb: Backbone, input_ids, pixel_values=None, **inputs) -> Prefix:
    """Runs the first tokens of B prompts (unpadded, [B, P], holding every vision placeholder
    and ending with text) through every layer: their keys and values for ``generate(prefix=)``.
    ``inputs``: the vision inputs as for ``head_features``."""
    vision = vision_inputs(pixel_values, **inputs)
    ids, mask = _check(bb, input_ids, vision, None)
    vision, positions = _positions(bb, ids, mask, vision)
    ids_, vision_, positions_, mask_ = _on_device(ids, vision, positions, mask)
    keys, values = _prefill(bb.model, bb.params, ids_, vision_, positions_, mask_, None)
    return Prefix(keys, values, _next_positions(positions))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _decode(model, params, token, kv, key_mask, filled, positions, eos, pad, max_new_tokens):
    """Greedy tokens [B, max_new_tokens] and each row's count, from each prompt's last token
    [B] at ``positions`` [B] (or [B, 3]) and every layer's keys and values of the tokens before
    it ([L, B, K, S, H] each: the cache's S slots, the first ``filled`` in use).

    The layers' weights are split once, before the loop (``Decoder.step``), and each layer's
    cache is a buffer of its own that the loop updates in place."""
    b = key_mask.shape[0]
    layers = stack.unstacked(params["language_model"][stack.LAYERS], kv[0].shape[0])
    caches = [tuple(layer) for layer in zip(*kv, strict=True)]

    def pick(logits, done):
        token = jnp.argmax(logits.astype(jnp.float32), axis=-1).astype(jnp.int32)
        return jnp.where(done, pad, token), done | jnp.isin(token, eos) & ~done

    def cond(state):
        i, _, done, *_ = state
        return (i < max_new_tokens) & ~done.all()

    def body(state):
        i, token, done, out, lengths, caches, slots = state
        slot = filled + i  # where this token's keys and values go
        slots = jax.lax.dynamic_update_slice_in_dim(slots, jnp.ones((b, 1), bool), slot, axis=1)
        logits, caches = model.apply(
            {"params": params},
            token[:, None],
            (positions + i)[:, None],
            layers,
            caches,
            slot,
            slots,
            method="step",
        )
        token, now_done = pick(logits, done)
        lengths = lengths + (~done).astype(jnp.int32)
        out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], i, axis=1)
        return i + 1, token, now_done, out, lengths, caches, slots

    out = jnp.full((b, max_new_tokens), pad, jnp.int32)
    done, lengths = jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32)
    state = (jnp.int32(0), token, done, out, lengths, caches, key_mask)
    _, _, _, out, lengths, _, _ = jax.lax.while_loop(cond, body, state)
    return out, lengths


def generate(
    bb: Backbone,
    input_ids,
    max_new_tokens: int,
    pixel_values=None,
    *,
    eos_token_id=None,
    pad_token_id: int | None = None,
    attention_mask=None,
    prefix: Prefix | None = None,
    tokenizer=None,
    **inputs,
) -> Generation:
    """Greedy decoding: the ``max_new_tokens`` tokens after each of B prompts, equal to
    transformers' ``generate(do_sample=False)``.

    input_ids [B, T]: prompts of different lengths left-padded, with ``attention_mask`` (1 for
    tokens, 0 for padding; default all tokens). The vision inputs (``pixel_values``, ...) as for
    ``head_features``. ``eos_token_id``: an id or ids that end a row (default: the checkpoint's,
    ``eos_ids``); decoding stops when every row has ended. ``pad_token_id`` fills the tokens after
    a row's EOS (default: its first EOS id, else 0). ``prefix``: the keys and values of tokens
    that come before ``input_ids`` (``prefill``; then input_ids are text, unpadded, and take the
    vision inputs' place). ``tokenizer`` (a ``tokenizers.Tokenizer``): also decode the answers.
    """
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)
    eos = _eos(bb, eos_token_id)
    pad = int(pad_token_id if pad_token_id is not None else (eos[0] if eos else 0))
    vision = vision_inputs(pixel_values, **inputs)
    if prefix is not None and vision:
        raise InputError("with a prefix, the vision inputs are in it: pass input_ids only")
    ids, mask = _check(bb, input_ids, vision, attention_mask)
    if prefix is None:
        vision, positions = _positions(bb, ids, mask, vision)
        cache, key_mask, length = None, mask, ids.shape[1]
    else:
        if not mask.all():
            raise InputError("with a prefix, the prompts after it are not padded")
        if prefix.batch != len(ids):
            raise InputError(f"the prefix holds {prefix.batch} prompts, input_ids {len(ids)}")
        positions = prefix.positions_after(ids.shape[1])
        cache = (prefix.keys, prefix.values)
        key_mask = np.concatenate([np.ones((len(ids), prefix.length), bool), mask], axis=1)
        length = prefix.length + ids.shape[1]
    check_length(bb, length + max_new_tokens)
    cache_length = -(-(length + max_new_tokens) // CACHE_BLOCK) * CACHE_BLOCK
    ids_, vision_, positions_, key_mask_ = _on_device(ids, vision, positions, key_mask)
    # Every prompt token but the last into the cache; the decoding loop starts from the last.
    filled = length - 1
    kv = cache
    if ids.shape[1] > 1:
        kv = _prefill(
            bb.model,
            bb.params,
            ids_[:, :-1],
            vision_,
            positions_[:, :-1],
            key_mask_[:, :filled],
            cache,
        )
        if cache is not None:
            kv = tuple(jnp.concatenate([c, x], axis=3) for c, x in zip(cache, kv, strict=True))
    elif kv is None:  # a one-token prompt: an empty cache
        t = bb.text_config
        shape = (t.num_layers, len(ids), t.num_kv_heads, 0, t.head_dim)
        kv = (jnp.zeros(shape, bb.dtype), jnp.zeros(shape, bb.dtype))
    # Padded to the cache's length here, outside the loop's compilation: it compiles once per
    # cache length (a multiple of CACHE_BLOCK), not once per prompt length.
    kv = tuple(jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, cache_length - filled), (0, 0))) for x in kv)
    key_mask_ = jnp.pad(key_mask_, ((0, 0), (0, cache_length - length)))
    tokens, lengths = _decode(
        bb.model,
        bb.params,
        ids_[:, -1],
        kv,
        key_mask_,
        jnp.int32(filled),
        positions_[:, -1],
        jnp.asarray(eos if eos else (-1,), jnp.int32),
        pad,
        max_new_tokens,
    )
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    text = None if tokenizer is None else decode(tokenizer, tokens, lengths, eos)
    return Generation(tokens, lengths, text)


def decode(tokenizer, tokens, lengths, eos: Sequence[int] = ()) -> list[str]:
    """Each row's answer as text: its first ``lengths`` tokens, EOS left out."""
    out = []
    for row, n in zip(np.asarray(tokens), np.asarray(lengths), strict=True):
        kept = [int(t) for t in row[:n] if int(t) not in eos]
        out.append(tokenizer.decode(kept, skip_special_tokens=True))
    return out
