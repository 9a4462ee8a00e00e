"""Fixtures the test modules share."""

import os

import numpy as np
import pytest
from buckets import GCSFS_SETTINGS, bucket, gcs_bucket, gcs_server, s3_server  # noqa: F401

os.environ.update(GCSFS_SETTINGS)  # before gcsfs is imported anywhere


@pytest.fixture(scope="module")
def rng():
    """A fixed-seed generator, one a test module (its draws follow the module's tests in order)."""
    return np.random.default_rng(0)
