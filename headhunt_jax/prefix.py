"""Head features for several prompts over the same frames, computing the shared prefix once.

The prompts come after the frames, so M prompts share the system turn and every frame's tokens.
The vision tower and the decoder run over that prefix once (keeping each layer's keys and values
up to the deepest layer asked for); each prompt then runs only its own suffix against the kept
keys and values. The features equal M full passes.
"""

from collections.abc import Sequence

import numpy as np

from headhunt_jax.backbone import (
    Backbone,
    check_inputs,
    forward,
    layer_indices,
    place_batch,
    prepare_inputs,
    vision_inputs,
)


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
    out = forward(bb.model, bb.params, ids, placed, layer_set, prefix, positions)
    return out[:, :batch]
