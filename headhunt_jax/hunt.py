"""Robust head identification: per-head saliency, robust saliency over prompts, expert selection.

Every attention head is scored by how well its feature vector separates anomalous from normal
clips, with each criterion of ``criteria.REGISTRY`` (HeadHunt-VAD's four: Fisher/LDA, symmetric
Gaussian KL, MMD^2, NMI of a 2-means clustering). All heads are scored in one jit-compiled call:
the per-head math is vmapped over a chunk of heads and `lax.map` walks over the chunks, so memory
is bounded by the chunk, not by the number of heads. On a mesh the heads are split over all
devices (`shard_map`), each device holding only its heads' features. Each criterion is min-max
scaled over all heads, and their mean is the head's combined saliency.

``saliency``, ``robust_saliency`` and ``top_k_heads`` are traceable (``jax.jit``, ``jax.vmap``, and
``jax.grad`` of ``robust_saliency``): labels are data, so the class sizes are traced values and
each class is a mask (weights) over the clips, never a slice. The clips are still sorted anomalies
first (a traced argsort), which keeps them in the original's order. Checks of values (labels in
{0, 1}, both classes, finite numbers) need concrete arrays: ``check_saliency_inputs`` and
``check_finite``, which the pipeline calls at its edge and an eager call makes itself; under
tracing they are skipped.
"""

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

# CRITERIA, the order of saliency's raw results, is read from here as well.
from headhunt_jax.criteria import CRITERIA as CRITERIA
from headhunt_jax.criteria import REGISTRY, score_heads
from headhunt_jax.errors import InputError
from headhunt_jax.sharding import check_labels, map_items, place_items

# Working memory of one head is a handful of [N, N] float32 arrays.
_CHUNK_BYTES = 256 * 2**20
_NN_ARRAYS_PER_HEAD = 8


def _min_max(values):
    """Scale to [0, 1] over all heads; a constant map becomes 0 (sklearn's MinMaxScaler)."""
    lo = jnp.min(values)
    span = jnp.max(values) - lo
    return (values - lo) / jnp.where(span > 0, span, 1.0)


@functools.partial(jax.jit, static_argnames=("heads_per_chunk", "mesh", "criteria"))
def _saliency(flat, is_anomaly, heads_per_chunk, mesh, criteria):
    """flat [N, P, D] features of P heads (padded to a multiple of the devices' chunks), split
    over every axis of ``mesh`` along P; is_anomaly [N] bool; criteria: the C per-head functions
    (``REGISTRY``'s values; static, so that a changed registry compiles anew). Returns [P, C],
    zero where a class has fewer than 2 clips."""
    n = is_anomaly.shape[0]
    # The clips sorted anomalies first (stable), as the original stacks them; the class sizes
    # are data, so one compilation serves every labelling of N clips.
    order = jnp.argsort(jnp.where(is_anomaly, 0, 1), stable=True)
    num_anomalies = jnp.sum(is_anomaly, dtype=jnp.int32)

    def score(block, order, num_anomalies):  # block [N, heads, D] -> [heads, C]
        return score_heads(jnp.swapaxes(block[order], 0, 1), num_anomalies, criteria)

    raw = map_items(score, flat, heads_per_chunk, mesh, order, num_anomalies)
    # The original gives 0 for every criterion when a class has fewer than 2 clips.
    return jnp.where(jnp.minimum(num_anomalies, n - num_anomalies) < 2, 0.0, raw)


@functools.partial(jax.jit, static_argnames=("num_layers", "num_heads", "names"))
def _combine(raw, num_layers, num_heads, names):
    """[P, C] raw criteria of the padded heads, C = len(names) -> the dict ``saliency`` returns."""
    raw = raw[: num_layers * num_heads].T.reshape(len(names), num_layers, num_heads)
    out = dict(zip(names, raw, strict=True))
    out["combined"] = jnp.mean(jnp.stack([_min_max(v) for v in raw]), axis=0)
    return out


def _chunk_size(n, total):
    """Heads per chunk: as many as fit the memory budget, spread evenly over the chunks."""
    most = max(1, _CHUNK_BYTES // (_NN_ARRAYS_PER_HEAD * 4 * n * n))
    num_chunks = -(-total // most)
    return -(-total // num_chunks)


def _traced(*values) -> bool:
    """Whether any of the values is a tracer (under jit, vmap, grad ...), not a concrete array."""
    return any(isinstance(v, jax.core.Tracer) for v in values)


def check_saliency_inputs(features, labels) -> None:
    """The checks of ``saliency``'s values, which need concrete arrays: labels all 0 or 1, both
    classes present, features finite (as float32). Raises an ``InputError`` (a ValueError) that
    says which; the pipeline calls it before scoring, and an eager ``saliency`` call does too."""
    labels = np.asarray(labels)
    if not np.isin(labels, (0, 1)).all():
        raise InputError("labels must be 0 (normal) or 1 (anomaly)")
    if np.unique(labels).size < 2:
        raise InputError(
            f"labels contain one class only ({int(labels.flat[0])}); saliency needs both normal "
            "and anomalous clips"
        )
    with np.errstate(over="ignore"):  # values beyond float32's range become inf: refused
        finite = np.isfinite(np.asarray(features, np.float32)).all()
    if not finite:
        raise InputError("features contain NaN or inf")


def check_finite(values, name: str) -> None:
    """An ``InputError`` naming ``name`` where the concrete ``values`` hold NaN or inf (the value
    check of ``robust_saliency`` and ``top_k_heads``, made at the pipeline's edge and by their
    eager calls)."""
    if not np.isfinite(np.asarray(values)).all():
        raise InputError(f"{name} contains NaN or inf")


def _check_saliency_shapes(features, labels, heads_per_chunk) -> None:
    """The checks of ``saliency``'s shapes and dtypes, made while tracing too (a ValueError)."""
    if features.ndim != 4:
        raise ValueError(f"features must be [N, L, H, D], got shape {features.shape}")
    check_labels(labels, features.shape[0], "features")
    if not jnp.issubdtype(features.dtype, jnp.floating):
        raise ValueError(f"features must be floating point, got {features.dtype}")
    if heads_per_chunk is not None and heads_per_chunk < 1:
        raise ValueError(f"heads_per_chunk must be >= 1, got {heads_per_chunk}")


def _place_heads(features, heads_per_chunk, mesh):
    """features [N, L, H, D] -> (float32 [N, P, D] of the L * H heads padded to P, a multiple of
    the mesh's devices times heads per chunk, split over the mesh along P; heads per chunk)."""
    n, num_layers, num_heads, dim = features.shape
    flat = features.reshape(n, num_layers * num_heads, dim)
    return place_items(flat, mesh, heads_per_chunk, lambda per_device: _chunk_size(n, per_device))


def saliency(features, labels, *, heads_per_chunk=None, mesh=None):
    """Saliency of every attention head for telling anomalous from normal clips.

    Traceable: ``jax.jit(saliency)(features, labels)`` gives what the eager call gives, with
    features, labels or both traced (the class sizes are data, not shapes: one compilation
    serves every labelling of N clips); ``jax.vmap`` maps it over stacked prompts.
    ``heads_per_chunk`` and ``mesh`` are static (Python values, not traced). Shapes and dtypes
    are checked while tracing; values only in an eager call (``check_saliency_inputs``): traced
    labels other than 1 count as normal, and a class of fewer than 2 clips (one class, say)
    gives zeros.

    Args:
      features: [N, L, H, D] head features of N clips (L layers, H heads of dimension D),
        floating point (computed in float32).
      labels: [N] 0/1 (1 = anomaly); both classes must be present.
      heads_per_chunk: heads scored together on a device (vmapped); by default as many as fit
        in about 256 MiB of working memory (each head needs a few [N, N] arrays). Static.
      mesh: a ``jax.sharding.Mesh`` (e.g. ``make_mesh()``) whose devices split the heads, all of
        its axes together; each device receives only its heads' features and scores them chunk
        by chunk. The result is the same as on one device. Default: one device. Static.

    Returns:
      dict of [L, H] float32 arrays: one per criterion of ``criteria.REGISTRY`` (``CRITERIA``),
      the raw criteria "lda" (Fisher ratio), "kl" (symmetric KL of Ledoit-Wolf Gaussians,
      clipped to [0, 1e6]; 0 where the original's float64 inversion of a class covariance fails,
      as it gives then), "mmd" (biased MMD^2, RBF kernel, median heuristic), "nmi" (NMI of
      2-means clusters and labels), and "combined", the mean of the criteria each min-max scaled
      over all heads. A class with fewer than 2 clips gives 0 for every criterion, as in the
      original.
    """
    traced = _traced(features, labels)
    if not _traced(features):
        features = np.asarray(features)
    if not _traced(labels):
        labels = np.asarray(labels)
    _check_saliency_shapes(features, labels, heads_per_chunk)
    if not traced:
        check_saliency_inputs(features, labels)
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()[:1]), ("heads",))
    placed, heads_per_chunk = _place_heads(features, heads_per_chunk, mesh)
    names, functions = tuple(REGISTRY), tuple(REGISTRY.values())
    raw = _saliency(placed, labels == 1, heads_per_chunk, mesh, functions)
    return _combine(raw, features.shape[1], features.shape[2], names)


def robust_saliency(combined, lam=0.5):
    """Robust Saliency Score over prompts: mean - lam * std (population std, ddof 0).

    Traceable (``jax.jit``, ``jax.vmap`` over leading stacks, ``jax.grad``; the gradient of the
    std is NaN where the M scores of a head are all equal). ``lam`` is a Python number, static
    under jit (closed over, or in ``static_argnames``); a traced scalar works as well, since no
    shape or check depends on it. The shape is checked while tracing; that the scores are
    finite only in an eager call (``check_finite``).

    Args:
      combined: [M, L, H] combined saliency of each head under each of M >= 2 prompts.
      lam: weight of the instability penalty (lambda).

    Returns:
      [L, H] float32.
    """
    combined = jnp.asarray(combined, dtype=jnp.float32)
    if combined.ndim != 3:
        raise ValueError(f"combined must be [M, L, H], got shape {combined.shape}")
    if combined.shape[0] < 2:
        raise ValueError(f"robust saliency needs at least 2 prompts, got {combined.shape[0]}")
    if not _traced(combined):
        check_finite(combined, "combined")
    return jnp.mean(combined, axis=0) - lam * jnp.std(combined, axis=0)


def top_k_heads(rss, k=5):
    """The k heads of highest robust saliency, best first.

    Ties go to the head with the larger flat (layer-major) index, as the original's reversed
    ascending argsort does with a stable sort; the same under ``jax.jit`` and ``jax.vmap`` (over
    leading stacks [B, L, H] -> [B, k, 2]). ``k`` is static (a Python int: it is the result's
    shape). The shape and k are checked while tracing; that rss is finite only in an eager call
    (``check_finite``).

    Args:
      rss: [L, H] robust saliency scores.
      k: number of heads.

    Returns:
      int32 [k, 2] of (layer, head).
    """
    rss = jnp.asarray(rss)
    if rss.ndim != 2:
        raise ValueError(f"rss must be [L, H], got shape {rss.shape}")
    if _traced(k):
        raise TypeError("k must be a static Python int (the result's shape), got a traced value")
    k = operator.index(k)
    if not 1 <= k <= rss.size:
        raise InputError(f"k must be in [1, {rss.size}], got {k}")
    if not _traced(rss):
        check_finite(rss, "rss")
    order = jnp.argsort(rss.ravel(), stable=True)[::-1][:k]
    return jnp.stack(jnp.divmod(order, rss.shape[1]), axis=1).astype(jnp.int32)
