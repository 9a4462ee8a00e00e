"""The error measure the numerical tests share."""

import numpy as np


def rel_err(got, want) -> float:
    """max |got - want| / max |want| over the whole arrays, in float64 (1e-30 at least below,
    so that an all-zero ``want`` gives a large error, not a division by zero)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
