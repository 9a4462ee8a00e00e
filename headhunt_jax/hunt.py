"""Robust head identification: per-head saliency, robust saliency over prompts, expert selection.

Every attention head is scored by how well its feature vector separates anomalous from normal
clips, with the four criteria of HeadHunt-VAD (Fisher/LDA, symmetric Gaussian KL, MMD^2, NMI of a
2-means clustering). All heads are scored in one jit-compiled call: the per-head math is vmapped
over a chunk of heads and `lax.map` walks over the chunks, so memory is bounded by the chunk, not
by the number of heads. On a mesh the heads are split over all devices (`shard_map`), each device
holding only its heads' features.

``saliency``, ``robust_saliency`` and ``top_k_heads`` are traceable (``jax.jit``, ``jax.vmap``, and
``jax.grad`` of ``robust_saliency``): labels are data, so the class sizes are traced values and
each class is a mask (weights) over the clips, never a slice. The clips are still sorted anomalies first (a
traced argsort), which keeps them in the original's order. Checks of values (labels in {0, 1}, both
classes, finite numbers) need concrete arrays: ``check_saliency_inputs`` and ``check_finite``, which
the pipeline calls at its edge and an eager call makes itself; under tracing they are skipped.

The linear algebra is matmuls only (`_inverse_cholesky`), not LAPACK: jaxlib's batched CPU LAPACK
kernels deadlock when two of them run at once on a small XLA thread pool, and each spawns OpenBLAS
threads that fight the pool's (50x slower under load on 2 cores).
"""

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from headhunt_jax.errors import InputError

CRITERIA = ("lda", "kl", "mmd", "nmi")

# Constants of the original implementation.
_LDA_RIDGE = 1e-6  # added to the within-class scatter before inversion
_LDA_FLOOR = 1e-9  # a Fisher ratio below this counts as 0
_KL_RIDGE = 1e-10  # added to each Ledoit-Wolf covariance
_KL_MAX = 1e6  # the symmetric KL is clipped to [0, _KL_MAX]
# Where the original's float64 inversion of a class covariance fails (_kl_fails): the ridge is lost
# on diagonal entries >= 2^20, and a pivot below 2^-19 times its diagonal entry counts as zero.
_KL_RIDGE_LOST = 2.0**20
_KL_ZERO_PIVOT = 2.0**-19
_KMEANS_MAX_ITER = 300  # sklearn's KMeans budget; Lloyd stops earlier once the labels settle

# Matrices up to this size are factored column by column in a loop; larger ones are split in two.
_CHOLESKY_BLOCK = 32
# Rows of a block of the class Gram matrices (``_class_grams``).
_GRAM_ROWS = 32
# Working memory of one head is a handful of [N, N] float32 arrays.
_CHUNK_BYTES = 256 * 2**20
_NN_ARRAYS_PER_HEAD = 8
_NOT_COUNTED = np.iinfo(np.int32).max
_FLOAT32_INF_BITS = 0x7F800000


def _inverse_cholesky(a, floor):
    """W = L^-1 for a = L L^T, a [n, n] symmetric positive definite; W [n, n] lower triangular,
    and the pivots [n] (L_jj^2 as computed, before the floor).

    Recursive 2x2 blocking (L21 = A21 W11^T, W22 from the Schur complement A22 - L21 L21^T,
    W21 = -W22 L21 W11), so almost all the work is matmuls. `floor` is a known lower bound of a's
    eigenvalues (its ridge): pivots that rounding pushes below it are raised to it.
    """
    n = a.shape[-1]
    if n <= _CHOLESKY_BLOCK:
        unit = jnp.eye(n, dtype=a.dtype)

        def row(j, state):
            w, pivots = state
            l_row = a[j] @ w.T
            pivot = a[j, j] - l_row @ l_row
            w = w.at[j].set((unit[j] - l_row @ w) / jnp.sqrt(jnp.maximum(pivot, floor)))
            return w, pivots.at[j].set(pivot)

        return jax.lax.fori_loop(0, n, row, (jnp.zeros_like(a), jnp.zeros(n, a.dtype)))
    h = n // 2
    w11, pivots1 = _inverse_cholesky(a[:h, :h], floor)
    l21 = a[h:, :h] @ w11.T
    w22, pivots2 = _inverse_cholesky(a[h:, h:] - l21 @ l21.T, floor)
    w21 = -(w22 @ l21) @ w11
    w = jnp.block([[w11, jnp.zeros((h, n - h), a.dtype)], [w21, w22]])
    return w, jnp.concatenate([pivots1, pivots2])


def _ledoit_wolf(emp, row_sq, n):
    """Ledoit-Wolf shrunk covariance [D, D], sklearn's estimator, from the biased covariance
    emp [D, D] of a class's n samples and the squared norms row_sq [N] of its centred samples
    (0 on the other class's rows)."""
    dim = emp.shape[0]
    mu = jnp.trace(emp) / dim
    eye = jnp.eye(dim, dtype=emp.dtype)
    delta = jnp.sum((emp - mu * eye) ** 2) / dim
    beta = (jnp.sum(row_sq * row_sq) / n - jnp.sum(emp * emp)) / (dim * n)
    beta = jnp.clip(beta, 0.0, delta)
    shrinkage = jnp.where(delta > 0, beta / jnp.where(delta > 0, delta, 1.0), 0.0)
    return (1.0 - shrinkage) * emp + shrinkage * mu * eye


def _lda_dual(xw, d, is_anomaly, n_a, n_n):
    """d^T (xw^T xw + ridge I)^-1 d for N - 2 < D, from the N x N dual.

    S_w = xw^T xw is singular there and the ridge directions dominate, but float32 cannot resolve
    a 1e-6 ridge next to the rounding of S_w. The dual form is
    d^T (X^T X + r I)^-1 d = d^T (d - X^T (X X^T + r I)^-1 X d) / r; X X^T has two known null
    directions, the normalised class indicators (X d has no component along them), which are
    lifted to the scale of X X^T so that the N x N system is well conditioned. xw [N, D]: every
    clip minus its class mean; is_anomaly [N] the class mask, n_a and n_n its class sizes.
    """
    n = xw.shape[0]
    ua = is_anomaly / jnp.sqrt(n_a)
    un = ~is_anomaly / jnp.sqrt(n_n)
    gram = xw @ xw.T
    lift = jnp.trace(gram) / n
    system = gram + lift * (jnp.outer(ua, ua) + jnp.outer(un, un))
    system = system + _LDA_RIDGE * jnp.eye(n, dtype=xw.dtype)
    g = xw @ d
    g = g - ua * (ua @ g) - un * (un @ g)
    w, _ = _inverse_cholesky(system, _LDA_RIDGE)
    return d @ (d - xw.T @ (w.T @ (w @ g))) / _LDA_RIDGE


def _kl_fails(gram, cov, pivots):
    """Whether the original's KL computation fails for one class, which makes it return 0.
    gram [D, D]: X^T X of the class's centred samples X; cov [D, D]: its Ledoit-Wolf covariance
    plus the ridge (float32); pivots [D]: cov's Cholesky pivots.

    Besides a class of fewer than 2 clips, the original returns 0 where an exception stops it:
    - LedoitWolf().fit raises. For finite features that is when its float32 covariance is not
      finite (sklearn refuses it): it overflowed. sklearn's shrinkage sums the squares of X^T X
      (not of X^T X / n), which overflows first and makes the shrinkage NaN; that sum is taken
      here too, in float32, and a covariance overflowing any other way is not finite here either.
    - np.linalg.inv raises LinAlgError: LAPACK's LU of the float64 C + 1e-10 I meets an exactly
      zero pivot. Nothing else fails: slogdet does not raise for a square matrix and the sign it
      returns is dropped (a determinant <= 0 goes through), and a NaN divergence is returned.
    When is C + 1e-10 I singular in float64? The shrinkage s lifts C's eigenvalues by s * mu > 0
    unless s = 0, which sklearn's formula gives when the class's centred samples are +-v: then
    C = v v^T, of rank 1. The ridge keeps C + 1e-10 I invertible unless rounding loses it:
    c + 1e-10 rounds to c for c >= 2^20 (1e-10 is under half an ulp there). So the failure is a
    singular C at a row whose diagonal entry is >= 2^20. Float32 cannot tell an exactly zero
    float64 pivot from rounding, so a pivot below 2^-19 (16 float32 epsilons) times its diagonal
    entry counts as zero (a rank-1 C has D - 1 such pivots, within a few epsilons of 0 or far
    below it; a NaN pivot, from an overflow after one of them, does not count).

    Beyond reach: where the float64 elimination does not cancel exactly, the original's pivot is
    rounding noise of either sign and its KL 1e6 or (negative, clipped) 0 by chance. Here it is
    then 0 where the ridge is lost, and 1e6, a huge divergence clipped, where it is not.
    """
    overflow = ~jnp.isfinite(jnp.sum(gram * gram)) | ~jnp.all(jnp.isfinite(cov))
    diagonal = jnp.diagonal(cov)
    zero_pivot = (diagonal >= _KL_RIDGE_LOST) & (pivots <= _KL_ZERO_PIVOT * diagonal)
    return overflow | jnp.any(zero_pivot)


def _class_grams(xw, num_anomalies):
    """(X_a^T X_a, X_n^T X_n) [D, D] of the rows xw [N, D], the first num_anomalies (traced) of
    them anomalies and the rest normals.

    The rows go in blocks of _GRAM_ROWS: a block wholly of one class adds its Gram matrix to that
    class's (a loop whose trip counts are data), the block that holds the boundary is split by a
    mask. That is one N x D x D product and one block more, where masking all the rows of each
    class would take two. A class's sum only ever adds its own rows (the other's are left out or
    exactly zero).
    """
    n, dim = xw.shape
    size = min(_GRAM_ROWS, n)
    blocks = -(-n // size)
    xw = jnp.pad(xw, ((0, blocks * size - n), (0, 0)))
    boundary = num_anomalies // size  # the block holding the boundary; `blocks` when none does

    def block(b):
        return jax.lax.dynamic_slice_in_dim(xw, b * size, size)

    def add(b, total):
        rows = block(b)
        return total + rows.T @ rows

    zero = jnp.zeros((dim, dim), xw.dtype)
    gram_a = jax.lax.fori_loop(0, boundary, add, zero)
    gram_n = jax.lax.fori_loop(boundary + 1, blocks, add, zero)
    rows = block(jnp.minimum(boundary, blocks - 1))
    in_a = (boundary * size + jnp.arange(size) < num_anomalies)[:, None]
    split = boundary < blocks
    rows_a = jnp.where(in_a & split, rows, 0.0)
    rows_n = jnp.where(in_a | ~split, 0.0, rows)
    return gram_a + rows_a.T @ rows_a, gram_n + rows_n.T @ rows_n


def _gaussian_criteria(x, num_anomalies):
    """(lda, kl) of one head from its samples x [N, D], the first num_anomalies (an int32 scalar,
    traced) anomalous and the rest normal. Each class is a mask: its mean is a masked sum over
    its size, and its Gram matrix X^T X and Ledoit-Wolf estimate take its own rows only
    (``_class_grams``). A class of no clip is counted as 1 (finite; zeroed later).

    lda: d^T (S_w + ridge I)^-1 d with S_w = (n_a - 1) C_a + (n_n - 1) C_n, 0 below _LDA_FLOOR
    (the original's (w^T d)^2 / (w^T S w) with w = S^+ d is this quadratic form, S + ridge I being
    positive definite).
    kl: 0.5 (KL(a||n) + KL(n||a)) of Gaussians with Ledoit-Wolf covariances, in [0, _KL_MAX], and
    0 where the original fails to invert a covariance (``_kl_fails``). The log-determinants
    cancel, and tr(S_n^-1 S_a) + tr(S_a^-1 S_n) - 2D = |W_a E W_n^T|_F^2 with E = S_a - S_n and
    S^-1 = W^T W: a sum of squares, free of the cancellation of "traces - 2D".
    """
    n, dim = x.shape
    is_anomaly = jnp.arange(n) < num_anomalies
    n_a = jnp.maximum(num_anomalies, 1).astype(x.dtype)
    n_n = jnp.maximum(n - num_anomalies, 1).astype(x.dtype)
    rows = is_anomaly[:, None]
    mean_a = jnp.sum(jnp.where(rows, x, 0.0), axis=0) / n_a
    mean_n = jnp.sum(jnp.where(rows, 0.0, x), axis=0) / n_n
    d = mean_a - mean_n
    xw = x - jnp.where(rows, mean_a, mean_n)  # each clip minus its class's mean
    row_sq = jnp.sum(xw * xw, axis=1)
    eye = jnp.eye(dim, dtype=x.dtype)
    gram_a, gram_n = _class_grams(xw, num_anomalies)
    emp_a = gram_a / n_a
    emp_n = gram_n / n_n
    cov_a = _ledoit_wolf(emp_a, jnp.where(is_anomaly, row_sq, 0.0), n_a) + _KL_RIDGE * eye
    cov_n = _ledoit_wolf(emp_n, jnp.where(is_anomaly, 0.0, row_sq), n_n) + _KL_RIDGE * eye
    matrices = [cov_a, cov_n]
    floors = [_KL_RIDGE, _KL_RIDGE]
    # n_a + n_n = N is static, so the choice of the primal or the dual form is too.
    primal = n - 2 >= dim
    if primal:
        # One batched factorisation for all three matrices keeps the compiled program small.
        matrices.append(n_a * emp_a + n_n * emp_n + _LDA_RIDGE * eye)
        floors.append(_LDA_RIDGE)
    inverse, pivots = jax.vmap(_inverse_cholesky)(jnp.stack(matrices), jnp.array(floors, x.dtype))
    if primal:
        z = inverse[2] @ d
        lda = z @ z
    else:
        lda = _lda_dual(xw, d, is_anomaly, n_a, n_n)

    t = inverse[0] @ (cov_a - cov_n) @ inverse[1].T
    za = inverse[0] @ d
    zn = inverse[1] @ d
    kl = 0.25 * (jnp.sum(t * t) + za @ za + zn @ zn)
    # Only a covariance singular in float32 makes this NaN (inf - inf); where its ridge keeps it
    # invertible in float64, the original gets a divergence beyond the clip.
    kl = jnp.clip(jnp.where(jnp.isnan(kl), _KL_MAX, kl), 0.0, _KL_MAX)
    fails = _kl_fails(gram_a, cov_a, pivots[0]) | _kl_fails(gram_n, cov_n, pivots[1])
    kl = jnp.where(fails, 0.0, kl)
    return jnp.where(lda < _LDA_FLOOR, 0.0, lda), kl


def _pairwise_sq_dists(x):
    """x [N, D] (centred) -> squared distances [N, N] with an exact-zero diagonal, and those of the
    pairs i < j [N (N - 1) / 2] (np.triu_indices order).

    Identical samples have bitwise identical Gram entries, so their distance is exactly 0, as in
    the original, which leaves zeros out of the median heuristic.
    """
    n = x.shape[0]
    gram = x @ x.T
    sq = jnp.diag(gram)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    rows, cols = np.triu_indices(n, 1)
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, d2), d2[rows, cols]


def _rbf_gamma(pairs):
    """gamma = 1 / (2 * median of the positive entries of pairs [P]); 1 if none is positive.

    The median is exact: an order statistic found by bisection on the float32 bit patterns (which
    order non-negative floats like their values), 31 counting passes instead of a sort.
    """
    positive = pairs > 0
    bits = jnp.where(positive, jax.lax.bitcast_convert_type(pairs, jnp.int32), _NOT_COUNTED)
    m = jnp.sum(positive)
    rank = (m - 1) // 2

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid) > rank
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lower, _ = jax.lax.fori_loop(0, 31, halve, (jnp.int32(0), jnp.int32(_FLOAT32_INF_BITS)))
    # For an even count the median also needs the next order statistic.
    upper = jnp.where(
        jnp.sum(bits <= lower) > m // 2,
        lower,
        jnp.min(jnp.where(bits > lower, bits, _NOT_COUNTED)),
    )
    as_float = functools.partial(jax.lax.bitcast_convert_type, new_dtype=jnp.float32)
    median = 0.5 * (as_float(lower) + as_float(upper))
    return jnp.where((m > 0) & (median > 0), 0.5 / median, 1.0)


def _mmd(d2, gamma, w):
    """Biased MMD^2 with the RBF kernel exp(-gamma d2), clipped at 0.

    d2 [N, N]; w [N] = 1/n_a on anomalies, -1/n_n on normals, so that
    w^T K w = mean K_aa + mean K_nn - 2 mean K_an. The terms nearly cancel; summing row by row
    (K w, then w . K w) keeps the float32 rounding near 1e-7 relative, where one flat sum over
    the pairs lost two more digits.
    """
    return jnp.maximum(w @ (jnp.exp(-gamma * d2) @ w), 0.0)


def _two_means(x, d2):
    """2-means cluster labels [N] (bool: cluster 1) of x [N, D]: Lloyd's algorithm from a
    deterministic seeding.

    Seeding is k-means++'s greedy variant with every sample a candidate: the first centre is the
    sample with the least total squared distance to the others (the one nearest the mean), the
    second the sample that most lowers the potential sum_i min_c |x_i - c|^2. Lloyd then runs
    until the labels stop changing (a fixed point) or the iteration budget is spent.
    """
    first = jnp.argmin(jnp.sum(d2, axis=0))
    second = jnp.argmin(jnp.sum(jnp.minimum(d2[:, first][:, None], d2), axis=0))
    total = jnp.sum(x, axis=0)

    def assign(c0, c1):
        # Strictly nearer to c1: 2 x.(c1 - c0) > |c1|^2 - |c0|^2 (a tie goes to the first centre,
        # as with argmin). One dot product per sample instead of two distances.
        return 2.0 * (x @ (c1 - c0)) > c1 @ c1 - c0 @ c0

    def update(in_second, c0, c1):
        # For k = 2 from distinct seeds no cluster empties; the guards keep the division finite.
        n1 = jnp.sum(in_second)
        n0 = x.shape[0] - n1
        sum1 = in_second.astype(x.dtype) @ x
        c0 = jnp.where(n0 > 0, (total - sum1) / jnp.maximum(n0, 1), c0)
        c1 = jnp.where(n1 > 0, sum1 / jnp.maximum(n1, 1), c1)
        return c0, c1

    def step(state):
        labels, centres, _, it = state
        new_labels = assign(*centres)
        changed = jnp.any(new_labels != labels)
        return new_labels, update(new_labels, *centres), changed, it + 1

    def running(state):
        _, _, changed, it = state
        return changed & (it < _KMEANS_MAX_ITER)

    labels = assign(x[first], x[second])
    state = (labels, update(labels, x[first], x[second]), jnp.array(True), jnp.array(1))
    _, centres, _, _ = jax.lax.while_loop(running, step, state)
    return assign(*centres)


def _nmi(clusters, is_anomaly):
    """NMI of two two-class labelings [N] (bool), arithmetic-mean normalisation (sklearn's
    default).

    A single cluster (or a single class) has zero mutual information, hence NMI 0, as in sklearn.
    """
    n = clusters.shape[0]
    joint = jnp.stack(
        [jnp.sum((clusters == k) & (is_anomaly == c)) for k in range(2) for c in range(2)]
    )
    cluster_sizes = jnp.stack([joint[0] + joint[1], joint[2] + joint[3]])
    class_sizes = jnp.stack([joint[0] + joint[2], joint[1] + joint[3]])
    expected = jnp.repeat(cluster_sizes, 2) * jnp.tile(class_sizes, 2)
    # log(n n_kc / (n_k n_c)) from an exact integer numerator: the four terms of the mutual
    # information nearly cancel when the clusters are unrelated to the labels.
    excess = (n * joint - expected) / jnp.maximum(expected, 1).astype(jnp.float32)
    mi = jnp.sum(jnp.where(joint > 0, joint / n * jnp.log1p(excess), 0.0))

    def entropy(sizes):
        p = sizes / n
        return -jnp.sum(jnp.where(sizes > 0, p * jnp.log(jnp.where(sizes > 0, p, 1.0)), 0.0))

    normaliser = 0.5 * (entropy(cluster_sizes) + entropy(class_sizes))
    return jnp.where(mi > 0, mi / normaliser, 0.0)


def _chunk_criteria(x, n_a):
    """x [B, N, D] features of B heads, the n_a anomalous clips first (n_a an int32 scalar, traced)
    -> [B, 4] (lda, kl, mmd, nmi). Each class is a mask over the rows, so its size is data.
    Divisions by a class size use at least 1: a class of fewer than 2 clips is zeroed later."""
    n = x.shape[1]
    is_anomaly = jnp.arange(n) < n_a
    count_a = jnp.maximum(n_a, 1).astype(jnp.float32)
    count_n = jnp.maximum(n - n_a, 1).astype(jnp.float32)
    # Every criterion is translation invariant; centring makes the float32 Gram matrix accurate.
    x = x - jnp.mean(x, axis=1, keepdims=True)
    lda, kl = jax.vmap(_gaussian_criteria, in_axes=(0, None))(x, n_a)
    d2, pairs = jax.vmap(_pairwise_sq_dists)(x)
    # One head at a time, so that its pairs stay in cache over the 31 passes of the bisection.
    gamma = jax.lax.map(_rbf_gamma, pairs)
    w = jnp.where(is_anomaly, 1.0 / count_a, -1.0 / count_n)
    mmd = jax.vmap(_mmd, in_axes=(0, 0, None))(d2, gamma, w)
    clusters = jax.vmap(_two_means)(x, d2)
    nmi = jax.vmap(_nmi, in_axes=(0, None))(clusters, is_anomaly)
    return jnp.stack([lda, kl, mmd, nmi], axis=1)


def _min_max(values):
    """Scale to [0, 1] over all heads; a constant map becomes 0 (sklearn's MinMaxScaler)."""
    lo = jnp.min(values)
    span = jnp.max(values) - lo
    return (values - lo) / jnp.where(span > 0, span, 1.0)


@functools.partial(jax.jit, static_argnames=("heads_per_chunk", "mesh"))
def _saliency(flat, is_anomaly, heads_per_chunk, mesh):
    """flat [N, P, D] features of P heads (padded to a multiple of the devices' chunks), split
    over every axis of ``mesh`` along P; is_anomaly [N] bool. Returns [P, 4], zero where a class
    has fewer than 2 clips."""
    axes = tuple(mesh.axis_names)
    n = is_anomaly.shape[0]
    # The clips sorted anomalies first (stable), as the original stacks them; the class sizes
    # are data, so one compilation serves every labelling of N clips.
    order = jnp.argsort(jnp.where(is_anomaly, 0, 1), stable=True)
    num_anomalies = jnp.sum(is_anomaly, dtype=jnp.int32)

    def local(x, order, num_anomalies):  # x [N, P / devices, D]: this device's heads
        def chunk(start):
            block = jax.lax.dynamic_slice_in_dim(x, start, heads_per_chunk, axis=1)
            return _chunk_criteria(jnp.swapaxes(block[order], 0, 1), num_anomalies)

        starts = jnp.arange(0, x.shape[1], heads_per_chunk)
        return jax.lax.map(chunk, starts).reshape(-1, 4)

    # GPUs and TPUs otherwise multiply float32 in TF32 / bfloat16 passes, far from 1e-5.
    with jax.default_matmul_precision("highest"):
        raw = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(None, axes, None), P(), P()),
            out_specs=P(axes),
            check_vma=False,
        )(flat, order, num_anomalies)
    # The original gives 0 for every criterion when a class has fewer than 2 clips.
    return jnp.where(jnp.minimum(num_anomalies, n - num_anomalies) < 2, 0.0, raw)


@functools.partial(jax.jit, static_argnames=("num_layers", "num_heads"))
def _combine(raw, num_layers, num_heads):
    """[P, 4] raw criteria of the padded heads -> the dict ``saliency`` returns."""
    raw = raw[: num_layers * num_heads].T.reshape(4, num_layers, num_heads)
    out = dict(zip(CRITERIA, raw, strict=True))
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


def saliency(features, labels, *, heads_per_chunk=None, mesh=None):
    """Saliency of every attention head for telling anomalous from normal clips.

    Traceable: ``jax.jit(saliency)(features, labels)`` gives what the eager call gives, with
    features, labels or both traced (the class sizes are data, not shapes: one compilation
    serves every labelling of N clips); ``jax.vmap`` maps it over stacked prompts.
    ``heads_per_chunk`` and ``mesh`` are static (Python values, not traced). Shapes and dtypes are checked while tracing; values only in an eager
    call (``check_saliency_inputs``): traced labels other than 1 count as normal, and a class
    of fewer than 2 clips (one class, say) gives zeros.

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
      dict of [L, H] float32 arrays: the raw criteria "lda" (Fisher ratio), "kl" (symmetric KL of
      Ledoit-Wolf Gaussians, clipped to [0, 1e6]; 0 where the original's float64 inversion of a
      class covariance fails, as it gives then), "mmd" (biased MMD^2, RBF kernel, median
      heuristic), "nmi" (NMI of 2-means clusters and labels), and "combined", the mean of the
      four criteria each min-max scaled over all heads. A class with fewer than 2 clips gives 0
      for every criterion, as in the original.
    """
    traced = _traced(features, labels)
    if not _traced(features):
        features = np.asarray(features)
    if not _traced(labels):
        labels = np.asarray(labels)
    if features.ndim != 4:
        raise ValueError(f"features must be [N, L, H, D], got shape {features.shape}")
    if labels.shape != features.shape[:1]:
        raise ValueError(
            f"labels must be [N] with N = {features.shape[0]} (features' first axis), "
            f"got shape {labels.shape}"
        )
    if not jnp.issubdtype(features.dtype, jnp.floating):
        raise ValueError(f"features must be floating point, got {features.dtype}")
    if labels.dtype != bool and not (
        jnp.issubdtype(labels.dtype, jnp.integer) or jnp.issubdtype(labels.dtype, jnp.floating)
    ):
        raise ValueError(f"labels must be 0/1 integers (or bool), got {labels.dtype}")
    if heads_per_chunk is not None and heads_per_chunk < 1:
        raise ValueError(f"heads_per_chunk must be >= 1, got {heads_per_chunk}")
    if not traced:
        check_saliency_inputs(features, labels)
    n, num_layers, num_heads, dim = features.shape
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()[:1]), ("heads",))
    total = num_layers * num_heads
    per_device = -(-total // mesh.size)
    if heads_per_chunk is None:
        heads_per_chunk = _chunk_size(n, per_device)
    heads_per_chunk = min(int(heads_per_chunk), per_device)
    padded = mesh.size * heads_per_chunk * -(-per_device // heads_per_chunk)
    # Padding repeats the first heads, so every device scans chunks of one shape; their scores
    # are dropped (each head is scored on its own, so the padding changes no result).
    index = np.arange(padded) % total
    if _traced(features):
        flat = features.astype(jnp.float32).reshape(n, total, dim)
        placed = flat if padded == total else flat[:, index]
    else:
        flat = features.astype(np.float32, copy=False).reshape(n, total, dim)
        sharding = NamedSharding(mesh, P(None, tuple(mesh.axis_names), None))
        placed = jax.make_array_from_callback(
            (n, padded, dim), sharding, lambda idx: flat[:, index[idx[1]]]
        )
    raw = _saliency(placed, labels == 1, heads_per_chunk, mesh)
    return _combine(raw, num_layers, num_heads)


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
