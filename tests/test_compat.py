"""Files written by headhunt_jax 0.1.0 (tests/fixtures/v0_1_0, written at commit 0375c8d) still
load and give the same numbers."""

from pathlib import Path

import numpy as np
import pytest

from headhunt_jax.backbone import fingerprint, preset
from headhunt_jax.detector import Detector, detector_scores
from headhunt_jax.features import gather_heads
from headhunt_jax.store import FeatureStore, StoreError

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
    experts = gather_heads(check["features"], detector.expert_heads)
    scores = detector_scores(detector, experts.reshape(len(experts), -1))
    np.testing.assert_allclose(scores, check["scores"], rtol=1e-6)


# Backbone fingerprints as 0.1.0 computed them (stores and detectors record them).
FINGERPRINTS_0_1_0 = {
    "InternVL3-1B": "4694617203437e19",
    "InternVL3-2B": "34d647d76972e1d7",
    "InternVL3-8B": "4f6203cdb6dd81b6",
    "InternVL3-14B": "666af040808ac8af",
}


def as_0_1_0(name):
    """0.1.0's preset: the same but for the 1B's and 2B's head, tied there (their checkpoints
    store it apart: the presets were corrected)."""
    import dataclasses

    cfg = preset(name)
    if name in ("InternVL3-1B", "InternVL3-2B"):
        text = dataclasses.replace(cfg.text, tie_word_embeddings=True)
        cfg = dataclasses.replace(cfg, text=text)
    return cfg


def test_fingerprints_of_0_1_0_architectures_are_unchanged():
    got = {name: fingerprint(as_0_1_0(name)) for name in FINGERPRINTS_0_1_0}
    assert got == FINGERPRINTS_0_1_0
    assert fingerprint(as_0_1_0("InternVL3-1B").text) == "485229855744587b"


def test_a_store_of_0_1_0_resumes_under_a_processor_spec(tmp_path):
    """Stores now record the processor's spec; one written before (no spec) is taken as it is
    when the rest of its settings match, and keeps its files' digests."""
    import dataclasses
    import shutil

    from headhunt_jax.store import processor_spec

    old = shutil.copytree(FIXTURES / "store", tmp_path / "store")
    spec = dataclasses.replace(
        FeatureStore(old).spec, processor=processor_spec({"image_size": 56, "mean": [0.5] * 3})
    )
    store = FeatureStore.create(old, spec)
    assert store.read("normal/b_label_A.mp4").features.shape == (2, 2, 2, 4)
    new = FeatureStore.create(tmp_path / "new", spec)
    assert FeatureStore(new.path).spec == spec
    other = dataclasses.replace(spec, processor=processor_spec({"image_size": 28}))
    with pytest.raises(StoreError, match="processor"):
        FeatureStore.create(new.path, other)


# A converted backbone with one ``layers_N`` subtree per layer, as 0.1.0 wrote them (the layout
# until the layers were stacked for scanning; tests/fixtures/unstacked/make.py wrote it).
UNSTACKED = Path(__file__).parent / "fixtures" / "unstacked"


@pytest.mark.parametrize("on_mesh", [False, True])
def test_unstacked_converted_backbone_loads_and_gives_the_same_features(on_mesh):
    """Restored layer by layer and stacked (on a mesh: each layer into its shards)."""
    import headhunt_jax as hh

    check = np.load(UNSTACKED / "features.npz")
    bb = hh.load_backbone(UNSTACKED / "backbone", mesh=hh.make_mesh() if on_mesh else None)
    assert bb.params["language_model"]["layers"]["attn"]["q_proj"]["kernel"].shape[0] == 4
    ids, pixels = check["input_ids"], check["pixel_values"]
    got = hh.head_features(bb, ids, pixels)
    np.testing.assert_allclose(got, check["all_layers"], rtol=1e-5, atol=1e-6)
    got = hh.head_features(bb, ids, pixels, layers=[2, 0])
    np.testing.assert_allclose(got, check["layers_2_0"], rtol=1e-5, atol=1e-6)
