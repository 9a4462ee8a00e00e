"""Video decoding and frame preprocessing, streamed one segment at a time.

The segmentation is the original HeadHunt-VAD pipeline's (``scripts/inference.py`` cutting a
video into windows and ``data/video_loader.py`` sampling each one):

- windows of ``segment_length`` (48) frames, back to back from frame 0; the trailing partial
  window is dropped (the original's ``max(1, total // 48)`` segments), except that a video
  shorter than one window is a single segment of all its frames;
- ``frames_per_segment`` (16) frames per window, at the centres of equal parts of the window
  (:func:`segment_frame_indices` gives the exact arithmetic);
- every sampled frame becomes one ``image_size`` square tile: a bicubic Pillow resize of the
  whole RGB frame (aspect ratio not kept), scaled to [0, 1] and normalised with a per-channel
  ``mean`` and ``std``, as the backbone's processor asks (the defaults, 448 px and the ImageNet
  statistics, are InternVL3's dynamic tiling with ``max_num=1``); a processor that keeps each
  video's own shape gives ``image_size`` as a rule (height, width) -> (height, width) instead.

Unlike the original, which reopens the video and seeks for every segment, a video is decoded once,
front to back (:class:`VideoReader`); only the frames that a segment samples are converted to RGB
and resized, and memory is bounded by one window of decoded frames, not by the video's length.
Where the original returns zero pixels or a 0.5 score for a video it cannot read, this module
raises :class:`VideoError`. On request the same pass keeps a small JPEG of each segment's middle
sampled frame (``thumbnail_height``), for reports: no second decoding to show what was scored.

The original's head hunting and scorer training use another clip unit: one clip per video, its
``frames_per_segment`` frames spread over the whole video (:func:`clip_frame_indices`;
``VideoReader(..., clip="video")``), preprocessed like a segment's.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image

from headhunt_jax import paths
from headhunt_jax.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 448
FRAMES_PER_SEGMENT = 16
SEGMENT_LENGTH = 48
FALLBACK_FPS = 30.0
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".wmv", ".mpg", ".mpeg")
CLIPS = ("segment", "video")

# A whole-video clip's frames depend on the frame count, known only after decoding. While decoding,
# the reader keeps the frames sampled for every count within this many frames of the container's
# stated count (at most 56 frames for 16 per clip); a count outside that takes a second pass.
STATED_FRAMES_SLACK = 2

# A container's declared duration may exceed the decoded frames by a frame's length, a B-frame
# delay or rounding; half a second is well above those and below one 48-frame segment at 96 fps.
TRUNCATION_TOLERANCE_S = 0.5

# PyAV's reads of a video from a bucket: larger than its 32 KiB default, so that the decoder asks
# the read-ahead stream (``paths.open_for_reading``) for fewer, bigger pieces.
URL_BUFFER_SIZE = 1 << 20


class VideoError(UserError):
    """A video that cannot be read in full: ``path`` and ``problem`` say which and why."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def segment_count(total_frames: int, segment_length: int = SEGMENT_LENGTH) -> int:
    """Number of segments in a video of ``total_frames`` frames (0 for none).

    ``total_frames // segment_length`` windows; the frames after the last whole window belong to
    no segment. A video shorter than one window is one segment of all its frames.
    """
    if total_frames <= 0:
        return 0
    return max(1, total_frames // segment_length)


def segment_frame_indices(
    segment: int,
    total_frames: int,
    segment_length: int = SEGMENT_LENGTH,
    frames_per_segment: int = FRAMES_PER_SEGMENT,
) -> np.ndarray:
    """Indices of the frames sampled from one segment: int64 [frames_per_segment], ascending.

    With ``start = segment * segment_length`` and ``last = min(start + segment_length,
    total_frames - 1)``, the span [start, last] is cut into ``frames_per_segment`` equal parts and
    the centre of each is truncated to an integer, in the original's float64 operations and order
    (``int(start + step / 2 + i * step)``). Every index lies in [start, last).

    Inside a video ``last`` is the next window's first frame, so with the defaults the samples
    are frames start + 1, 4, ..., 46, three apart. For the last window of a video whose length is a
    multiple of ``segment_length``, and for a video shorter than one window, ``last`` is the
    video's final frame, which narrows the spacing (47 / 16 for a whole last window). A window
    holding a single frame samples it ``frames_per_segment`` times.

    One deliberate difference: the original hands the bounds over as seconds (``frame / fps``)
    and turns them back into frames with ``int(seconds * fps)``; float rounding puts some bounds
    one frame low (at 30 fps, first the segment starting at frame 1968; at 25 fps, at frame 912),
    which moves that segment's samples. Here the bounds stay integers, so every segment is sampled
    as the original intends.
    """
    if not 0 <= segment < segment_count(total_frames, segment_length):
        raise ValueError(f"segment {segment} is not in a video of {total_frames} frames")
    start = segment * segment_length
    last = min(start + segment_length, total_frames - 1)
    if start >= last:
        return np.full(frames_per_segment, start, dtype=np.int64)
    step = (last - start) / frames_per_segment
    return (start + step / 2 + np.arange(frames_per_segment) * step).astype(np.int64)


def clip_frame_indices(total_frames: int, frames: int = FRAMES_PER_SEGMENT) -> np.ndarray:
    """Indices of the frames sampled from a whole video as one clip: int64 [frames], ascending.

    The original's ``get_frame_indices(total_frames, frames)`` without a bound: the span
    [0, total_frames - 1] cut into ``frames`` equal parts, the centre of each truncated to an
    integer (``int(0 + step / 2 + i * step)`` in float64). Every index lies in
    [0, total_frames - 1), so the original's clipping never changes one; a 1-frame video samples
    frame 0 ``frames`` times. This is :func:`segment_frame_indices` for one segment as long as the
    video, the same operations in the same order.
    """
    if total_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {total_frames}")
    return segment_frame_indices(0, total_frames, total_frames, frames)


@functools.cache
def _normalization_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 [3, 256]: ``(level / 255 - mean[c]) / std[c]`` for every 8-bit level.

    Computed with the float32 operations of torchvision's ToTensor and Normalize, so a table
    look-up gives the same bits as the original's transform, at a fraction of the cost.
    """
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    return (levels[None, :] - mean32) / std32


def _resized(image: Image.Image, image_size) -> np.ndarray:
    """The whole frame resized (bicubic, Pillow) to a square of ``image_size`` or, when that is
    a rule (height, width) -> (height, width), to the rule's size: uint8 [H, W, 3]."""
    width, height = image.size
    size = image_size(height, width) if callable(image_size) else (image_size, image_size)
    return np.asarray(image.convert("RGB").resize(size[::-1], Image.Resampling.BICUBIC))


def _normalized(tiles: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 [..., S, S, 3] -> float32 [..., 3, S, S], scaled to [0, 1] and normalised with the
    channels' ``mean`` and ``std``."""
    levels = _normalization_table(tuple(mean), tuple(std))
    out = np.empty((*tiles.shape[:-3], 3, *tiles.shape[-3:-1]), dtype=np.float32)
    for c in range(3):
        out[..., c, :, :] = levels[c][tiles[..., c]]
    return out


def thumbnail_jpeg(image: Image.Image, height: int, quality: int = 80) -> bytes:
    """A frame as a small JPEG ``height`` pixels high, its aspect ratio kept."""
    width = max(1, round(image.width * height / image.height))
    small = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def preprocess_frame(image: Image.Image, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """One frame as InternVL3's single tile: float32 [3, image_size, image_size].

    The whole frame is resized (bicubic, Pillow) to a square, then scaled and normalised with the
    ImageNet statistics.
    """
    return _normalized(_resized(image, image_size))


@dataclasses.dataclass(frozen=True)
class Segment:
    """One segment of a video, ready for the backbone.

    ``frame_indices``: int64 [frames_per_segment], the sampled frames (0-based, in the video);
    ``pixels``: float32 [frames_per_segment, 3, H, W], the HF layout (H = W = ``image_size``, or
    the size the reader's rule gives the video's frames).
    The segment covers frames [start_frame, end_frame). ``thumbnail``: a small JPEG of its
    middle sampled frame (``frame_indices[len // 2]``) when the reader was asked for one.
    """

    index: int
    start_frame: int
    end_frame: int
    frame_indices: np.ndarray
    pixels: np.ndarray
    thumbnail: bytes | None = None


@dataclasses.dataclass(frozen=True)
class VideoMetadata:
    """What a complete pass over a video found.

    ``frame_count`` was counted while decoding; ``stated_frames`` is what the container claims
    (None when it does not say), kept for comparison only. ``short``: the video has fewer frames
    than one segment and was processed as one segment of all its frames, as the original does.
    ``tail_frames``: frames after the last segment, in none.
    """

    path: str
    fps: float
    fps_source: Literal["stream", "fallback"]
    frame_count: int
    segment_count: int
    short: bool
    tail_frames: int
    stated_frames: int | None


class VideoReader:
    """A video opened for one sequential pass that yields its :class:`Segment` s.

    Opening checks the file and reads the stream's header; decoding happens while the reader is
    iterated, once. The reader holds at most ``segment_length`` decoded frames (for the first
    window, until the video proves longer than one segment) and then at most two segments' worth
    of candidate frames, plus the segment being built.

    Each sampled frame is resized to ``image_size`` (bicubic; a square, or a rule (height,
    width) -> (height, width) applied to each frame's size) and normalised with ``mean`` and
    ``std`` (a backbone's processor says which; the defaults are InternVL's and the ImageNet
    statistics).

    ``thumbnail_height``: when given, each segment also carries a JPEG of its middle sampled frame,
    that many pixels high (``Segment.thumbnail``), made from the frame already decoded.

    ``fps`` is the stream's average frame rate, or ``FALLBACK_FPS`` when the stream has none
    (``fps_source`` says which); it does not affect which frames are sampled.
    ``expected_segments`` is the segment count implied by the container's stated frame count, or
    None when it states none: a progress total (``tqdm(reader, total=reader.expected_segments)``),
    not a promise. ``metadata`` is set once the video has been read to its end.

    Raises :class:`VideoError` on opening for a missing, empty or non-video file or an unknown
    codec; while iterating, when no frame decodes, when a picture fails to decode after the
    first one (FFmpeg's concealment of damaged pictures is turned off), and when the last frame
    ends more than ``TRUNCATION_TOLERANCE_S`` before the duration the container declares (a
    truncated file). Segments yielded before such an error are correct; the video as a whole is
    not. Pictures before the first decodable one (a stream cut mid-GOP) are dropped, as FFmpeg
    drops them by default. A damaged stretch that the demuxer skips without a report goes
    unnoticed unless it shortens a video whose container declares its duration.

    ``clip="video"`` yields instead a single :class:`Segment` (index 0, frames [0, frame_count))
    sampling the whole video at :func:`clip_frame_indices`, the original's unit for head hunting
    and scorer training; ``segment_length`` plays no part, and ``metadata`` counts one segment,
    neither short nor with a tail. The frames to keep depend on the frame count, known only at
    the end, so it takes:

    - one pass when the container states a frame count (MP4, AVI) within
      ``STATED_FRAMES_SLACK`` frames of the decoded one: the pass keeps the frames that every count
      in that window would sample (at most 56 decoded frames for 16 per clip);
    - two passes when it states none (Matroska, WebM, MPEG-TS, raw streams) or one further off:
      the first counts the frames, the second, on the file opened afresh, keeps the
      ``frames_per_segment`` that count samples. A second pass that counts differently is a
      :class:`VideoError`.

    Either way the clip is built after the video has been decoded to its end, with the same checks
    as the segments, and ``metadata`` is set before the clip is yielded.

    ``path``: a local file or a URL (``s3://``, ``gs://``; :mod:`headhunt_jax.paths`), read
    through a read-ahead stream and kept as given (``self.path``: a ``UPath``).

    ``container``: an input PyAV has already opened (a live stream, a pipe, a file object) to read
    instead of the file at ``path``, which then only names it (a URL such as ``rtsp://`` as it
    is); the reader closes it. Segments only: a whole-video clip may need a second pass.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image_size: int | Callable[[int, int], tuple[int, int]] = IMAGE_SIZE,
        frames_per_segment: int = FRAMES_PER_SEGMENT,
        segment_length: int = SEGMENT_LENGTH,
        clip: Literal["segment", "video"] = "segment",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        thumbnail_height: int | None = None,
        container: av.container.InputContainer | None = None,
    ):
        if clip not in CLIPS:
            raise ValueError(f"clip must be one of {CLIPS}, got {clip!r}")
        if container is not None and clip != "segment":
            raise ValueError("a reader of an open container yields segments, not a video clip")
        for name, value in [
            ("image_size", 1 if callable(image_size) else image_size),
            ("frames_per_segment", frames_per_segment),
            ("segment_length", segment_length),
            ("thumbnail_height", 1 if thumbnail_height is None else thumbnail_height),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        # A name of an open container stays as given (an rtsp:// URL is no fsspec path).
        self.path = path if container is not None and paths.is_url(path) else paths.of(path)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.frames_per_segment = frames_per_segment
        self.segment_length = segment_length
        self.clip = clip
        self.thumbnail_height = thumbnail_height
        self.metadata: VideoMetadata | None = None
        self._started = False
        self._file = None  # the stream a URL is read through, closed with the container

        if container is not None:
            self._attach(container)
        else:
            self._check_file()
            self._open()
        stream = self._stream

        rate = stream.average_rate
        if rate is not None and rate > 0:
            self.fps, self.fps_source = float(rate), "stream"
        else:
            self.fps, self.fps_source = FALLBACK_FPS, "fallback"
        self.stated_frames = stream.frames or None
        if clip == "video":
            self.expected_segments: int | None = 1
        elif self.stated_frames:
            self.expected_segments = segment_count(self.stated_frames, segment_length)
        else:
            self.expected_segments = None

    def _check_file(self) -> None:
        """A :class:`VideoError` unless ``path`` is a non-empty file (an object on a bucket: one
        request for its size and kind)."""
        if paths.is_url(self.path):
            try:
                info = self.path.fs.info(self.path.path)
            except FileNotFoundError:
                raise VideoError(self.path, "no such file or object") from None
            kind, size = info.get("type"), info.get("size")
        elif not self.path.exists():
            raise VideoError(self.path, "no such file")
        else:
            kind = "file" if self.path.is_file() else "other"
            size = self.path.stat().st_size if kind == "file" else None
        if kind != "file":
            raise VideoError(self.path, "not a regular file")
        if size == 0:
            raise VideoError(self.path, "empty file")

    def _open(self) -> None:
        """Open the file's container and its best video stream, ready to decode from the start.

        A URL is read through a read-ahead stream (``paths.open_for_reading``); a local file by
        FFmpeg itself."""
        try:
            if paths.is_url(self.path):
                self._file = paths.open_for_reading(self.path)
                container = av.open(self._file, buffer_size=URL_BUFFER_SIZE)
            else:
                container = av.open(str(self.path))
        except av.FFmpegError as err:
            self._close_file()
            raise VideoError(self.path, f"not a readable video file ({err})") from err
        except BaseException:
            self._close_file()
            raise
        self._attach(container)

    def _attach(self, container: av.container.InputContainer) -> None:
        """Read ``container``'s best video stream, ready to decode from the start."""
        stream = container.streams.best("video")
        if stream is None or stream.codec_context is None:
            container.close()
            self._close_file()
            problem = "no video stream" if stream is None else "no decoder for its video codec"
            raise VideoError(self.path, problem)
        # FFmpeg conceals damaged pictures and carries on by default; a detector must not score
        # concealment artefacts, so decoding errors are made to surface as exceptions.
        stream.codec_context.options = {"err_detect": "explode"}
        self._container, self._stream = container, stream

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the file; idempotent."""
        try:
            self._container.close()
        finally:
            self._close_file()

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def __iter__(self) -> Iterator[Segment]:
        if self._started:
            raise RuntimeError("a VideoReader streams its video once; open a new one")
        self._started = True
        try:
            yield from self._segments() if self.clip == "segment" else self._video_clip()
        finally:
            self.close()

    def _candidates(self, window: int) -> set[int]:
        """Frames of a window that its segment may sample, whatever the video's length turns out.

        The window is only emitted if the video has at least (window + 1) * segment_length frames
        (or, for window 0, any); every length beyond that samples like the length just past it.
        """
        end = (window + 1) * self.segment_length
        lengths = range(1 if window == 0 else end, end + 2)
        return set().union(
            *(
                segment_frame_indices(window, n, self.segment_length, self.frames_per_segment)
                for n in lengths
            )
        )

    def _segment(self, window: int, total_frames: int, held: dict[int, av.VideoFrame]) -> Segment:
        indices = segment_frame_indices(
            window, total_frames, self.segment_length, self.frames_per_segment
        )
        start = window * self.segment_length
        return Segment(
            window,
            start,
            min(start + self.segment_length, total_frames),
            indices,
            *self._pixels(indices, held),
        )

    def _pixels(
        self, indices: np.ndarray, held: dict[int, av.VideoFrame]
    ) -> tuple[np.ndarray, bytes | None]:
        """The held frames at ``indices`` as tiles, float32 [len(indices), 3, S, S], and the
        middle one's thumbnail (None unless asked for).

        Each distinct frame is converted and resized once.
        """
        sampled = indices.tolist()
        middle = sampled[len(sampled) // 2]
        tiles, thumbnail = {}, None
        for i in set(sampled):
            try:
                image = held[i].to_image()
                tiles[i] = _resized(image, self.image_size)
            except (ValueError, av.FFmpegError) as err:  # e.g. a pixel format without RGB
                raise VideoError(
                    self.path, f"frame {i} ({held[i].format.name}) cannot be converted ({err})"
                ) from err
            if i == middle and self.thumbnail_height:
                thumbnail = thumbnail_jpeg(image, self.thumbnail_height)
        pixels = _normalized(np.stack([tiles[i] for i in sampled]), self.mean, self.std)
        return pixels, thumbnail

    def _decoded_frames(self) -> Iterator[av.VideoFrame]:
        started = False
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                # Before the first picture, an error means a stream cut mid-GOP: the pictures
                # whose references were cut off are dropped, as FFmpeg drops them by default.
                if started:
                    raise
                continue
            started = started or bool(frames)
            yield from frames

    def _numbered_frames(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """One pass: every decoded frame with its 0-based index, then the checks of a whole video.

        Raises :class:`VideoError` when a picture fails to decode, when none decodes, and (after
        the last frame) when the video ends short of its declared duration.
        """
        total, last_time = 0, None
        try:
            for frame in self._decoded_frames():
                yield total, frame
                if frame.time is not None and (last_time is None or frame.time > last_time):
                    last_time = frame.time
                total += 1
        except av.FFmpegError as err:
            raise VideoError(self.path, f"decoding failed after {total} frames ({err})") from err
        if total == 0:
            raise VideoError(self.path, "no decodable video frames")
        self._check_complete(last_time)

    def _metadata(self, **counts: int | bool) -> VideoMetadata:
        return VideoMetadata(
            path=str(self.path),
            fps=self.fps,
            fps_source=self.fps_source,
            stated_frames=self.stated_frames,
            **counts,
        )

    def _segments(self) -> Iterator[Segment]:
        window, held, wanted = 0, {}, self._candidates(0)
        for i, frame in self._numbered_frames():
            if i == (window + 1) * self.segment_length:
                # A frame past the window exists, so the window is not the video's last.
                yield self._segment(window, i + 1, held)
                window += 1
                held, wanted = {}, self._candidates(window)
            if i in wanted:
                held[i] = frame
            total = i + 1
        count = segment_count(total, self.segment_length)
        if window < count:
            yield self._segment(window, total, held)
        self.metadata = self._metadata(
            frame_count=total,
            segment_count=count,
            short=total < self.segment_length,
            tail_frames=max(0, total - count * self.segment_length),
        )

    def _video_clip(self) -> Iterator[Segment]:
        held, total = self._clip_frames()
        indices = clip_frame_indices(total, self.frames_per_segment)
        clip = Segment(0, 0, total, indices, *self._pixels(indices, held))
        self.metadata = self._metadata(
            frame_count=total, segment_count=1, short=False, tail_frames=0
        )
        yield clip

    def _clip_frames(self) -> tuple[dict[int, av.VideoFrame], int]:
        """The frames the whole-video clip samples, and the frame count: one pass or two."""
        stated, slack = self.stated_frames, STATED_FRAMES_SLACK
        counts = range(max(1, stated - slack), stated + slack + 1) if stated else range(0)
        held, total = self._held_frames(
            set().union(*(clip_frame_indices(n, self.frames_per_segment) for n in counts))
        )
        needed = set(clip_frame_indices(total, self.frames_per_segment).tolist())
        if needed <= held.keys():
            return held, total
        held.clear()  # the first pass's frames go before the second pass decodes any
        self.close()
        self._open()
        held, again = self._held_frames(needed)
        if again != total:
            raise VideoError(
                self.path, f"a second decoding pass found {again} frames, the first {total}"
            )
        return held, total

    def _held_frames(self, wanted: set[int]) -> tuple[dict[int, av.VideoFrame], int]:
        """One pass over the video, keeping the frames numbered in ``wanted``; and the count."""
        held = {}
        for i, frame in self._numbered_frames():
            if i in wanted:
                held[i] = frame
            total = i + 1
        return held, total

    def _declared_duration(self) -> float | None:
        """Seconds of video the container declares, or None when it does not say.

        A container-wide duration only counts when the video is the container's only stream: an
        audio track may run longer.
        """
        stream = self._stream
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if self._container.duration is not None and len(self._container.streams) == 1:
            return self._container.duration / av.time_base
        return None

    def _check_complete(self, last_time: float | None) -> None:
        # Demuxers such as Matroska's stop at a cut-off file as if at its end; the declared
        # duration is the only trace of the missing frames. Containers disagree on whether that
        # duration counts from zero or from the first timestamp (Matroska: from zero, so a stream
        # cut mid-GOP starts late and still ends on time); comparing the last frame's end, on the
        # stream's own clock, with the duration counted from zero is right for the first and
        # lenient for the second.
        declared = self._declared_duration()
        if declared is None or last_time is None:
            return
        end = last_time + 1 / self.fps
        if end < declared - TRUNCATION_TOLERANCE_S:
            raise VideoError(
                self.path,
                f"truncated: the decoded frames end at {end:.2f} s, the container declares "
                f"{declared:.2f} s",
            )
