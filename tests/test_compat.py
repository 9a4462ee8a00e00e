"""Files written by headhunt_jax 0.1.0 (tests/fixtures/v0_1_0, written at commit 0375c8d) still
load and give the same numbers."""

from pathlib import Path

import numpy as np

from headhunt_jax.detector import Detector
from headhunt_jax.store import FeatureStore

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1_0"


def test_store_of_0_1_0_reads():
    store = FeatureStore(FIXTURES / "store")
    assert store.video_ids() == ["Fighting/a_label_B1-0-0.mp4", "normal/b_label_A.mp4"]
    video = store.read("Fighting/a_label_B1-0-0.mp4")
    assert video.features.shape == (3, 2, 2, 4) and video.label == 1
    assert video.start_frames.tolist() == [0, 8, 16]
    assert store.spec.segment_length == 8 and store.spec.heads is None


def test_detector_of_0_1_0_scores_as_it_did():
    detector = Detector.load(FIXTURES / "detector")
    check = np.load(FIXTURES / "detector_check.npz")
    assert (detector.sigma, detector.tau) == (2.0, 0.4)
    np.testing.assert_allclose(
        detector.segment_scores(check["features"]), check["scores"], rtol=1e-6
    )
