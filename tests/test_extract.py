"""Extraction into a feature store, on a tiny random InternVL checkpoint and clips made here.

Segments are 8 frames with 4 sampled (tiny clips, short prompts); the reference for every stored
feature is ``head_features`` called directly on the reader's segments, all in one batch of
another size, so batch composition and padding must not matter. Tolerance: 1e-6 relative.
"""

import threading
from pathlib import Path

import av
import numpy as np
import pytest
from numerics import rel_err

from headhunt_jax import backbone, extract, features
from headhunt_jax.backbones.internvl.prompt import build_prompt_ids
from headhunt_jax.extract import extract_features, video_ids
from headhunt_jax.store import FeatureStore, StoreError
from headhunt_jax.video import VideoReader, clip_frame_indices

hf = pytest.importorskip("hf_reference")

PROMPT = "Identify any abnormal events or safety hazards in this video."
SEGMENT = dict(frames_per_segment=4, segment_length=8)
BATCH = 4
# Features of a batch against one sample alone: float32 runs of other shapes sum in other orders
# (differences of about 1e-6 relative, e.g. 1.2e-6 for one clip a video beside two others).
TOL = 1e-5
# Segments: a 3, sub/b 2, short 1: the first batch holds all of a and b's first segment.
CLIPS = {"a.mp4": 30, "sub/b.mp4": 20, "short.mp4": 5}
LABELS = {"a.mp4": 1, "short.mp4": 0}


def write_clip(path: Path, n_frames: int, codec="mpeg4", seed=0) -> Path:
    """A 32x32 clip of smooth random pictures (distinct per frame, so segments differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
        for _ in range(n_frames):
            small = rng.integers(0, 256, (4, 4, 3), np.uint8)
            picture = np.kron(small, np.ones((8, 8, 1), np.uint8))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    return backbone.load_backbone(hf.save_tiny_internvl(tmp_path_factory.mktemp("ckpt")))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return root, [write_clip(root / name, n, seed=i) for i, (name, n) in enumerate(CLIPS.items())]


@pytest.fixture(scope="module")
def all_heads(bb, clips, tmp_path_factory):
    """An uninterrupted all-heads run and its report."""
    root, paths = clips
    out = tmp_path_factory.mktemp("store") / "all"
    report = extract_features(
        bb,
        paths,
        PROMPT,
        out,
        root=root,
        labels=LABELS,
        batch_size=BATCH,
        progress=False,
        **SEGMENT,
    )
    return FeatureStore(out), report


@pytest.fixture(scope="module")
def direct(bb, clips):
    """{video id: (segments, head_features of them all in one batch)}."""
    root, paths = clips
    ids = build_prompt_ids(bb.path, PROMPT, 4, bb.config.tokens_per_image, bb.config.image_token_id)
    segments = {}
    for vid, path in zip(video_ids(paths, root), paths, strict=True):
        segments[vid] = list(VideoReader(path, image_size=56, **SEGMENT))
    flat = [s for segs in segments.values() for s in segs]
    pixels = np.concatenate([s.pixels for s in flat])
    feats = np.asarray(features.head_features(bb, np.tile(ids, (len(flat), 1)), pixels))
    out, i = {}, 0
    for vid, segs in segments.items():
        out[vid] = (segs, feats[i : i + len(segs)])
        i += len(segs)
    return out


def test_all_heads_equal_head_features_on_the_same_segments(bb, all_heads, direct):
    store, report = all_heads
    assert report.written == ("a.mp4", "sub/b.mp4", "short.mp4")
    assert report.short == ("short.mp4",) and not report.failures and not report.skipped
    # Six segments in two batches of four: batches span videos, the last one is padded.
    assert (report.segments, report.batches) == (6, 2)
    assert store.spec.feature_shape == (bb.num_layers, bb.num_heads, bb.head_dim)
    assert store.spec.heads is None and store.spec.layers == (0, 1, 2)
    for vid, (segments, want) in direct.items():
        got = store.read(vid)
        assert got.features.shape == want.shape and got.features.dtype == np.float32
        assert rel_err(got.features, want) <= TOL, vid
        assert got.start_frames.tolist() == [s.start_frame for s in segments]
        assert got.end_frames.tolist() == [s.end_frame for s in segments]
        np.testing.assert_array_equal(got.frame_indices, [s.frame_indices for s in segments])
        assert got.metadata.segment_count == len(segments)
        assert got.label == LABELS.get(vid)
    short = store.read("short.mp4").metadata
    assert short.short and short.frame_count == 5 and short.fps == 25.0
    assert store.read("a.mp4").metadata.tail_frames == 6
    assert store.load().labels.tolist() == [1, 1, 1, 0, -1, -1]


def test_expert_heads_equal_the_slice_of_all_heads(bb, clips, all_heads, tmp_path, capsys):
    root, paths = clips
    heads = [(1, 2), (0, 3), (1, 0)]  # forward stops after layer 1, of 3
    report = extract_features(
        bb, paths, PROMPT, tmp_path, heads=heads, root=root, batch_size=BATCH, **SEGMENT
    )
    assert f"{report.segments}/6" in capsys.readouterr().err  # progress total known up front
    experts = FeatureStore(tmp_path)
    assert experts.spec.heads == tuple(heads) and experts.spec.layers == (0, 1)
    assert experts.spec.feature_shape == (3, bb.head_dim)
    everything = all_heads[0].load()
    got = experts.load()
    assert got.video_ids.tolist() == everything.video_ids.tolist()
    layers, head = np.asarray(heads).T
    assert rel_err(got.features, everything.features[:, layers, head]) <= TOL


def test_batches_never_retrace(bb, clips, all_heads, tmp_path):
    root, paths = clips
    sizes = [features.forward._cache_size()]
    for out in ("first", "second"):
        report = extract_features(
            bb, paths, PROMPT, tmp_path / out, root=root, batch_size=2, progress=False, **SEGMENT
        )
        assert report.batches == 3
        sizes.append(features.forward._cache_size())
    # At most one compilation for the batch size (none if an earlier test compiled it), none per
    # batch or per run.
    assert sizes[1] - sizes[0] <= 1 and sizes[2] == sizes[1]


def test_resume_after_an_interruption_recomputes_only_the_rest(
    bb, clips, all_heads, tmp_path, monkeypatch
):
    root, paths = clips
    calls = []

    def dies_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return features.features_one_prompt(*args, **kwargs)

    monkeypatch.setattr(extract, "features_one_prompt", dies_on_second_batch)
    run = dict(root=root, labels=LABELS, batch_size=BATCH, progress=False, **SEGMENT)
    with pytest.raises(KeyboardInterrupt):
        extract_features(bb, paths, PROMPT, tmp_path, **run)
    assert not [t for t in threading.enumerate() if t.name == "headhunt-decode"]
    store = FeatureStore(tmp_path)
    assert store.video_ids() == ["a.mp4"]
    finished = tmp_path / "a.mp4.npz"
    stamp = finished.stat().st_mtime_ns
    # As if the run had been killed while writing b: a half-written temporary.
    partial = tmp_path / "sub%2Fb.mp4.npz.0123abcd.tmp"
    partial.write_bytes(finished.read_bytes()[:1000])
    assert "sub/b.mp4" not in store

    calls.clear()
    report = extract_features(bb, paths, PROMPT, tmp_path, **run)
    assert report.skipped == ("a.mp4",) and report.written == ("sub/b.mp4", "short.mp4")
    assert (report.segments, report.batches, len(calls)) == (3, 1, 1)
    assert finished.stat().st_mtime_ns == stamp and not partial.exists()
    want, got = all_heads[0].load(), store.load()
    assert got.video_ids.tolist() == want.video_ids.tolist()
    assert got.labels.tolist() == want.labels.tolist()
    assert rel_err(got.features, want.features) <= TOL


def test_bad_videos_are_listed_and_the_others_stored(bb, clips, all_heads, tmp_path):
    root, paths = clips
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 50)
    whole = write_clip(tmp_path / "cut.mkv", 64, codec="ffv1")
    data = whole.read_bytes()
    cut = tmp_path / "cut_half.mkv"
    cut.write_bytes(data[: len(data) // 2])  # decodes a few segments, then proves truncated
    videos = [junk, paths[0], cut, tmp_path / "missing.mp4", paths[2]]
    report = extract_features(
        bb, videos, PROMPT, tmp_path / "store", batch_size=BATCH, progress=False, **SEGMENT
    )
    assert report.written == ("a.mp4", "short.mp4")
    # The cut video's first segments were computed, then dropped with it.
    assert report.segments > 3 + 1
    problems = {Path(f.path).name: f.problem for f in report.failures}
    assert list(problems) == ["junk.mp4", "cut_half.mkv", "missing.mp4"]
    assert problems["junk.mp4"].startswith("not a readable video file")
    assert problems["cut_half.mkv"].startswith("truncated")
    assert problems["missing.mp4"] == "no such file"
    assert "failed: " + str(cut) + ": truncated" in report.summary()
    store = FeatureStore(tmp_path / "store")
    assert store.video_ids() == ["a.mp4", "short.mp4"]
    assert rel_err(store.read("a.mp4").features, all_heads[0].read("a.mp4").features) <= TOL


def test_settings_and_inputs_are_checked(bb, clips, all_heads):
    root, paths = clips
    with pytest.raises(StoreError, match="prompt: store has"):
        extract_features(bb, paths, "Another prompt.", all_heads[0].path, root=root, **SEGMENT)
    with pytest.raises(ValueError, match=r"heads \[\(3, 0\)\] are not in the backbone"):
        extract_features(bb, paths, PROMPT, root / "x", heads=[(3, 0)], **SEGMENT)
    with pytest.raises(ValueError, match="same video id 'a.mp4'"):
        video_ids([root / "a.mp4", root / "sub" / "a.mp4"])
    with pytest.raises(ValueError, match="not under the video root"):
        video_ids([root / "a.mp4"], root / "sub")
    assert video_ids(paths, root) == list(CLIPS)
    assert extract.list_videos(root) == sorted(paths)


def test_bfloat16_backbone(bb, clips, all_heads, tmp_path):
    root, paths = clips
    half = backbone.load_backbone(bb.path, dtype="bfloat16")
    extract_features(
        half, paths[2:], PROMPT, tmp_path, root=root, batch_size=1, progress=False, **SEGMENT
    )
    store = FeatureStore(tmp_path)
    assert store.spec.dtype == "bfloat16"
    got = store.read("short.mp4").features
    assert got.dtype == np.float32
    # Pixels reach the backbone cast to its dtype, as a direct call with bfloat16 pixels.
    ids = build_prompt_ids(bb.path, PROMPT, 4, bb.config.tokens_per_image, bb.config.image_token_id)
    (segment,) = VideoReader(paths[2], image_size=56, **SEGMENT)
    pixels = segment.pixels.astype(np.dtype(half.dtype))
    np.testing.assert_array_equal(got, features.head_features(half, ids[None], pixels))
    # bfloat16 keeps 8 bits of mantissa; three random layers leave a few percent.
    assert rel_err(got, all_heads[0].read("short.mp4").features) <= 0.1


def test_several_prompts_decode_once_and_match_separate_runs(
    bb, clips, all_heads, tmp_path, monkeypatch
):
    root, paths = clips
    opened = []
    real_init = extract.VideoReader.__init__

    def counting_init(self, path, **kw):
        opened.append(Path(path).name)
        real_init(self, path, **kw)

    monkeypatch.setattr(extract.VideoReader, "__init__", counting_init)
    prompts = [PROMPT, "Is anything unusual happening here?"]
    outs = [tmp_path / "p0", tmp_path / "p1"]
    report = extract_features(
        bb, paths, prompts, outs, root=root, batch_size=4, progress=False, **SEGMENT
    )
    assert sorted(opened) == sorted(p.name for p in paths)  # each video decoded once
    assert report.stores == tuple(outs)
    for prompt, out in zip(prompts, outs, strict=True):
        alone = extract_features(
            bb,
            paths,
            prompt,
            tmp_path / f"alone-{out.name}",
            root=root,
            batch_size=4,
            progress=False,
            **SEGMENT,
        )
        got, want = FeatureStore(out).load(), FeatureStore(alone.store).load()
        assert FeatureStore(out).spec.prompt == prompt
        assert got.video_ids.tolist() == want.video_ids.tolist()
        assert rel_err(got.features, want.features) <= 1e-5


def test_one_clip_a_video(bb, clips, tmp_path):
    """``clip="video"``: one row a video, the original's frames spread over all of it, equal to
    head_features on that clip; a store of segments refuses it."""
    root, paths = clips
    out = tmp_path / "clips"
    report = extract_features(
        bb, paths, PROMPT, out, root=root, labels=LABELS, batch_size=BATCH, progress=False,
        clip="video", **SEGMENT,
    )  # fmt: skip
    assert report.segments == 3 and report.batches == 1
    store = FeatureStore(out)
    assert store.spec.clip == "video"
    ids = build_prompt_ids(bb.path, PROMPT, 4, bb.config.tokens_per_image, bb.config.image_token_id)
    for vid, path in zip(video_ids(paths, root), paths, strict=True):
        video = store.read(vid)
        frames = video.metadata.frame_count
        assert video.num_segments == 1 and video.label == LABELS.get(vid)
        assert (video.start_frames.tolist(), video.end_frames.tolist()) == ([0], [frames])
        np.testing.assert_array_equal(video.frame_indices[0], clip_frame_indices(frames, 4))
        (clip,) = VideoReader(path, image_size=56, clip="video", **SEGMENT)
        want = np.asarray(features.head_features(bb, ids[None], clip.pixels))
        assert rel_err(video.features, want) <= TOL
    segments = tmp_path / "segments"
    extract_features(bb, paths[:1], PROMPT, segments, root=root, progress=False, **SEGMENT)
    with pytest.raises(StoreError, match="clip: store has 'segment', asked for 'video'"):
        extract_features(
            bb, paths, PROMPT, segments, root=root, progress=False, clip="video", **SEGMENT
        )


def test_thumbnails_come_from_the_one_decoding_pass(bb, clips, tmp_path, monkeypatch):
    """A thumbnail a segment, of its middle sampled frame, stored with its features; each video
    is opened once (the thumbnails need no second pass)."""
    import io

    from PIL import Image

    root, paths = clips
    opened = []
    real_open = av.open
    monkeypatch.setattr(
        av, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k)
    )
    report = extract_features(
        bb, paths, PROMPT, tmp_path / "s", root=root, batch_size=BATCH,
        thumbnail_height=16, progress=False, **SEGMENT,
    )  # fmt: skip
    assert sorted(opened) == sorted(map(str, paths))
    store = FeatureStore(report.store)
    for path in paths:
        stored = store.read(path.relative_to(root).as_posix())
        assert len(stored.thumbnails) == stored.num_segments
        with av.open(str(path)) as container:
            small = [
                np.asarray(f.to_image().resize((16, 16), Image.Resampling.BILINEAR), np.float32)
                for f in container.decode(video=0)
            ]
        for jpeg, indices in zip(stored.thumbnails, stored.frame_indices, strict=True):
            thumb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32)
            assert thumb.shape == (16, 16, 3)
            # Every frame is another random picture: the nearest is the one the thumbnail shows.
            nearest = np.argmin([np.abs(thumb - frame).mean() for frame in small])
            assert nearest == indices[len(indices) // 2]
    plain = extract_features(
        bb, paths[:1], PROMPT, tmp_path / "p", root=root, progress=False, **SEGMENT
    )
    assert FeatureStore(plain.store).read("a.mp4").thumbnails is None
