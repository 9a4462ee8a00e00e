"""The criteria of head hunting: how well one head's features separate anomalous from normal clips.

``REGISTRY`` maps each criterion's name to its per-head function ``f(head, classes) -> scalar``;
``CRITERIA`` is its names in order (the raw scores' columns). What the criteria of a head share
(the centred features, their pairwise distances, the two classes' Gaussian fit) is a ``Head``,
computed once per head by ``score_heads``, which then scores a chunk of heads with the given
criteria. Adding a criterion is one function and one registry entry; the results, the driver
(``hunt``) and the combination count them from the registry.

The four criteria of HeadHunt-VAD, with the original implementation's numerical behaviour (its
constants below, its failure cases reproduced where they change a score):
- "lda": the Fisher ratio d^T (S_w + 1e-6 I)^-1 d, d the difference of the class means;
- "kl": the symmetric KL divergence of two Gaussians with Ledoit-Wolf covariances;
- "mmd": the biased MMD^2 with an RBF kernel, gamma from the median heuristic;
- "nmi": the NMI of a 2-means clustering and the labels.

The linear algebra is matmuls only (`_inverse_cholesky`), not LAPACK: jaxlib's batched CPU LAPACK
kernels deadlock when two of them run at once on a small XLA thread pool, and each spawns OpenBLAS
threads that fight the pool's (50x slower under load on 2 cores).
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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

# The median's bisection over float32 bit patterns: a pattern above every float, and +inf's.
_NOT_COUNTED = np.iinfo(np.int32).max
_FLOAT32_INF_BITS = 0x7F800000


class Classes(NamedTuple):
    """The labelling of N clips, the anomalies first; one for all the heads of a chunk.

    is_anomaly: bool [N]; num_anomalies: int32 [] (traced: the class sizes are data);
    count_a, count_n: float32 [], the class sizes, a class of no clip counted as 1 (finite; a
    class of fewer than 2 clips is zeroed by the caller)."""

    is_anomaly: jax.Array
    num_anomalies: jax.Array
    count_a: jax.Array
    count_n: jax.Array


class Head(NamedTuple):
    """What the criteria of one head share, computed once (``_heads``). With N clips of dimension D:

    x: float32 [N, D], the features centred (every criterion is translation invariant; centring
      makes the float32 Gram matrices accurate).
    d2: [N, N] squared distances, exact-zero diagonal; gamma: [] the RBF kernel's gamma.
    mean_diff: [D], d = mean of the anomalies - mean of the normals.
    within: [N, D], each clip minus its class's mean.
    gram_a, gram_n: [D, D], X^T X of the anomalies' and of the normals' rows of ``within``.
    cov_a, cov_n: [D, D], each class's Ledoit-Wolf covariance plus _KL_RIDGE I.
    inverses, pivots: [F, D, D] and [F, D], W = L^-1 (S^-1 = W^T W) and the Cholesky pivots of the
      two covariances and, where "lda" takes the primal form (``_lda_primal``), of the
      within-class scatter plus _LDA_RIDGE I (F = 3; else F = 2).
    """

    x: jax.Array
    d2: jax.Array
    gamma: jax.Array
    mean_diff: jax.Array
    within: jax.Array
    gram_a: jax.Array
    gram_n: jax.Array
    cov_a: jax.Array
    cov_n: jax.Array
    inverses: jax.Array
    pivots: jax.Array


# --- what the criteria of a head share --------------------------------------------------------


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


def _lda_primal(n, dim):
    """Whether "lda" inverts the D x D within-class scatter (N - 2 >= D) rather than taking the
    N x N dual form (``_lda_dual``). Static: n_a + n_n = N is a shape."""
    return n - 2 >= dim


def _gaussian_fit(x, classes):
    """The fields of ``Head`` from mean_diff on, for one head's centred features x [N, D].

    Each class is a mask: its mean is a masked sum over its size, and its Gram matrix X^T X and
    Ledoit-Wolf estimate take its own rows only (``_class_grams``).
    """
    n, dim = x.shape
    is_anomaly, n_a, n_n = classes.is_anomaly, classes.count_a, classes.count_n
    rows = is_anomaly[:, None]
    mean_a = jnp.sum(jnp.where(rows, x, 0.0), axis=0) / n_a
    mean_n = jnp.sum(jnp.where(rows, 0.0, x), axis=0) / n_n
    within = x - jnp.where(rows, mean_a, mean_n)
    row_sq = jnp.sum(within * within, axis=1)
    eye = jnp.eye(dim, dtype=x.dtype)
    gram_a, gram_n = _class_grams(within, classes.num_anomalies)
    emp_a = gram_a / n_a
    emp_n = gram_n / n_n
    cov_a = _ledoit_wolf(emp_a, jnp.where(is_anomaly, row_sq, 0.0), n_a) + _KL_RIDGE * eye
    cov_n = _ledoit_wolf(emp_n, jnp.where(is_anomaly, 0.0, row_sq), n_n) + _KL_RIDGE * eye
    matrices = [cov_a, cov_n]
    floors = [_KL_RIDGE, _KL_RIDGE]
    if _lda_primal(n, dim):
        # One batched factorisation for all three matrices keeps the compiled program small.
        matrices.append(n_a * emp_a + n_n * emp_n + _LDA_RIDGE * eye)
        floors.append(_LDA_RIDGE)
    inverses, pivots = jax.vmap(_inverse_cholesky)(jnp.stack(matrices), jnp.array(floors, x.dtype))
    return mean_a - mean_n, within, gram_a, gram_n, cov_a, cov_n, inverses, pivots


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


def _heads(x, num_anomalies):
    """x [B, N, D] features of B heads, the first num_anomalies (int32 [], traced) clips
    anomalous -> (a ``Head`` whose fields have a leading B axis, the ``Classes``)."""
    n = x.shape[1]
    classes = Classes(
        is_anomaly=jnp.arange(n) < num_anomalies,
        num_anomalies=num_anomalies,
        count_a=jnp.maximum(num_anomalies, 1).astype(jnp.float32),
        count_n=jnp.maximum(n - num_anomalies, 1).astype(jnp.float32),
    )
    x = x - jnp.mean(x, axis=1, keepdims=True)
    d2, pairs = jax.vmap(_pairwise_sq_dists)(x)
    # One head at a time, so that its pairs stay in cache over the 31 passes of the bisection.
    gamma = jax.lax.map(_rbf_gamma, pairs)
    fit = jax.vmap(_gaussian_fit, in_axes=(0, None))(x, classes)
    return Head(x, d2, gamma, *fit), classes


# --- the criteria: f(head, classes) -> float32 [] -----------------------------------------------


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


def lda(head, classes):
    """Fisher ratio d^T (S_w + ridge I)^-1 d with S_w = (n_a - 1) C_a + (n_n - 1) C_n, 0 below
    _LDA_FLOOR (the original's (w^T d)^2 / (w^T S w) with w = S^+ d is this quadratic form,
    S + ridge I being positive definite)."""
    n, dim = head.x.shape
    if _lda_primal(n, dim):
        z = head.inverses[2] @ head.mean_diff
        ratio = z @ z
    else:
        ratio = _lda_dual(
            head.within, head.mean_diff, classes.is_anomaly, classes.count_a, classes.count_n
        )
    return jnp.where(ratio < _LDA_FLOOR, 0.0, ratio)


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


def kl(head, classes):
    """0.5 (KL(a||n) + KL(n||a)) of Gaussians with Ledoit-Wolf covariances, in [0, _KL_MAX], and
    0 where the original fails to invert a covariance (``_kl_fails``).

    The log-determinants cancel, and tr(S_n^-1 S_a) + tr(S_a^-1 S_n) - 2D = |W_a E W_n^T|_F^2
    with E = S_a - S_n and S^-1 = W^T W: a sum of squares, free of the cancellation of
    "traces - 2D".
    """
    inv_a, inv_n = head.inverses[0], head.inverses[1]
    t = inv_a @ (head.cov_a - head.cov_n) @ inv_n.T
    za = inv_a @ head.mean_diff
    zn = inv_n @ head.mean_diff
    divergence = 0.25 * (jnp.sum(t * t) + za @ za + zn @ zn)
    # Only a covariance singular in float32 makes this NaN (inf - inf); where its ridge keeps it
    # invertible in float64, the original gets a divergence beyond the clip.
    divergence = jnp.clip(jnp.where(jnp.isnan(divergence), _KL_MAX, divergence), 0.0, _KL_MAX)
    fails_a = _kl_fails(head.gram_a, head.cov_a, head.pivots[0])
    fails_n = _kl_fails(head.gram_n, head.cov_n, head.pivots[1])
    return jnp.where(fails_a | fails_n, 0.0, divergence)


def mmd(head, classes):
    """Biased MMD^2 with the RBF kernel exp(-gamma d2), clipped at 0.

    With w [N] = 1/n_a on anomalies and -1/n_n on normals, w^T K w = mean K_aa + mean K_nn
    - 2 mean K_an. The terms nearly cancel; summing row by row (K w, then w . K w) keeps the
    float32 rounding near 1e-7 relative, where one flat sum over the pairs lost two more digits.
    """
    w = jnp.where(classes.is_anomaly, 1.0 / classes.count_a, -1.0 / classes.count_n)
    return jnp.maximum(w @ (jnp.exp(-head.gamma * head.d2) @ w), 0.0)


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


def _normalized_mutual_info(clusters, is_anomaly):
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


def nmi(head, classes):
    """NMI of a 2-means clustering of the head's features (``_two_means``) and the labels."""
    return _normalized_mutual_info(_two_means(head.x, head.d2), classes.is_anomaly)


Criterion = Callable[[Head, Classes], jax.Array]

REGISTRY: dict[str, Criterion] = {"lda": lda, "kl": kl, "mmd": mmd, "nmi": nmi}
CRITERIA = tuple(REGISTRY)


def score_heads(x, num_anomalies, criteria):
    """x [B, N, D] features of B heads, the first num_anomalies (int32 [], traced) clips
    anomalous -> float32 [B, C]: each head scored by each of the C ``criteria`` (per-head
    functions: ``REGISTRY``'s values, in its order), from one ``Head`` per head."""
    heads, classes = _heads(x, num_anomalies)
    return jnp.stack([jax.vmap(f, in_axes=(0, None))(heads, classes) for f in criteria], axis=1)
