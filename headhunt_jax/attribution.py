"""Spatial attribution: where in each frame the expert heads' evidence comes from.

The gradient of the detector's logit (or of the chosen heads' features) with respect to the
frames' pixels, through the whole backbone (vision tower, projector, decoder up to the deepest
expert layer), reduced to one heatmap a frame. It answers "where in the frame", beside the
events' "when". Built on the traceable ``head_features``: one ``jax.grad``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from headhunt_jax.backbone import Backbone
from headhunt_jax.features import check_heads, head_features
from headhunt_jax.scorer import Scorer, _logits


def head_attribution(bb: Backbone, input_ids, pixel_values, heads, weights=None, **vision):
    """Heatmaps float32 [num_images, H, W]: |d objective / d pixel_values| summed over the colour
    channels, for pixel_values [num_images, 3, H, W] (every frame of every sample).

    heads: int [K, 2] (layer, head), static; their features at each sample's last position,
    concatenated in this order, are the experts' [B, K * head_dim]. The objective, summed over
    the B samples (a frame belongs to one sample, so each heatmap is its own sample's):
    ``weights`` None: half the experts' squared norm; a vector [K * head_dim] (a linear
    scorer's ``w``): their dot product, the scorer's logit but for its bias; a ``Scorer``: its
    logit (the MLP's too). ``vision``: the family's other keyword inputs. Traceable as
    ``head_features`` is (not for Qwen2.5-VL).
    """
    heads = check_heads(heads)
    layers = tuple(sorted({int(layer) for layer in heads[:, 0]}))
    rows = np.asarray([layers.index(int(layer)) for layer in heads[:, 0]])
    batch = np.shape(input_ids)[0]

    def objective(pixels):
        features = head_features(bb, input_ids, pixels, layers=layers, **vision)
        experts = features[:, rows, heads[:, 1]].reshape(batch, -1)
        if weights is None:
            return 0.5 * jnp.sum(experts**2)
        if isinstance(weights, Scorer):
            return jnp.sum(_logits(weights, experts))
        return jnp.sum(experts @ jnp.asarray(weights, jnp.float32))

    grad = jax.grad(objective)(jnp.asarray(pixel_values, jnp.float32))
    return jnp.abs(grad).sum(axis=1)
