"""Dynamic Layer Saliency Probing (DLSP): the decoder layer whose hidden state tells anomalous
from normal clips best, HiProbe-VAD's probe (arXiv 2507.17394).

HiProbe-VAD reads one intermediate layer's hidden state at the last prompt position, ``hidden``
float [N, L, E] (N clips, L layers, E the decoder's hidden width), and chooses the layer by three
criteria computed on labelled clips, one value per layer:

- anomaly sensitivity, D_KL(l): the KL divergence of the anomalous clips' distribution from the
  normal clips', both fitted as Gaussians with diagonal covariances (mean mu_c, variance v_c of
  each of the E coordinates, maximum likelihood):
  D_KL(l) = sum_j 0.5 (s_a/s_n - 1 - log(s_a/s_n) + (mu_a - mu_n)^2 / s_n), with
  s_c = v_c + eps * vbar, eps = 1e-6 and vbar = (tr S_a + tr S_n) / (2 E) the layer's mean
  within-class variance;
- linear separability, LDR(l): Fisher's discriminant ratio in trace form, the squared distance
  between the class means over the within-class scatter,
  LDR(l) = |mu_a - mu_n|^2 / (tr S_a + tr S_n), S_c the class's covariance (ddof 0);
- information concentration, H(l): the order-2 Renyi entropy of the spectrum of the clips'
  covariance (all clips, centred at their mean), H(l) = -log sum_i p_i^2 with
  p_i = lambda_i / sum_k lambda_k, i.e. log of the participation ratio
  (tr C)^2 / tr(C^2). Low entropy: the clips' variation is concentrated in few directions.

DLSP's rule (``layer_scores``, ``top_layer``): each criterion min-max scaled over the layers,
score(l) = (KL~(l) + LDR~(l) + 1 - H~(l)) / 3, and l* = argmax_l score(l) (the first layer on a
tie): high sensitivity, high separability and concentrated information.

The paper names these criteria and the rule's ingredients; where it leaves the estimator open,
this module chooses:
- diagonal Gaussians for the KL (a full E x E covariance is singular with fewer clips than
  E = 3584 dimensions), summed over the coordinates, direction KL(anomalous || normal), with a
  variance floor of 1e-6 of the layer's mean within-class variance (scale-free);
- the two-class Fisher ratio with traces (no inverse of a singular scatter matrix), each class's
  covariance weighted equally;
- order 2 for the spectral entropy: -log(|G|_F^2 / tr(G)^2) of the Gram matrix G of the centred
  clips has the same value and needs matmuls only, no eigendecomposition;
- equal weights for the three scaled criteria, entropy entering as 1 - H~.

All layers are scored in one jit-compiled call: the per-layer math is vmapped over a chunk of
layers and ``lax.map`` walks over the chunks, so memory is bounded by the chunk. On a mesh the
layers are split over all devices (``shard_map``). Labels are data: each class is a mask over the
clips, so one compilation serves every labelling of N clips. Value checks (labels 0/1, at least 2
clips of each class, finite hidden states) need concrete arrays: ``check_layer_saliency_inputs``,
which an eager call makes; under tracing they are skipped, and a class of fewer than 2 clips gives
0 for "kl" and "ldr".
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from headhunt_jax.errors import InputError
from headhunt_jax.sharding import check_labels, map_items, place_items

CRITERIA = ("kl", "ldr", "entropy")

_VARIANCE_FLOOR = 1e-6  # of the layer's mean within-class variance, added to every variance
# Working memory of one layer: a few [N, E] float32 arrays and a Gram matrix.
_CHUNK_BYTES = 256 * 2**20
_NE_ARRAYS_PER_LAYER = 4


def _criteria(x, is_anomaly):
    """x [N, E] one layer's hidden states, is_anomaly [N] bool -> [3] (kl, ldr, entropy).

    Each class is a mask (weights 0/1) over the clips; a class of no clip counts as 1
    (finite; "kl" and "ldr" are zeroed when a class has fewer than 2 clips).
    """
    n, dim = x.shape
    # Every criterion is translation invariant; centring keeps the float32 sums accurate.
    x = x - jnp.mean(x, axis=0)
    w_a = is_anomaly.astype(x.dtype)
    w_n = 1.0 - w_a
    n_a = jnp.sum(w_a)
    n_n = n - n_a
    mean_a = w_a @ x / jnp.maximum(n_a, 1.0)
    mean_n = w_n @ x / jnp.maximum(n_n, 1.0)
    var_a = w_a @ (x - mean_a) ** 2 / jnp.maximum(n_a, 1.0)
    var_n = w_n @ (x - mean_n) ** 2 / jnp.maximum(n_n, 1.0)
    d = mean_a - mean_n
    within = jnp.sum(var_a) + jnp.sum(var_n)
    spread = within > 0
    within = jnp.where(spread, within, 1.0)

    floor = _VARIANCE_FLOOR * within / (2 * dim)
    s_a = var_a + floor
    s_n = var_n + floor
    # r - 1 - log r with r = s_a / s_n, as u - log1p(u) with u = r - 1. The two terms cancel
    # where the variances nearly agree; the error that leaves is of the order of what the
    # variances' own float32 rounding already puts in u.
    ratio = (s_a - s_n) / s_n
    kl = 0.5 * jnp.sum(ratio - jnp.log1p(ratio) + d * d / s_n)
    ldr = d @ d / within
    both_classes = jnp.minimum(n_a, n_n) >= 2
    kl = jnp.where(both_classes & spread, kl, 0.0)
    ldr = jnp.where(both_classes & spread, ldr, 0.0)

    # tr C and tr C^2 of the covariance from the smaller of the two Gram matrices (same nonzero
    # spectrum); scaled by the trace first, so that the squares cannot overflow.
    gram = x @ x.T if n <= dim else x.T @ x
    total = jnp.trace(gram)
    rho = gram / jnp.where(total > 0, total, 1.0)
    entropy = jnp.where(total > 0, -jnp.log(jnp.sum(rho * rho)), 0.0)
    return jnp.stack([kl, ldr, entropy])


@functools.partial(jax.jit, static_argnames=("num_layers", "layers_per_chunk", "mesh"))
def _layer_criteria(hidden, is_anomaly, num_layers, layers_per_chunk, mesh):
    """hidden [N, Lp, E] (Lp padded to a multiple of the devices' chunks), split over every axis
    of ``mesh`` along Lp; is_anomaly [N] bool. Returns the dict of [num_layers] criteria."""
    score = jax.vmap(_criteria, in_axes=(1, None))  # [N, layers, E] -> [layers, C]
    raw = map_items(score, hidden, layers_per_chunk, mesh, is_anomaly)
    return dict(zip(CRITERIA, raw[:num_layers].T, strict=True))


def _chunk_size(n, dim, total):
    """Layers per chunk: as many as fit the memory budget, spread evenly over the chunks."""
    per_layer = 4 * (_NE_ARRAYS_PER_LAYER * n * dim + min(n, dim) ** 2)
    most = max(1, _CHUNK_BYTES // per_layer)
    num_chunks = -(-total // most)
    return -(-total // num_chunks)


def _traced(*values) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in values)


def check_layer_saliency_inputs(hidden, labels) -> None:
    """The checks of ``layer_saliency``'s values, which need concrete arrays: labels all 0 or 1,
    at least 2 clips of each class, hidden states finite (as float32). Raises an ``InputError``
    that says which; an eager ``layer_saliency`` call makes them."""
    labels = np.asarray(labels)
    if not np.isin(labels, (0, 1)).all():
        raise InputError("labels must be 0 (normal) or 1 (anomaly)")
    num_anomalies = int(np.sum(labels == 1))
    fewest = min(num_anomalies, labels.size - num_anomalies)
    if fewest < 2:
        raise InputError(
            f"labels hold {num_anomalies} anomalous and {labels.size - num_anomalies} normal "
            "clip(s); layer saliency needs at least 2 of each"
        )
    with np.errstate(over="ignore"):  # values beyond float32's range become inf: refused
        finite = np.isfinite(np.asarray(hidden, np.float32)).all()
    if not finite:
        raise InputError("hidden states contain NaN or inf")


def layer_saliency(hidden, labels, *, layers_per_chunk=None, mesh=None):
    """DLSP's criteria of every layer for telling anomalous from normal clips.

    Traceable: ``jax.jit(layer_saliency)(hidden, labels)`` gives what the eager call gives, with
    hidden, labels or both traced (the class sizes are data: one compilation serves every
    labelling of N clips); ``jax.vmap`` maps it over stacked prompts. ``layers_per_chunk`` and
    ``mesh`` are static. Shapes and dtypes are checked while tracing; values only in an eager
    call (``check_layer_saliency_inputs``): traced labels other than 1 count as normal.

    Args:
      hidden: [N, L, E] hidden states of N clips at the last prompt position (L layers of width
        E), floating point (computed in float32).
      labels: [N] 0/1 (1 = anomaly); at least 2 clips of each class.
      layers_per_chunk: layers scored together on a device (vmapped); by default as many as fit
        in about 256 MiB of working memory. Static.
      mesh: a ``jax.sharding.Mesh`` whose devices split the layers, all of its axes together;
        each device receives only its layers' hidden states. The result is the same as on one
        device. Default: one device. Static.

    Returns:
      dict of [L] float32 arrays: "kl" (KL divergence of the anomalous from the normal clips,
      diagonal Gaussians), "ldr" (Fisher's discriminant ratio, trace form), "entropy" (order-2
      Renyi entropy of the clips' covariance spectrum); see the module docstring for the
      formulas. "kl" and "ldr" are 0 where a class has fewer than 2 clips (traced labels only).
    """
    if not _traced(hidden):
        hidden = np.asarray(hidden)
    if not _traced(labels):
        labels = np.asarray(labels)
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [N, L, E], got shape {hidden.shape}")
    check_labels(labels, hidden.shape[0], "hidden")
    if not jnp.issubdtype(hidden.dtype, jnp.floating):
        raise ValueError(f"hidden must be floating point, got {hidden.dtype}")
    if layers_per_chunk is not None and layers_per_chunk < 1:
        raise ValueError(f"layers_per_chunk must be >= 1, got {layers_per_chunk}")
    if not _traced(hidden, labels):
        check_layer_saliency_inputs(hidden, labels)
    n, num_layers, dim = hidden.shape
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()[:1]), ("layers",))
    chunk = lambda per_device: _chunk_size(n, dim, per_device)  # noqa: E731
    placed, layers_per_chunk = place_items(hidden, mesh, layers_per_chunk, chunk)
    return _layer_criteria(placed, labels == 1, num_layers, layers_per_chunk, mesh)


def _min_max(values):
    """Scale to [0, 1] over the layers (last axis); a constant criterion becomes 0."""
    lo = jnp.min(values, axis=-1, keepdims=True)
    span = jnp.max(values, axis=-1, keepdims=True) - lo
    return (values - lo) / jnp.where(span > 0, span, 1.0)


@jax.jit
def _dlsp(kl, ldr, entropy):
    """The scores [..., L] and the best layer [...] (int32) of criteria [..., L]."""
    scores = (_min_max(kl) + _min_max(ldr) + (1.0 - _min_max(entropy))) / 3.0
    return scores, jnp.argmax(scores, axis=-1).astype(jnp.int32)


def _checked(criteria):
    """The criteria as three float32 arrays [..., L], in CRITERIA's order. Shapes are checked
    always, finiteness only of concrete values."""
    missing = [name for name in CRITERIA if name not in criteria]
    if missing:
        raise ValueError(f"criteria lack {missing}; expected the keys {list(CRITERIA)}")
    values = []
    for name in CRITERIA:
        v = criteria[name]
        if _traced(v):
            v = v.astype(jnp.float32)
        else:
            v = np.asarray(v, np.float32)
            if not np.isfinite(v).all():
                raise InputError(f"criteria[{name!r}] contains NaN or inf")
        values.append(v)
    shapes = {v.shape for v in values}
    if len(shapes) != 1 or values[0].ndim < 1 or values[0].shape[-1] < 1:
        raise ValueError(f"criteria must share one shape [..., L] with L >= 1, got {shapes}")
    return values


def layer_scores(criteria):
    """DLSP's score of every layer: the mean of the min-max scaled "kl", "ldr" and 1 - "entropy".

    Traceable (``jax.jit``, ``jax.vmap``); leading axes are a stack (scaled per row). The shapes
    are checked while tracing; that the criteria are finite only in an eager call.

    Args:
      criteria: ``layer_saliency``'s dict: "kl", "ldr", "entropy", each [..., L].

    Returns:
      [..., L] float32 in [0, 1]; higher is better.
    """
    return _dlsp(*_checked(criteria))[0]


def top_layer(criteria):
    """HiProbe-VAD's chosen layer: the argmax of ``layer_scores`` (the first layer on a tie).

    Traceable like ``layer_scores``.

    Args:
      criteria: ``layer_saliency``'s dict, each value [L] (or [..., L], a stack).

    Returns:
      the 0-based layer index: a Python int from an eager call on [L] criteria, else an int32
      array [...] (under ``jax.jit`` or ``jax.vmap``, or for a stack).
    """
    best = _dlsp(*_checked(criteria))[1]
    return int(best) if best.ndim == 0 and not _traced(best) else best
