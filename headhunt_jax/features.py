"""The forward API of a loaded backbone: per-head features and hidden states (one prompt, or
several over the same frames sharing their prefix) and logits.

A head feature is each attention head's output before ``o_proj`` at the last position of a
prompt (``models.decoder.Attention``). Everything here checks its inputs, prepares a family's
data-dependent inputs on the host (``prepare``), places them on the backbone's devices and runs
one compiled function, ``forward``.

Several prompts over the same frames share the system turn and every frame's tokens: the vision
tower and the decoder run over that prefix once (``Decoder.prefill``, keeping each layer's keys
and values up to the deepest layer asked for), then each prompt runs only its own suffix against
them. The features equal M full passes.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax import sharding
from headhunt_jax.backbone import Backbone
from headhunt_jax.errors import InputError

# What a forward pass gives at the last position (``Decoder.features``): each head's attention
# output before ``o_proj`` (HeadHunt-VAD) and each layer's hidden state (HiProbe-VAD).
KINDS = ("heads", "hidden")


def layer_indices(bb: Backbone, layers) -> tuple[int, ...]:
    """The layers asked for as a tuple (all when None); out-of-range indices are an error."""
    n = bb.num_layers
    if layers is None:
        return tuple(range(n))
    layers = tuple(int(i) for i in np.atleast_1d(layers))
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers:
        raise ValueError(f"layers must be non-empty indices in [0, {n}), got {list(layers)}")
    return layers


@functools.partial(jax.jit, static_argnames=("model", "layers", "prefix", "kinds"))
def forward(
    model, params, prompt_ids, vision_inputs, layers, prefix=None, positions=None, kinds=KINDS[:1]
):
    """The one forward path: features at the last position of each of M prompts' ids [B, T_m],
    {kind: [M, B, len(layers), ...]} float32 for each of ``kinds`` ("heads": [.., N, H],
    "hidden": [.., E]; ``Decoder.features``). ``prefix`` None: one pass over each prompt (M = 1) with the
    vision inputs; else the first ``prefix`` tokens (the same in every prompt, holding every
    vision placeholder) run once with the vision inputs, keeping each layer's keys and values up
    to the deepest layer asked for, and each prompt's remaining tokens run against them.
    ``positions``: each prompt's rotary positions [B, T_m(, 3)] (a family's ``prepare``), or None
    for consecutive ones."""
    depth = max(layers) + 1
    variables = {"params": params}
    positions = (None,) * len(prompt_ids) if positions is None else positions
    cache, vision = None, vision_inputs
    if prefix is not None:
        head = prompt_ids[0][:, :prefix]
        first = None if positions[0] is None else positions[0][:, :prefix]
        cache = model.apply(variables, head, depth, first, method="prefill", **vision_inputs)
        prompt_ids, vision = tuple(ids[:, prefix:] for ids in prompt_ids), {}
        positions = tuple(None if p is None else p[:, prefix:] for p in positions)
    return _after(model, variables, prompt_ids, cache, positions, layers, vision, kinds)


def _after(model, variables, prompt_ids, cache, positions, layers, vision, kinds):
    """{kind: [M, B, len(layers), ...]}: each prompt's ids run against a prefix's keys and values
    (``cache``, layers < the deepest asked for; None: no prefix) at its positions."""
    depth = max(layers) + 1
    out = {kind: [] for kind in kinds}
    for ids, pos in zip(prompt_ids, positions, strict=True):
        got = model.apply(variables, ids, depth, pos, cache, kinds, method="features", **vision)
        for kind in kinds:
            out[kind].append(got[kind][:, list(layers)].astype(jnp.float32))
    return {kind: jnp.stack(parts) for kind, parts in out.items()}


@functools.partial(jax.jit, static_argnames=("model", "layers", "kinds"))
def heads_after_prefix(model, params, ids, keys, values, positions, layers, kinds=KINDS[:1]):
    """``forward``'s per-prompt pass for ids [B, T] after a prefix whose keys and values of
    every layer were computed already (``generation.prefill``): [B, len(layers), N, H]; with
    ``kinds`` (static) other than ("heads",), {kind: [B, len(layers), ...]}."""
    variables, cache = {"params": params}, (keys, values)
    out = _after(model, variables, (ids,), cache, (positions,), layers, {}, kinds)
    if kinds == KINDS[:1]:
        return out["heads"][0]
    return {kind: value[0] for kind, value in out.items()}


def vision_inputs(pixel_values=None, **inputs) -> dict:
    """The vision keyword inputs that are given (None ones dropped)."""
    return {k: v for k, v in {"pixel_values": pixel_values, **inputs}.items() if v is not None}


def _traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_inputs(bb: Backbone, input_ids, vision: dict) -> None:
    """Raises a clear ValueError when input_ids and the vision inputs do not fit together. While
    tracing, the shapes are checked; the family's checks of values (placeholder counts) need
    concrete inputs and run on eager calls. A family that lays out its inputs on the host
    (``prepare``) needs input_ids and its other inputs concrete, its ``traceable_inputs`` (the
    pixels) may be traced: its checks then run on the concrete ones."""
    if np.ndim(input_ids) != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {np.shape(input_ids)}")
    check_length(bb, np.shape(input_ids)[1])
    if bb.family.prepare is None and _traced(input_ids, *vision.values()):
        return
    if bb.family.prepare is not None:
        host = {"input_ids": input_ids}
        host.update({k: v for k, v in vision.items() if k not in bb.family.traceable_inputs})
        traced = [name for name, value in host.items() if _traced(value)]
        if traced:
            raise ValueError(
                f"{bb.name}: this family lays out its inputs and positions on the host "
                f"(prepare), so {', '.join(traced)} must be concrete arrays, not traced (only "
                f"{', '.join(bb.family.traceable_inputs) or 'none'} may be)"
            )
    bb.family.check_inputs(bb.config, input_ids, vision)


def check_length(bb: Backbone, tokens: int) -> None:
    """Refuses sequences longer than the positions the decoder's numbers hold for
    (``DecoderConfig.max_positions``: past them dynamic rope scaling would change them)."""
    limit = bb.text_config.max_positions
    if limit and tokens > limit:
        raise ValueError(
            f"{tokens} tokens: {bb.name} computes the numbers of its checkpoint up to {limit} "
            "positions (past them its dynamic rope scaling changes them, which is not supported)"
        )


def prepare_inputs(bb: Backbone, prompt_ids, vision: dict, attention_mask=None):
    """The checked HF keyword inputs -> (the module's vision inputs, each prompt's positions or
    None), by the family's ``prepare`` (on the host). ``attention_mask`` (one prompt, left
    padding 0): positions skip the padding; a family without ``prepare`` then counts the real
    tokens, as transformers does."""
    if bb.family.prepare is not None:
        ids = [np.asarray(i) for i in prompt_ids]
        if attention_mask is None:
            return bb.family.prepare(bb.config, ids, vision)
        return bb.family.prepare(bb.config, ids, vision, attention_mask=attention_mask)
    if attention_mask is None:
        return vision, None
    mask = np.asarray(attention_mask) != 0
    return vision, [np.where(mask, np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)]


def head_features(bb: Backbone, input_ids, pixel_values=None, layers=None, **inputs):
    """Every head's attention output before ``o_proj``, at the last position of each sequence.

    input_ids [B, T] int; the vision inputs under the HF model's own keyword names, as arrays
    (``pixel_values`` [num_images, 3, H, W] for InternVL; ``pixel_values_videos``, ... for other
    families), or none for text. Returns float32 [B, len(layers), heads, head_dim]; layers
    (static) default to all. The forward stops at the deepest layer asked for. Compiled once per
    shape and layer set. Traceable (``jax.jit``, ``jax.vmap``, ``jax.grad`` with respect to the
    pixels or ``bb.params``) for families without a host-side ``prepare``.

    On a sharded backbone (``bb.mesh``) the samples and each vision input are split over the
    mesh's 'data' axis, each padded with zeros to a multiple of its size: padding comes after
    every real sample and image in reading order, so no real sample sees it, and its rows are
    dropped. The mesh must be this process's devices; several processes each extract their own
    videos.
    """
    vision = vision_inputs(pixel_values, **inputs)
    return features_one_prompt(bb, input_ids, vision, layers, ("heads",))["heads"]


def hidden_features(bb: Backbone, input_ids, pixel_values=None, layers=None, **inputs):
    """Each decoder layer's hidden state at the last position of each sequence (HiProbe-VAD's
    features): float32 [B, len(layers), hidden], as transformers' ``output_hidden_states[1:]``
    (entry l + 1 after layer l; the last layer's after the final norm).

    Inputs, ``layers`` (static), early exit, sharding and traceability as ``head_features``."""
    vision = vision_inputs(pixel_values, **inputs)
    return features_one_prompt(bb, input_ids, vision, layers, ("hidden",))["hidden"]


def features_one_prompt(bb: Backbone, input_ids, vision: dict, layers, kinds=KINDS[:1]) -> dict:
    """One prompt's features of each of ``kinds`` in one pass: {kind: float32 [B,
    len(layers), ...]} (``head_features``, ``hidden_features``)."""
    check_inputs(bb, input_ids, vision)
    vision, positions = prepare_inputs(bb, [input_ids], vision)
    (ids,), placed, positions = place_batch(bb, [input_ids], vision, positions)
    layer_set = layer_indices(bb, layers)
    out = forward(bb.model, bb.params, (ids,), placed, layer_set, None, positions, tuple(kinds))
    return {kind: value[0, : len(input_ids)] for kind, value in out.items()}


def shared_prefix_length(prompt_ids: Sequence[np.ndarray], vision_token_ids=()) -> int:
    """Length of the token prefix common to every prompt (and every row), leaving each prompt at
    least one token of its own; it must hold every vision placeholder token."""
    n = min(ids.shape[1] for ids in prompt_ids) - 1
    reference = prompt_ids[0][0, :n]
    for ids in prompt_ids:
        same = (ids[:, :n] == reference[:n]).all(axis=0)
        n = n if same.all() else int(np.argmin(same))
    if isinstance(vision_token_ids, int):
        vision_token_ids = (vision_token_ids,)
    for ids in prompt_ids:
        if np.isin(ids[:, n:], vision_token_ids).any():
            raise ValueError(
                "the prompts differ before the last image token: no shared frame prefix"
            )
    return n


def head_features_prompts(
    bb: Backbone, prompt_ids: Sequence, pixel_values=None, layers=None, **inputs
):
    """``head_features`` for M prompts over the same vision inputs, sharing their common prefix.

    prompt_ids: M arrays [B, T_m] (same batch, any lengths); the vision inputs as for
    ``head_features``. Returns float32 [M, B, len(layers), heads, head_dim].
    """
    return features_prompts(bb, prompt_ids, pixel_values, layers, **inputs)["heads"]


def features_prompts(
    bb: Backbone, prompt_ids: Sequence, pixel_values=None, layers=None, kinds=KINDS[:1], **inputs
):
    """``head_features_prompts`` for any of ``KINDS`` at once (``kinds``, static): {kind:
    float32 [M, B, len(layers), ...]} (heads: [.., heads, head_dim]; hidden: [.., hidden])."""
    prompt_ids = tuple(np.asarray(ids, np.int32) for ids in prompt_ids)
    if len(prompt_ids) < 1 or len({ids.shape[0] for ids in prompt_ids}) != 1:
        raise ValueError("prompt_ids must be one or more [B, T] arrays with the same B")
    vision = vision_inputs(pixel_values, **inputs)
    for ids in prompt_ids:
        check_inputs(bb, ids, vision)
    prefix = shared_prefix_length(prompt_ids, bb.config.vision_token_ids)
    vision, positions = prepare_inputs(bb, prompt_ids, vision)
    ids, placed, positions = place_batch(bb, prompt_ids, vision, positions)
    batch = prompt_ids[0].shape[0]
    layer_set = layer_indices(bb, layers)
    out = forward(bb.model, bb.params, ids, placed, layer_set, prefix, positions, tuple(kinds))
    return {kind: value[:, :batch] for kind, value in out.items()}


def place_batch(bb: Backbone, ids_list, vision: dict, positions=None):
    """input_ids arrays, vision inputs and positions (one a prompt, or None) on the backbone's
    devices: split over the mesh's 'data' axis (each padded with zeros to a multiple of its size)
    when it has a mesh. Returns (tuple of ids, dict of vision inputs; empty ones dropped,
    tuple of positions or None)."""
    if bb.mesh is not None and bb.mesh.is_multi_process:
        raise ValueError(
            "head features need a mesh of this process's own devices (make_mesh() without "
            "devices); with several processes, each extracts its own share of the videos"
        )
    traced = _traced(*ids_list, *vision.values())
    if bb.mesh is None or traced:  # under the user's jit, the placement is jit's
        place = jnp.asarray
    else:
        place = functools.partial(sharding.shard_batch, bb.mesh)
    ids = tuple(
        place(jnp.asarray(i, jnp.int32) if traced else np.asarray(i, np.int32)) for i in ids_list
    )
    placed = {k: place(v) for k, v in vision.items() if np.shape(v)[0] > 0}
    return ids, placed, None if positions is None else tuple(place(p) for p in positions)


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model, params, input_ids, vision, positions):
    return model.apply({"params": params}, input_ids, positions, method="logits", **vision)


def logits(bb: Backbone, input_ids, pixel_values=None, **inputs):
    """Full-model logits [B, T, vocab] (for checking the port; detection never needs them)."""
    vision = vision_inputs(pixel_values, **inputs)
    check_inputs(bb, input_ids, vision)
    vision, positions = prepare_inputs(bb, [input_ids], vision)
    placed = {k: jnp.asarray(v) for k, v in vision.items()}
    positions = None if positions is None else jnp.asarray(positions[0])
    return _logits(bb.model, bb.params, jnp.asarray(input_ids, jnp.int32), placed, positions)


def check_heads(heads, shape: tuple[int, int] | None = None, where: str = "") -> np.ndarray:
    """Expert heads as int32 [K, 2] of distinct (layer, head) pairs, else an InputError (a ValueError); with
    ``shape`` = (layers, heads per layer), also one for a pair outside it (``where`` names what
    it must fit, e.g. "the backbone")."""
    pairs = np.asarray(heads)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise InputError(f"heads must be (layer, head) pairs [K, 2], got shape {pairs.shape}")
    if not np.issubdtype(pairs.dtype, np.integer) or (pairs < 0).any():
        raise InputError(f"heads must be non-negative integers, got {pairs.tolist()}")
    listed = [(int(layer), int(head)) for layer, head in pairs]
    if shape is not None:
        bad = [p for p in listed if p[0] >= shape[0] or p[1] >= shape[1]]
        if bad:
            raise InputError(
                f"heads {bad} are not in {where or 'the features'} "
                f"({shape[0]} layers x {shape[1]} heads)"
            )
    if len(set(listed)) != len(listed):
        raise InputError(f"heads must be distinct, got {listed}")
    return pairs.astype(np.int32)


def gather_heads(features, heads, layers=None):
    """The expert heads' features, in the order of ``heads``: [..., L', H, D] -> [..., K, D].

    ``heads``: int [K, 2] of (layer, head); ``layers``: the layers that the features' axis -3
    holds, in order (default: 0 .. L'-1, every layer). The one place heads are picked from
    features (extraction, stores, scoring). A numpy array gives a numpy array; a JAX array
    (or a tracer: traceable, ``heads`` and ``layers`` static) a JAX array."""
    if not hasattr(features, "shape"):
        features = np.asarray(features)
    layers = tuple(range(features.shape[-3])) if layers is None else tuple(map(int, layers))
    row = {layer: i for i, layer in enumerate(layers)}
    heads = check_heads(heads)
    absent = sorted({int(layer) for layer in heads[:, 0]} - set(row))
    if absent or heads[:, 1].max() >= features.shape[-2]:
        raise ValueError(
            f"heads {heads.tolist()} are not all in features of layers {list(layers)} x "
            f"{features.shape[-2]} heads"
        )
    return features[..., [row[int(layer)] for layer in heads[:, 0]], heads[:, 1], :]
