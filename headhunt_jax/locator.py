"""Temporal locator: Gaussian smoothing of segment scores, thresholding into events, and the grid
search of (sigma, tau) for F1 over validation segments.

The smoothing kernel is the original's: odd size max(3, min(int(6 sigma) + 1, T)) (made odd by
+1), weights exp(-k^2 / (2 sigma^2)) at integer offsets, normalised, applied as a 'same'
convolution with zeros outside the sequence. Unlike the original (np.convolve 'same' returns
max(T, kernel size) values), the output always has length T: an even T not longer than the kernel,
or T = 2, used to give one value too many.
"""

import fractions

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_GRID = np.linspace(0.5, 3.0, 11)
TAU_GRID = np.linspace(0.1, 0.9, 81)
# What the original's calibration returns when no grid point reaches a positive F1.
DEFAULT_SIGMA = 1.5
DEFAULT_TAU = 0.65


def kernel_half_width(sigma, length):
    """Half the size of the smoothing kernel for sigma and a sequence of `length` segments."""
    size = min(int(6 * sigma) + 1, length)
    size += 1 - size % 2
    return max(3, size) // 2


def _kernel(sigma, length, half):
    """Kernel weights [2 * half + 1] for a sequence of `length`, zero beyond its own half width;
    a sequence of 0 or 1 segments is left as it is (a unit kernel), as in the original."""
    offsets = np.arange(-half, half + 1)
    if length <= 1:
        return (offsets == 0).astype(np.float64)
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    weights[np.abs(offsets) > kernel_half_width(sigma, length)] = 0.0
    return weights / weights.sum()


@jax.jit
def _smooth_flat(flat, video, kernels):
    """Smooth sequences laid end to end.

    flat [P + 2M]: the sequences with at least M zeros between them and at both ends;
    video [P]: for output position p (centred on flat[p + M]) the index of its sequence;
    kernels [V, 2M + 1]: each sequence's kernel. Returns [P].
    """
    positions = video.shape[0]
    taps = kernels.shape[1]
    return sum(kernels[video, k] * flat[k : k + positions] for k in range(taps))


def next_power_of_two(n):
    """The least power of two >= n (1 for n <= 1): padded lengths share compilations."""
    return 1 << max(0, int(n) - 1).bit_length()


def _check_scores(scores, name="scores"):
    """The host's check of a video's scores (``localize``, ``calibrate``): 1-D, finite."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of segment scores, got {scores.shape}")
    if not np.issubdtype(scores.dtype, np.number) or not np.isfinite(scores).all():
        raise ValueError(f"{name} must be finite numbers")
    return scores.astype(np.float32)


def _check_sigma(sigma):
    if isinstance(sigma, jax.Array) or not sigma > 0:
        raise ValueError(f"sigma must be positive (a static Python number), got {sigma}")


def smooth(scores, sigma):
    """Gaussian smoothing of segment scores [T] -> [T] float32.

    Traceable: inside ``jax.jit``, ``jax.vmap`` (over videos of one length, [B, T]) and
    ``jax.grad`` it gives what the eager call gives; ``sigma`` is static (a Python number). The
    shape and dtype are checked (also while tracing); values are not (NaN stays NaN: the CLI
    and ``localize`` check them). Eager calls pad lengths and kernel widths to powers of two
    (zeros, which the 'same' convolution assumes anyway), so that videos of different lengths
    share a few compilations; the padding adds only zero terms, so the numbers are the same.
    """
    _check_sigma(sigma)
    scores = jnp.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D sequence of segment scores, got {scores.shape}")
    if not jnp.issubdtype(scores.dtype, jnp.number):
        raise ValueError(f"scores must be numbers, got {scores.dtype}")
    scores = scores.astype(jnp.float32)
    length = scores.shape[0]
    if length <= 1:
        return scores
    half = kernel_half_width(sigma, length)
    if isinstance(scores, jax.core.Tracer):  # inside the user's transformation: inline
        kernel = _kernel(sigma, length, half).astype(np.float32)
        padded = jnp.pad(scores, (half, half))
        return sum(kernel[k] * padded[k : k + length] for k in range(2 * half + 1))
    half = next_power_of_two(half)
    positions = next_power_of_two(length)
    flat = jnp.zeros(positions + 2 * half, jnp.float32).at[half : half + length].set(scores)
    kernel = _kernel(sigma, length, half).astype(np.float32)[None]
    return _smooth_flat(flat, jnp.zeros(positions, jnp.int32), kernel)[:length]


def event_mask(scores, sigma=DEFAULT_SIGMA, threshold=DEFAULT_TAU):
    """Which segments belong to an event: bool [T], the smoothed score > threshold.

    The traceable half of ``localize`` (``sigma`` and ``threshold`` static; None: no smoothing):
    under ``jax.jit`` and ``jax.vmap`` over videos [B, T] it equals the eager call."""
    scores = jnp.asarray(scores, jnp.float32)
    smoothed = scores if sigma is None else smooth(scores, sigma)
    return smoothed > threshold


def localize(scores, sigma=DEFAULT_SIGMA, threshold=DEFAULT_TAU):
    """Anomalous events of one video: runs of segments whose smoothed score exceeds the threshold
    (``event_mask``). On the host: the events' number varies.

    Args:
      scores: [T] segment scores (anomaly probabilities), finite.
      sigma: Gaussian smoothing sigma; None scores the raw sequence.
      threshold: tau; a segment is anomalous when its score is > tau.

    Returns:
      list of (start, end) segment indices, end exclusive, in order.
    """
    mask = np.asarray(event_mask(_check_scores(scores), sigma, threshold))
    anomalous = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(anomalous.astype(np.int8)))
    return [(int(start), int(end)) for start, end in edges.reshape(-1, 2)]


@jax.jit
def _grid_counts(flat, video, kernels, positive, negative, taus):
    """(TP, FP) [S, len(taus)] int32 of 'smoothed > tau' for every sigma (kernels [S, V, 2M + 1])
    and threshold, over the positions marked positive / negative (labels, masks [P])."""

    def counts(kernels_s):
        smoothed = _smooth_flat(flat, video, kernels_s)

        def above(mask):
            ranked = jnp.sort(jnp.where(mask, smoothed, -jnp.inf))
            return ranked.shape[0] - jnp.searchsorted(ranked, taus, side="right")

        return above(positive), above(negative)

    return jax.vmap(counts)(kernels)


def calibrate(val_scores, val_labels):
    """Grid search of (sigma, tau) for F1 over all validation segments.

    Every video is smoothed with each sigma of SIGMA_GRID, segments with a smoothed score > tau
    (TAU_GRID) are predicted anomalous, and F1 is taken over the segments of all videos together.
    All 891 grid points are counted in one jit-compiled call; F1 is then compared exactly (as
    fractions), and the first maximum in sigma-major order wins, as in the original. If no grid
    point reaches F1 > 0 the original's defaults (DEFAULT_SIGMA, DEFAULT_TAU) are returned.

    Args:
      val_scores: sequence of [T_v] segment scores, one per video.
      val_labels: sequence of [T_v] 0/1 segment labels.

    Returns:
      (sigma, tau) as Python floats, values of SIGMA_GRID and TAU_GRID.
    """
    if len(val_scores) != len(val_labels):
        raise ValueError(f"{len(val_scores)} score sequences but {len(val_labels)} label sequences")
    if not val_scores:
        raise ValueError("calibration needs at least one validation video")
    scores, labels = [], []
    for i, (s, y) in enumerate(zip(val_scores, val_labels, strict=True)):
        s = _check_scores(s, name=f"val_scores[{i}]")
        y = np.asarray(y)
        if y.shape != s.shape:
            raise ValueError(f"val_labels[{i}] has shape {y.shape}, val_scores[{i}] {s.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"val_labels[{i}] must be 0/1")
        scores.append(s)
        labels.append(y == 1)

    half = max(kernel_half_width(s, np.inf) for s in SIGMA_GRID)
    lengths = [len(s) for s in scores]
    # Each video followed by `half` zeros (and `half` before the first): no kernel reaches across.
    starts = half + np.cumsum([0] + [n + half for n in lengths[:-1]])
    positions = int(starts[-1] + lengths[-1])
    flat = np.zeros(positions + 2 * half, np.float32)
    video = np.zeros(positions, np.int32)
    positive = np.zeros(positions, bool)
    negative = np.zeros(positions, bool)
    for v, (start, s, y) in enumerate(zip(starts, scores, labels, strict=True)):
        flat[start + half : start + half + len(s)] = s
        video[start : start + len(s)] = v
        positive[start : start + len(s)] = y
        negative[start : start + len(s)] = ~y
    kernels = np.stack(
        [np.stack([_kernel(sigma, n, half) for n in lengths]) for sigma in SIGMA_GRID]
    ).astype(np.float32)
    tp, fp = _grid_counts(flat, video, kernels, positive, negative, TAU_GRID.astype(np.float32))
    tp, fp = np.asarray(tp), np.asarray(fp)
    num_positive = int(positive.sum())

    best, best_f1 = (DEFAULT_SIGMA, DEFAULT_TAU), fractions.Fraction(0)
    for i, sigma in enumerate(SIGMA_GRID):
        for j, tau in enumerate(TAU_GRID):
            true_pos = int(tp[i, j])
            denominator = true_pos + int(fp[i, j]) + num_positive
            f1 = fractions.Fraction(2 * true_pos, denominator) if true_pos else 0
            if f1 > best_f1:
                best, best_f1 = (float(sigma), float(tau)), f1
    return best
