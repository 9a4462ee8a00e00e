"""Fixtures the test modules share."""

import numpy as np
import pytest
from buckets import bucket, gcs_bucket, gcs_server, s3_server  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def rng():
    """A fixed-seed generator, one a test module (its draws follow the module's tests in order)."""
    return np.random.default_rng(0)
