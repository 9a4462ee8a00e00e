"""Two probes on one extraction: stores holding heads and hidden states, detectors of either
probe (``detector.Probe``), DLSP over stores (``experts.hunt_layer``), and files written before
the hidden probe (tests/fixtures/v0_1_0) reading as heads."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import headhunt_jax as hh
from headhunt_jax import experts, fitting, plots
from headhunt_jax.detector import Detector, Probe, detector_scores
from headhunt_jax.errors import InputError
from headhunt_jax.extract import check_kinds
from headhunt_jax.store import FeatureStore, StoreSpec, VideoFeatures
from headhunt_jax.video import VideoMetadata

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1_0"
L, H, D, E = 3, 2, 4, 8
SIGNAL_LAYER = 1


def spec(prompt="p", **fields) -> StoreSpec:
    base = dict(
        backbone="tiny",
        prompt=prompt,
        dtype="float32",
        image_size=32,
        frames_per_segment=4,
        segment_length=8,
        layers=tuple(range(L)),
        heads=None,
        feature_shape=(L, H, D),
    )
    return StoreSpec(**base | fields)


BOTH = dict(kinds=("heads", "hidden"), hidden_layers=tuple(range(L)), hidden_shape=(L, E))


def video(i: int, label: int, rng, segments=4) -> VideoFeatures:
    hidden = rng.normal(size=(segments, L, E)).astype(np.float32)
    hidden[:, SIGNAL_LAYER] += 2.0 * label  # the anomaly shows in one layer's hidden state
    heads = rng.normal(size=(segments, L, H, D)).astype(np.float32)
    heads[:, 2, 1] += 1.5 * label
    return VideoFeatures(
        video_id=f"v{i:02d}_label_{'B1' if label else 'A'}.mp4",
        features=heads,
        start_frames=np.arange(segments) * 8,
        end_frames=np.arange(1, segments + 1) * 8,
        frame_indices=np.tile(np.arange(4), (segments, 1)),
        metadata=VideoMetadata(
            f"/v{i}.mp4", 25.0, "stream", 8 * segments, segments, False, 0, None
        ),
        label=label,
        hidden=hidden,
    )


@pytest.fixture
def stores(tmp_path):
    out = []
    for m in range(2):
        rng = np.random.default_rng(m)
        store = FeatureStore.create(tmp_path / f"p{m}", spec(f"prompt {m}", **BOTH))
        for i in range(12):
            store.write(video(i, i % 2, rng))
        out.append(store)
    return out


def test_a_store_holds_both_kinds_and_says_so(stores):
    store = FeatureStore(stores[0].path)
    assert store.spec.kinds == ("heads", "hidden") and store.spec.holds("hidden")
    v = store.read(store.video_ids()[0])
    assert v.features.shape == (4, L, H, D) and v.hidden.shape == (4, L, E)
    assert set(v.kinds()) == {"heads", "hidden"}
    record = json.loads((store.path / "store.json").read_text())
    assert record["kinds"] == ["heads", "hidden"] and record["hidden_shape"] == [L, E]
    with pytest.raises(ValueError, match="hidden states must be float32"):
        store.write(dataclasses.replace(v, video_id="x", hidden=None))


def test_a_heads_store_keeps_the_description_it_had():
    """The added fields are written only when they differ from their defaults, so the digest
    that every video file records is unchanged."""
    assert "kinds" not in spec().to_json() and spec().digest() == spec(kinds=("heads",)).digest()


def test_store_and_detector_of_0_1_0_read_as_heads():
    store = FeatureStore(FIXTURES / "store")
    assert store.spec.kinds == ("heads",) and not store.spec.holds("hidden")
    assert store.read(store.video_ids()[0]).hidden is None
    detector = Detector.load(FIXTURES / "detector")
    assert detector.probe.kind == "heads" and detector.layer is None
    v = store.read(store.video_ids()[0])
    with pytest.raises(InputError, match="holds no hidden features"):
        Probe.hidden(0).features_of(v.kinds(), store.spec, str(store.path))


def test_dlsp_over_stores_finds_the_layer_and_a_hidden_detector_scores_it(stores, tmp_path):
    result = experts.hunt_layer(stores)
    assert result.layer == SIGNAL_LAYER and result.prompt_scores.shape == (2, L)
    np.testing.assert_allclose(result.scores, result.prompt_scores.mean(axis=0), rtol=1e-6)
    experts.write_layers(tmp_path / "layers.json", result)
    assert experts.load_layer(tmp_path / "layers.json") == SIGNAL_LAYER
    assert plots.layer_criteria(result, tmp_path / "layers.png").stat().st_size > 1000
    detector = fitting.fit(stores[0], Probe.hidden(result.layer))
    assert detector.probe.kind == "hidden" and detector.scorer.feature_dim == E
    detector.save(tmp_path / "detector")
    loaded = Detector.load(tmp_path / "detector")
    assert loaded.layer == SIGNAL_LAYER and loaded.expert_heads is None
    assert loaded.training["probe"] == "hidden"
    v = stores[1].read(stores[1].video_ids()[1])  # an anomalous video
    x = loaded.features_of(v.kinds(), stores[1].spec)
    np.testing.assert_array_equal(x, v.hidden[:, SIGNAL_LAYER])
    assert detector_scores(loaded, x).min() > 0.5


def test_both_probes_fit_on_one_store(stores):
    heads = fitting.fit(stores[0], np.array([[2, 1], [0, 0]]))
    hidden = fitting.fit(stores[0], Probe.hidden(SIGNAL_LAYER))
    v = stores[0].read(stores[0].video_ids()[1])
    assert heads.features_of(v.kinds(), stores[0].spec).shape == (4, 2 * D)
    assert hidden.features_of(v.kinds(), stores[0].spec).shape == (4, E)


def test_probe_errors_are_one_line(stores):
    v = stores[0].read(stores[0].video_ids()[0])
    only = dataclasses.replace(stores[0].spec, hidden_layers=(0,), hidden_shape=(1, E))
    with pytest.raises(InputError, match="not layer 2"):
        Probe.hidden(2).features_of({"hidden": v.hidden[:, :1]}, only, "s")
    with pytest.raises(InputError, match="a hidden probe"):
        Probe("hidden", None, -1)
    with pytest.raises(InputError, match="unknown probe"):
        Probe("tails", np.array([[0, 0]]))
    with pytest.raises(InputError, match="features must be one or more of heads, hidden"):
        check_kinds(["heads", "hiden"])
    scorer = hh.fit_scorer(np.eye(4, dtype=np.float32), np.array([0, 1, 0, 1]))
    with pytest.raises(InputError, match="not both"):
        Detector(np.array([[0, 0]]), scorer, layer=1)
