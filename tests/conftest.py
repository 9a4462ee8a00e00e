"""Fixtures the test modules share."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def rng():
    """A fixed-seed generator, one a test module (its draws follow the module's tests in order)."""
    return np.random.default_rng(0)
