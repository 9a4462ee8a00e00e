"""Head features for several prompts over the same frames, computing the shared prefix once.

The prompts come after the frames, so M prompts share the system turn and every frame's tokens.
The vision tower and the decoder run over that prefix once (keeping each layer's keys and values
up to the deepest layer asked for); each prompt then runs only its own suffix against the kept
keys and values. The features equal M full passes.
"""

import functools
from collections.abc import Sequence

import jax
import numpy as np

from headhunt_jax.backbone import Backbone, check_inputs, layer_indices, place_batch
from headhunt_jax.models.decoder import last_position_heads
from headhunt_jax.models.layers import is_head_outputs


def shared_prefix_length(prompt_ids: Sequence[np.ndarray], image_token_id: int | None) -> int:
    """Length of the token prefix common to every prompt (and every row), leaving each prompt at
    least one token of its own; it must hold all the image tokens."""
    n = min(ids.shape[1] for ids in prompt_ids) - 1
    reference = prompt_ids[0][0, :n]
    for ids in prompt_ids:
        same = (ids[:, :n] == reference[:n]).all(axis=0)
        n = n if same.all() else int(np.argmin(same))
    if image_token_id is not None:
        for ids in prompt_ids:
            if (ids[:, n:] == image_token_id).any():
                raise ValueError(
                    "the prompts differ before the last image token: no shared frame prefix"
                )
    return n


@functools.partial(jax.jit, static_argnames=("model", "layers", "prefix"))
def _prompt_features(model, params, prompt_ids, pixel_values, layers, prefix):
    depth = max(layers) + 1
    variables = {"params": params}
    cache = model.apply(
        variables, prompt_ids[0][:, :prefix], pixel_values, depth=depth, kv_only=True
    )
    out = []
    for ids in prompt_ids:
        _, state = model.apply(
            variables,
            ids[:, prefix:],
            None,
            depth=depth,
            prefix_kv=cache,
            capture_intermediates=is_head_outputs,
            mutable=["intermediates"],
        )
        out.append(last_position_heads(state["intermediates"], layers))
    return jax.numpy.stack(out)


def head_features_prompts(bb: Backbone, prompt_ids: Sequence, pixel_values=None, layers=None):
    """``head_features`` for M prompts over the same images, sharing their common prefix.

    prompt_ids: M arrays [B, T_m] (same batch, any lengths); pixel_values as for
    ``head_features``. Returns float32 [M, B, len(layers), heads, head_dim].
    """
    prompt_ids = tuple(np.asarray(ids, np.int32) for ids in prompt_ids)
    if len(prompt_ids) < 1 or len({ids.shape[0] for ids in prompt_ids}) != 1:
        raise ValueError("prompt_ids must be one or more [B, T] arrays with the same B")
    for ids in prompt_ids:
        check_inputs(bb, ids, pixel_values)
    image_token = getattr(bb.config, "image_token_id", None)
    prefix = shared_prefix_length(prompt_ids, image_token)
    ids, pixels = place_batch(bb, prompt_ids, pixel_values)
    batch = prompt_ids[0].shape[0]
    out = _prompt_features(
        bb.model, bb.params, tuple(ids), pixels, layer_indices(bb, layers), prefix
    )
    return out[:, :batch]
