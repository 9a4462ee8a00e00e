"""Feature store: round trips, atomic writes, refusing mixed settings, several writers."""

import dataclasses
import threading

import numpy as np
import pytest

from headhunt_jax import paths
from headhunt_jax import store as st
from headhunt_jax.store import FeatureStore, StoreError, StoreSpec, VideoFeatures
from headhunt_jax.video import VideoMetadata

SPEC = StoreSpec(
    backbone="tiny",
    prompt="Identify any abnormal events.",
    dtype="float32",
    image_size=56,
    frames_per_segment=4,
    segment_length=8,
    layers=(0, 1),
    heads=((1, 2), (0, 3)),
    feature_shape=(2, 5),
)


def video(video_id, segments, label=None, seed=0):
    rng = np.random.default_rng(seed)
    starts = np.arange(segments) * 8
    return VideoFeatures(
        video_id=video_id,
        features=rng.standard_normal((segments, 2, 5)).astype(np.float32),
        start_frames=starts,
        end_frames=starts + 8,
        frame_indices=starts[:, None] + np.array([1, 3, 5, 7]),
        metadata=VideoMetadata(
            path=f"/videos/{video_id}",
            fps=25.0,
            fps_source="stream",
            frame_count=8 * segments + 3,
            segment_count=segments,
            short=False,
            tail_frames=3,
            stated_frames=None,
        ),
        label=label,
    )


def assert_same(got: VideoFeatures, want: VideoFeatures):
    for f in dataclasses.fields(VideoFeatures):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        else:
            assert a == b, f.name


def test_round_trip_and_flat_arrays(tmp_path):
    store = FeatureStore.create(tmp_path / "s", SPEC)
    videos = [video("b/x y%.mp4", 3, label=np.int64(1), seed=1), video("a.mp4", 2, seed=2)]
    for v in videos:
        store.write(v)
    # Ids with separators and odd characters map to one flat file each, and back.
    assert sorted(p.name for p in store.path.iterdir()) == [
        "a.mp4.npz",
        "b%2Fx%20y%25.mp4.npz",
        "store.json",
    ]
    reopened = FeatureStore(tmp_path / "s")
    assert reopened.spec == SPEC and len(reopened) == 2
    assert reopened.video_ids() == ["a.mp4", "b/x y%.mp4"]
    assert_same(reopened.read("b/x y%.mp4"), videos[0])
    assert [v.video_id for v in reopened] == ["a.mp4", "b/x y%.mp4"]

    arrays = reopened.load()
    assert arrays.features.shape == (5, 2, 5) and arrays.features.dtype == np.float32
    np.testing.assert_array_equal(arrays.features[2:], videos[0].features)
    assert arrays.labels.tolist() == [-1, -1, 1, 1, 1]
    assert arrays.video_ids.tolist() == ["a.mp4"] * 2 + ["b/x y%.mp4"] * 3
    assert arrays.segments.tolist() == [0, 1, 0, 1, 2]
    assert reopened.load([]).features.shape == (0, 2, 5)
    with pytest.raises(StoreError, match="without a label: a.mp4"):
        reopened.load(require_labels=True)
    assert reopened.load(["b/x y%.mp4"], require_labels=True).labels.tolist() == [1, 1, 1]


def test_other_settings_are_refused_by_name(tmp_path):
    FeatureStore.create(tmp_path, SPEC)
    FeatureStore.create(tmp_path, SPEC)  # the same settings reopen
    other = dataclasses.replace(SPEC, prompt="Something else.", heads=((1, 2),))
    with pytest.raises(StoreError, match="store.json.*prompt: store has.*heads: store has"):
        FeatureStore.create(tmp_path, other)
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(tmp_path / "nothing")


def test_a_file_of_other_settings_is_not_mixed_in(tmp_path):
    FeatureStore.create(tmp_path / "one", SPEC).write(video("a.mp4", 1))
    other = FeatureStore.create(tmp_path / "two", dataclasses.replace(SPEC, prompt="Other."))
    (tmp_path / "one" / "a.mp4.npz").rename(tmp_path / "two" / "a.mp4.npz")
    with pytest.raises(StoreError, match=r"a.mp4.npz: written for a store of other settings"):
        other.read("a.mp4")


def test_write_checks_shapes(tmp_path):
    store = FeatureStore.create(tmp_path, SPEC)
    bad = dataclasses.replace(video("a.mp4", 2), features=np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"a.mp4: features must be float32 \[2, 2, 5\]"):
        store.write(bad)


def test_interrupted_writes_never_read_as_complete(tmp_path, monkeypatch):
    store = FeatureStore.create(tmp_path, SPEC)
    store.write(video("done.mp4", 2))
    complete = (tmp_path / "done.mp4.npz").read_bytes()
    # A writer killed mid-file leaves its temporary: ignored by every reader.
    (tmp_path / "cut.mp4.npz.0123abcd.tmp").write_bytes(complete[: len(complete) // 2])

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(paths.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write(video("late.mp4", 1))
    monkeypatch.undo()
    assert store.video_ids() == ["done.mp4"]
    assert "cut.mp4" not in store and "late.mp4" not in store
    with pytest.raises(KeyError, match="no features for video 'cut.mp4'"):
        store.read("cut.mp4")
    # The next complete write of that video clears the leftover.
    store.write(video("cut.mp4", 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.mp4.npz",
        "done.mp4.npz",
        "store.json",
    ]


def test_a_damaged_file_is_named(tmp_path):
    store = FeatureStore.create(tmp_path, SPEC)
    (tmp_path / "bad.mp4.npz").write_bytes(b"not a zip file")
    with pytest.raises(StoreError, match="bad.mp4.npz: unreadable feature file"):
        store.read("bad.mp4")


def test_several_writers_share_a_store(tmp_path):
    errors = []

    def writer(k):
        try:
            store = FeatureStore.create(tmp_path / "shared", SPEC)
            for i in range(3):
                store.write(video(f"w{k}/{i}.mp4", 1 + i, seed=k))
        except Exception as err:  # surfaced below; a thread cannot fail the test itself
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = FeatureStore(tmp_path / "shared")
    assert len(store) == 12 and store.spec == SPEC
    assert_same(store.read("w2/1.mp4"), video("w2/1.mp4", 2, seed=2))
    assert not list((tmp_path / "shared").glob("*.tmp"))


def test_a_store_on_a_bucket_reads_what_a_local_one_does(bucket, tmp_path):
    local = FeatureStore.create(tmp_path, SPEC)
    remote = FeatureStore.create(f"{bucket}/run/store", SPEC)
    for v in (video("a/b c.mp4", 3, label=1, seed=1), video("x.mp4", 2, label=0, seed=2)):
        local.write(v)
        remote.write(v)
    again = FeatureStore(f"{bucket}/run/store")  # a second reader: no state shared
    assert again.video_ids() == local.video_ids() == ["a/b c.mp4", "x.mp4"]
    assert "x.mp4" in again and "y.mp4" not in again
    for got, want in zip(
        again.load().__dict__.values(), local.load().__dict__.values(), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(StoreError, match="other features"):
        FeatureStore.create(f"{bucket}/run/store", dataclasses.replace(SPEC, prompt="other"))


def test_on_a_bucket_a_video_counts_only_once_committed(bucket):
    """A writer killed between a video's object and its commit marker leaves an object that no
    reader takes for features; writing the video again commits it."""
    store = FeatureStore.create(bucket, SPEC)
    store.write(video("done.mp4", 2))
    orphan = paths.of(bucket) / st.file_name("cut.mp4")
    paths.write_bytes(orphan, b"PK\x03\x04 half a file")
    assert FeatureStore(bucket).video_ids() == ["done.mp4"]
    assert "cut.mp4" not in store
    with pytest.raises(KeyError, match="no features for video 'cut.mp4'"):
        store.read("cut.mp4")
    store.write(video("cut.mp4", 1))
    assert FeatureStore(bucket).video_ids() == ["cut.mp4", "done.mp4"]
    assert store.read("cut.mp4").num_segments == 1


def test_a_store_in_a_missing_bucket_is_one_line(s3_server):
    with pytest.raises(paths.RemoteError, match=r"s3://no-such-bucket-1: no such bucket"):
        FeatureStore.create("s3://no-such-bucket-1/store", SPEC)
    with pytest.raises(paths.RemoteError, match=r"s3://no-such-bucket-1: no such bucket"):
        FeatureStore("s3://no-such-bucket-1/store")
