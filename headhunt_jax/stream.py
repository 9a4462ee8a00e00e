"""Live streams: segments scored as their frames arrive, events reported as they happen.

Sources (:func:`parse_source`): a file (:func:`followed_file`: a finished one read as ``detect``
reads it; one still being written followed as it grows, until it stops growing, where its container
can be read that way, else read once it is finished); a container on an open pipe (``-``: standard input, e.g. MPEG-TS piped from ffmpeg); anything else
PyAV opens as a live input (``rtsp://``, ``http(s)://``, ``udp://``, ``srt://``, ``tcp://``, a
V4L2 device such as ``/dev/video0``), reopened with backoff when it drops. Each source is read in
its own thread by the ``VideoReader`` that ``detect`` reads files with, so a stream is cut into the
same segments, sampled and preprocessed the same way: a segment is complete when the first frame
after it arrives (or the stream ends), as a window is in a file. Every connection of a source is
one sequence, as one file is for ``detect``; its segment indices and stream clock carry on across
reconnections.

Scoring (:class:`SegmentScorer`): segments of all sources fill the backbone's fixed batch
(``extract.batch_features``, the code ``detect`` extracts with: one compilation) and are scored by
``detector.detector_scores``. A batch starts as soon as the last one is done, with the segments
then pending: none waits for a batch to fill. At most ``max_pending`` segments wait; when scoring
falls behind real time the oldest pending segment is dropped (a ``dropped`` line counts them), so
memory holds ``max_pending`` segments and one decoding window a source, whatever the streams'
lengths.

Smoothing (:class:`OnlineSmoother`) and events (:class:`EventTracker`): a segment's smoothed score
waits for the ``lookahead`` segments after it. With the kernel's half width (the default) it is
``detect``'s smoothed score exactly, and the events are ``detect``'s. With less, the Gaussian's
taps on segments not yet seen are left out and the others renormalised (0: causal, no delay); a
dropped segment's tap is left out the same way.

Output: one JSON-able dict a line (``emit``), each with a ``type``:

- ``segment``: ``source``, ``index``, ``start_frame``, ``end_frame``, ``start_s``, ``end_s``,
  ``score``, ``smoothed``, ``lookahead_s`` (the seconds of stream after the segment that its
  smoothed score saw);
- ``event_open``: the moment a smoothed score exceeds tau (``source``, ``start_segment``,
  ``start_frame``, ``start_s``, ``smoothed``);
- ``event``: when it closes, with ``detect``'s event fields (``start_segment``, ``end_segment``,
  ``start_frame``, ``end_frame``, ``start_s``, ``end_s``, ``duration_s``, ``peak_score``,
  ``peak_segment``); a sequence that ends closes its open event;
- ``dropped``: ``source``, the ``segments`` dropped since the last such line, their ``count``,
  the source's ``total``;
- ``end``: a source is done (``segments`` scored, ``dropped``, ``events``, ``reopened``,
  ``error``: its last problem or None, ``unscored``: segments pending when watching stopped).

Every line also carries ``time``, the wall clock (Unix seconds) when it was made.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import select
import stat
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import av
import numpy as np

from headhunt_jax.backbone import Backbone
from headhunt_jax.detection import check_compatible, event_fields, seconds
from headhunt_jax.detector import Detector, detector_scores
from headhunt_jax.errors import InputError
from headhunt_jax.extract import Batch, Row, batch_features, frame_seconds, store_spec
from headhunt_jax.locator import kernel_half_width, smooth
from headhunt_jax.video import FRAMES_PER_SEGMENT, SEGMENT_LENGTH, Segment, VideoError, VideoReader

log = logging.getLogger(__name__)

Line = dict
POLL_S = 0.05  # how often a waiting read looks again for bytes, or for being stopped


# --- sources ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """A stream to watch: ``name`` as the user gave it (the lines carry it); ``open(stop)`` returns
    its PyAV input container (a read returns at the end once ``stop`` is set, where it can);
    ``live``: reopened when it ends or fails (a network input, a device)."""

    name: str
    open: Callable[[threading.Event], av.container.InputContainer]
    live: bool = False
    hint: str = ""  # added to a problem met before the first segment


class _Followed:
    """A file read as it is written: ``read`` waits for more bytes, and reports the end once the
    file has not grown for ``idle_s`` seconds, or when ``stop`` is set. Not seekable, so that the
    demuxer never looks for an end that is not written yet."""

    def __init__(self, path: Path, idle_s: float, stop: threading.Event):
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (the container closes it)
        self._idle_s, self._stop = idle_s, stop

    def read(self, size: int) -> bytes:
        since = time.monotonic()
        while not (data := self._file.read(size)):
            if self._stop.is_set() or time.monotonic() - since > self._idle_s:
                return b""
            time.sleep(POLL_S)
        return data

    def close(self) -> None:
        self._file.close()


class _Pipe:
    """An open pipe (standard input, a FIFO), read as bytes arrive; the end when its writer
    closes it or ``stop`` is set."""

    def __init__(self, file, stop: threading.Event):
        self._file, self._fd, self._stop = file, file.fileno(), stop

    def read(self, size: int) -> bytes:
        while not self._stop.is_set():
            if select.select([self._fd], [], [], POLL_S)[0]:
                return os.read(self._fd, size)
        return b""

    def close(self) -> None:
        self._file.close()


def followed_file(path, idle_s: float = 10.0) -> Source:
    """A video file, finished or still being written.

    Finished (not modified for ``idle_s`` seconds, or an MP4/MOV whose index, the ``moov`` atom,
    is written and ends the file): opened as ``detect`` opens it, so any file PyAV reads. Still
    being written: followed as it grows, until it has not grown for ``idle_s`` seconds, where its
    container can be read that way (:func:`file_layout`: MPEG-TS, Matroska/WebM, fragmented
    MP4, FLV, raw H.264/HEVC, Y4M); any other (an ordinary MP4/MOV, whose index comes at its
    end; AVI...) is read once it is finished, a warning saying so."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    return Source(str(path), functools.partial(_open_file, path, idle_s))


# What file_layout says of a file's bytes so far.
STREAMS = "streams"  # a container that can be read while it is written
COMPLETE = "complete"  # an MP4/MOV with its index, whole: finished
UNSTREAMABLE = "unstreamable"  # readable once finished only (an MP4/MOV without its index yet)
UNKNOWN = "unknown"  # too few bytes to tell
_ISO_ATOMS = {b"ftyp", b"styp", b"moov", b"moof", b"mdat", b"free", b"skip", b"wide", b"pnot"}
_STREAM_MAGIC = (b"\x1a\x45\xdf\xa3", b"FLV", b"\x00\x00\x00\x01", b"\x00\x00\x01", b"YUV4MPEG2")


def file_layout(path: Path) -> str:
    """Whether the file as it is now can be read while it is written (STREAMS), is a whole
    MP4/MOV (COMPLETE), is an MP4/MOV or another container that only a finished file can be
    read from (UNSTREAMABLE), or is too short to tell (UNKNOWN). Reads the head and the
    MP4/MOV atoms' headers only."""
    with open(path, "rb") as f:
        head = f.read(512)
        if len(head) < 8:
            return UNKNOWN
        if head[4:8] in _ISO_ATOMS:
            return _iso_layout(f, os.fstat(f.fileno()).st_size)
    if head[:1] == b"\x47" and (len(head) < 189 or head[188:189] == b"\x47"):  # MPEG-TS
        return STREAMS
    if any(head.startswith(m) for m in _STREAM_MAGIC):
        return STREAMS
    return UNSTREAMABLE


def _is_iso(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8)[4:8] in _ISO_ATOMS


def _atoms(f, start: int, end: int):
    """(type, start, end) of the MP4/MOV atoms in [start, end) of the file, as far as their
    headers are written; an end past the file's means the atom is not whole yet."""
    at = start
    while at + 8 <= end:
        f.seek(at)
        header = f.read(16)
        if len(header) < 8:
            return
        size, kind = int.from_bytes(header[:4], "big"), header[4:8]
        if size == 1:
            if len(header) < 16:
                return
            size = int.from_bytes(header[8:16], "big")
        elif size == 0:  # to the end of the file (a writer's placeholder until it finishes)
            size = -1
        if 0 <= size < 8:
            return  # not atoms (a damaged file): the demuxer will say so
        yield kind, at, (at + size if size > 0 else -1)
        if size < 0:
            return
        at += size


def _iso_layout(f, size: int) -> str:
    index = samples = False
    for kind, start, end in _atoms(f, 0, size):
        whole = 0 < end <= size
        if kind in (b"moof", b"styp"):
            return STREAMS  # fragments (fragmented MP4, CMAF)
        if kind == b"moov" and whole:
            if any(k == b"mvex" for k, _, _ in _atoms(f, start + 8, end)):
                return STREAMS  # an empty index: the samples are in the fragments after it
            index = True
        samples = samples or kind == b"mdat"
        if not whole:  # still being written (or, for mdat, its size not yet written)
            return UNSTREAMABLE if samples else UNKNOWN
        if end == size:
            if index and samples:
                return COMPLETE
            return UNSTREAMABLE if samples else UNKNOWN  # the index after the samples: to come
    return UNSTREAMABLE if samples else UNKNOWN


def _open_file(path: Path, idle_s: float, stop: threading.Event) -> av.container.InputContainer:
    """The file's container: the file itself once it is finished, a :class:`_Followed` reader
    while it is written in a container that can be read so; a file that cannot is waited for."""
    warned, started = False, time.time()
    while True:
        layout, info = file_layout(path), path.stat()
        # Not modified for idle_s: finished (an empty file: given idle_s to start from now).
        finished = time.time() - max(info.st_mtime, 0 if info.st_size else started) > idle_s
        if finished or layout == COMPLETE:
            if info.st_size == 0:
                raise VideoError(path, "empty file")
            try:
                return av.open(str(path))
            except av.FFmpegError as err:
                problem = f"not a readable video file ({err})"
                if layout != COMPLETE and _is_iso(path):
                    problem += " (an MP4/MOV without its index, the moov atom: not finished?)"
                raise VideoError(path, problem) from err
        if layout == STREAMS:
            return av.open(_Followed(path, idle_s, stop), "r")
        if layout == UNSTREAMABLE and not warned:
            log.warning(
                "%s: being written in a container that cannot be read until it is finished "
                "(for a live file write MPEG-TS, Matroska or fragmented MP4); waiting for it "
                "to be finished (no growth for %g s)",
                path,
                idle_s,
            )
            warned = True
        if stop.wait(POLL_S):
            raise InterruptedError(f"{path}: stopped while waiting for the file to be finished")


def pipe(file, name: str = "-") -> Source:
    """A container on an open binary pipe (``sys.stdin.buffer``, the read end of ``os.pipe``);
    it ends when the writer closes the pipe."""
    hint = " (a pipe needs a container that streams, e.g. MPEG-TS: ffmpeg -i IN -f mpegts -)"
    return Source(name, lambda stop: av.open(_Pipe(file, stop), "r"), hint=hint)


def live_input(
    url: str,
    options: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    format: str | None = None,
) -> Source:
    """Anything PyAV opens by name (a URL, a device with ``format`` such as "v4l2"), with FFmpeg's
    ``options`` (e.g. ``rtsp_transport=tcp``); ``timeout_s``: opening, or a read, that waits
    longer fails (and the source is reopened)."""
    return Source(
        url,
        lambda stop: av.open(
            url, "r", format=format, options=dict(options or {}), timeout=timeout_s
        ),
        live=True,
    )


def parse_source(
    text: str,
    *,
    idle_s: float = 10.0,
    timeout_s: float = 10.0,
    options: Mapping[str, str] | None = None,
    stdin=None,
) -> Source:
    """A source as the command line names it: ``-`` (``stdin``, default standard input), a URL
    (``scheme://...``), a character device (V4L2), or a file (:func:`followed_file`; also as a
    ``file:`` URL, which as a live input would replay the file at every reopening)."""
    if text == "-":
        return pipe(stdin if stdin is not None else sys.stdin.buffer)
    if text.startswith("file:"):
        return followed_file(urllib.parse.urlparse(text).path, idle_s)
    if "://" in text:
        return live_input(text, options, timeout_s)
    path = Path(text)
    if path.exists() and stat.S_ISCHR(path.stat().st_mode):
        return live_input(text, options, timeout_s, format="v4l2")
    if not path.exists():
        raise InputError(f"{text}: no such file, and not a URL (scheme://...) or '-'")
    return followed_file(path, idle_s)


@dataclasses.dataclass(frozen=True)
class Reconnect:
    """How a live source is reopened: after ``first_s`` seconds, doubling up to ``max_s``, at
    most ``retries`` times in a row (None: forever); a connection that gave a segment resets
    the count."""

    first_s: float = 0.5
    max_s: float = 30.0
    retries: int | None = None

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.first_s * 2 ** (failures - 1))


# --- smoothing and events ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Smoothed:
    """A sequence position's smoothed score: ``lookahead`` segments after it were known."""

    index: int
    score: float
    smoothed: np.float32
    lookahead: int
    payload: object


class OnlineSmoother:
    """``locator.smooth`` of a sequence that arrives one score at a time.

    ``push(score)`` (None: a dropped segment) returns the positions whose smoothed score is now
    due, in order: position t once ``lookahead`` later positions are known (and, with the full
    lookahead, once the sequence has as many as the kernel is long, since a shorter sequence is
    smoothed with a shorter kernel); ``finish()`` the rest, at the sequence's end. Each is
    ``smooth`` of a window of the scores around it, whose taps out of the sequence are zero as in
    ``smooth``; with the kernel's half width of lookahead and no drops that is ``smooth`` of the
    whole sequence, to the bit. Taps on positions not known (not arrived yet, or dropped) are
    left out and the rest renormalised. Memory: a few kernel widths of scores.
    """

    def __init__(self, sigma: float, lookahead: int | None = None):
        if lookahead is not None and lookahead < 0:
            raise InputError(f"the lookahead must be at least 0 segments, got {lookahead}")
        self.sigma = sigma
        self.half = kernel_half_width(sigma, np.inf)
        self.lookahead = self.half if lookahead is None else min(lookahead, self.half)
        # The shortest sequence smoothed with the whole kernel (smooth's kernel shrinks below it).
        self.full = next(
            n for n in range(2, 2 * self.half + 2) if kernel_half_width(sigma, n) == self.half
        )
        self._scores: list[float | None] = []
        self._payloads: list = []
        self._base = 0  # sequence position of _scores[0]
        self._next = 0  # the next position to smooth
        self._ended = False

    @property
    def known(self) -> int:
        return self._base + len(self._scores)

    def push(self, score: float | None, payload=None) -> list[Smoothed]:
        self._scores.append(score)
        self._payloads.append(payload)
        return self._due()

    def finish(self) -> list[Smoothed]:
        self._ended = True
        return self._due()

    def _ready(self, t: int) -> bool:
        if t >= self.known:
            return False
        if self._ended:
            return True
        waited = self.known >= t + self.lookahead + 1
        return waited and (self.lookahead < self.half or self.known >= self.full)

    def _due(self) -> list[Smoothed]:
        out = []
        while self._ready(self._next):
            t = self._next
            score = self._scores[t - self._base]
            if score is not None:
                payload = self._payloads[t - self._base]
                lookahead = min(self.known - 1, t + self.half) - t
                out.append(Smoothed(t, score, self._smoothed(t), lookahead, payload))
            self._next += 1
        self._trim()
        return out

    def _window(self, t: int) -> tuple[int, int]:
        """Positions [a, b) to smooth for position t: all its taps, and at least ``full`` of
        them (or the whole sequence), so that ``smooth`` uses the whole kernel."""
        if self._ended:
            return max(0, min(t - self.half, self.known - self.full)), self.known
        a = max(0, t - self.half)
        return a, a + 2 * self.half + 1

    def _smoothed(self, t: int) -> np.float32:
        a, b = self._window(t)
        values = np.zeros(b - a, np.float32)
        missing = np.zeros(b - a, np.float32)
        for i in range(a, b):
            if i >= self.known:
                missing[i - a] = not self._ended
            elif (s := self._scores[i - self._base]) is None:
                missing[i - a] = 1
            else:
                values[i - a] = s
        value = np.asarray(smooth(values, self.sigma))[t - a]
        if missing[max(0, t - self.half - a) : t + self.half + 1 - a].any():
            value = value / (1 - np.asarray(smooth(missing, self.sigma))[t - a])
        return np.float32(value)

    def _trim(self) -> None:
        keep_from = self._next - max(self.half, self.full)
        if keep_from - self._base > 64:
            del self._scores[: keep_from - self._base], self._payloads[: keep_from - self._base]
            self._base = keep_from


@dataclasses.dataclass
class _Run:
    """An open event: segments [start, end), frames [first_frame, last_frame), its peak."""

    start: int
    first_frame: int
    peak: np.float32
    peak_at: int
    end: int = 0
    last_frame: int = 0


class EventTracker:
    """Events of one sequence (frames at ``fps``) from its smoothed scores in order: a run of
    scores above ``tau`` (``localize``'s test, in float32), opened at the first, closed at the
    first that is not or at the sequence's end, with ``detect``'s event fields."""

    def __init__(self, tau: float, fps: float):
        self.tau, self.fps = np.float32(tau), fps
        self._run: _Run | None = None

    @property
    def peak(self) -> int | None:
        """The open event's peak segment so far (None when none is open)."""
        return None if self._run is None else self._run.peak_at

    def update(self, index: int, smoothed, frames: tuple[int, int]) -> tuple[Line | None, ...]:
        """The segment at ``index`` covering ``frames`` [start, end) -> (the event_open line,
        the closed event), each None when there is none."""
        smoothed = np.float32(smoothed)
        if not smoothed > self.tau:
            return None, self.finish()
        opened = None
        if self._run is None:
            self._run = _Run(index, frames[0], smoothed, index)
            opened = {
                "start_segment": index,
                "start_frame": frames[0],
                "start_s": seconds(frames[0], self.fps),
                "smoothed": round(float(smoothed), 6),
            }
        elif smoothed > self._run.peak:
            self._run.peak, self._run.peak_at = smoothed, index
        self._run.end, self._run.last_frame = index + 1, frames[1]
        return opened, None

    def finish(self) -> Line | None:
        """The open event, closed (None when none is open)."""
        run, self._run = self._run, None
        if run is None:
            return None
        return event_fields(
            run.start, run.end, run.first_frame, run.last_frame, self.fps, run.peak, run.peak_at
        )


# --- scoring -----------------------------------------------------------------------------------


class SegmentScorer:
    """Anomaly scores of segments as ``detect`` computes them: the features of the detector's
    probe (``Detector.features_of``),
    ``batch_size`` segments a forward (``extract.batch_features``; a short batch is padded with
    blank segments, so one shape a frame size), scored by ``detector.detector_scores``.
    ``reader_kw``: what a ``VideoReader`` needs to cut and preprocess segments for it."""

    def __init__(self, bb: Backbone, detector: Detector, batch_size: int = 8):
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        check_compatible(bb, detector)
        self.bb, self.detector, self.batch_size = bb, detector, batch_size
        self.processor = bb.processor(None, **detector.processor_options)
        size = self.processor.frames["image_size"]
        self.image_size = None if callable(size) else size  # None: each video at its own size
        probe = detector.probe.extraction()
        self.spec = store_spec(
            bb,
            detector.prompt,
            probe.get("heads"),
            self.image_size or 0,
            FRAMES_PER_SEGMENT,
            SEGMENT_LENGTH,
            kinds=probe["kinds"],
            hidden_layers=probe.get("hidden_layers"),
        )
        self.reader_kw = dict(
            **self.processor.frames,
            frames_per_segment=FRAMES_PER_SEGMENT,
            segment_length=SEGMENT_LENGTH,
        )
        self._prompt_ids = functools.cache(self._batch_ids)
        self._compiled = False

    def _batch_ids(self, size, seconds) -> list[np.ndarray]:
        ids = self.processor.prompt_ids(self.detector.prompt, FRAMES_PER_SEGMENT, size, seconds)
        return [np.tile(ids[None], (self.batch_size, 1))]

    def compile(self) -> bool:
        """Compiles the forward and the scorer before any frame is read; False when the processor
        keeps each video's frame size, which then compiles with its first batch. Once."""
        if self.image_size is None or self._compiled:
            return self._compiled
        s = self.image_size
        pixels = np.zeros((FRAMES_PER_SEGMENT, 3, s, s), np.float32)
        self([(Segment(0, 0, SEGMENT_LENGTH, np.arange(FRAMES_PER_SEGMENT), pixels), 25.0)])
        self._compiled = True
        return True

    def __call__(self, segments: Sequence[tuple[Segment, float]]) -> np.ndarray:
        """float32 [n]: the scores of n <= batch_size segments of one frame size, each given with
        its stream's fps."""
        times = [frame_seconds(seg.frame_indices, fps) for seg, fps in segments]
        if self.processor.timed and len(set(times)) > 1:  # a prompt for each frame spacing
            scores = np.zeros(len(segments), np.float32)
            for t in set(times):
                same = [i for i, u in enumerate(times) if u == t]
                scores[same] = self([segments[i] for i in same])
            return scores
        shape = segments[0][0].pixels.shape
        pixels = np.zeros((self.batch_size, *shape), np.dtype(self.bb.dtype))
        rows = []
        for i, (seg, _) in enumerate(segments):
            pixels[i] = seg.pixels
            rows.append(Row(i, seg.start_frame, seg.end_frame, seg.frame_indices, times[i]))
        ids = self._prompt_ids(shape[-2:], times[0] if self.processor.timed else None)
        feats = batch_features(self.bb, self.processor, ids, Batch(pixels, rows, []), self.spec)
        # the padding rows too: one shape
        x = self.detector.features_of({k: v[0] for k, v in feats.items()}, self.spec)
        return detector_scores(self.detector, x)[: len(segments)]


# --- what the source threads hand the scorer ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Opened:
    source: int
    fps: float
    reopened: int  # connections before this one


@dataclasses.dataclass(frozen=True)
class _Pending:
    source: int
    segment: Segment


@dataclasses.dataclass(frozen=True)
class _Dropped:
    source: int
    index: int
    start_frame: int
    end_frame: int


@dataclasses.dataclass(frozen=True)
class _Closed:
    source: int


@dataclasses.dataclass(frozen=True)
class _Finished:
    source: int
    error: str | None
    bug: BaseException | None = None


class _Inbox:
    """The source threads' items, in order, for the scoring loop; at most ``max_pending``
    segments: one more turns the oldest into a ``_Dropped`` mark (its pixels freed)."""

    def __init__(self, max_pending: int):
        if max_pending < 1:
            raise InputError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self._items: deque = deque()
        self._segments = 0
        self._changed = threading.Condition()
        self._closed = False

    def put(self, item) -> None:
        with self._changed:
            if self._closed:
                return
            self._items.append(item)
            if isinstance(item, _Pending):
                self._segments += 1
                if self._segments > self.max_pending:
                    self._drop_oldest()
            self._changed.notify()

    def _drop_oldest(self) -> None:
        i = next(i for i, x in enumerate(self._items) if isinstance(x, _Pending))
        seg = self._items[i].segment
        self._items[i] = _Dropped(self._items[i].source, seg.index, seg.start_frame, seg.end_frame)
        self._segments -= 1

    def take(self, batch_size: int, timeout: float) -> list:
        """The items in order, up to ``batch_size`` segments of one frame size; waits at most
        ``timeout`` seconds for one."""
        with self._changed:
            self._changed.wait_for(lambda: self._items, timeout)
            out, shape, segments = [], None, 0
            while self._items:
                item = self._items[0]
                if isinstance(item, _Pending):
                    if segments == batch_size or shape not in (None, item.segment.pixels.shape):
                        break
                    shape, segments = item.segment.pixels.shape, segments + 1
                    self._segments -= 1
                out.append(self._items.popleft())
            return out

    def close(self) -> list:
        """Takes no more items; returns those left."""
        with self._changed:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            return left


def _read_connection(number, reopened, source, inbox, stop, reader_kw) -> tuple[str | None, int]:
    """A source's connection after ``reopened`` others, its segments into ``inbox`` -> (its
    problem, or None when it ended; the segments it gave)."""
    try:
        reader = VideoReader(source.name, container=source.open(stop), **reader_kw)
    except VideoError as err:
        return err.problem + source.hint, 0
    except (av.FFmpegError, OSError) as err:
        return f"cannot be opened ({err}){source.hint}", 0
    inbox.put(_Opened(number, reader.fps, reopened))
    segments = 0
    try:
        for segment in reader:
            inbox.put(_Pending(number, segment))
            segments += 1
            if stop.is_set():
                break
        return None, segments
    except VideoError as err:
        return err.problem + ("" if segments else source.hint), segments
    finally:
        reader.close()
        inbox.put(_Closed(number))


def _read_source(number, source, inbox, stop, reader_kw, reconnect: Reconnect) -> None:
    """A source's thread: its connections, a live one reopened with backoff (logged)."""
    error, reopened, failures = None, 0, 0
    try:
        while True:
            error, segments = _read_connection(number, reopened, source, inbox, stop, reader_kw)
            if not source.live or stop.is_set():
                break
            failures = 1 if segments else failures + 1
            if reconnect.retries is not None and failures > reconnect.retries:
                log.warning("%s: %s; giving up", source.name, error or "the stream ended")
                break
            delay = reconnect.delay(failures)
            log.warning(
                "%s: %s; reopening in %.1f s", source.name, error or "the stream ended", delay
            )
            if stop.wait(delay):
                break
            reopened += 1
        inbox.put(_Finished(number, error))
    except BaseException as bug:  # a bug: the scoring loop raises it
        inbox.put(_Finished(number, error, bug))


# --- the scoring loop --------------------------------------------------------------------------


class _Stream:
    """A source as the scoring loop follows it: the current connection's smoother and events,
    and the clock (segment indices, frames) that carries on across its connections."""

    def __init__(self, name: str, detector: Detector, lookahead: int | None):
        self.name, self.detector, self.lookahead = name, detector, lookahead
        self.fps = 0.0
        self.index_offset = self.frame_offset = 0  # of the earlier connections
        self.smoother: OnlineSmoother | None = None
        self.events: EventTracker | None = None
        self.end_frame = 0
        self.counts = {"segments": 0, "dropped": 0, "events": 0, "unscored": 0, "reopened": 0}
        self.dropped_now: list[int] = []
        self.finished = False

    def line(self, kind: str, **fields) -> Line:
        return {"type": kind, "source": self.name, **fields, "time": round(time.time(), 3)}

    def open(self, fps: float, reopened: int) -> None:
        self.fps, self.counts["reopened"] = fps, reopened
        self.smoother = OnlineSmoother(self.detector.sigma, self.lookahead)
        self.events = EventTracker(self.detector.tau, fps)

    def _span(self, index: int, start_frame: int, end_frame: int):
        frames = (self.frame_offset + start_frame, self.frame_offset + end_frame)
        self.end_frame = frames[1]
        return self.index_offset + index, frames

    def scored(self, segment: Segment, score: float) -> list[Line]:
        self.counts["segments"] += 1
        span = self._span(segment.index, segment.start_frame, segment.end_frame)
        return self._lines(self.smoother.push(float(score), span))

    def dropped(self, item: _Dropped) -> list[Line]:
        index, _ = span = self._span(item.index, item.start_frame, item.end_frame)
        self.dropped_now.append(index)
        return self._lines(self.smoother.push(None, span))

    def drop_line(self) -> list[Line]:
        """The ``dropped`` line of the segments dropped since the last one (none if none)."""
        segments, self.dropped_now = self.dropped_now, []
        if not segments:
            return []
        self.counts["dropped"] += len(segments)
        total = self.counts["dropped"]
        return [self.line("dropped", segments=segments, count=len(segments), total=total)]

    def close(self) -> list[Line]:
        """The connection's end: the rest of its smoothed scores, its open event closed."""
        if self.smoother is None:
            return []
        lines = self._lines(self.smoother.finish()) + self._event(self.events.finish())
        self.index_offset += self.smoother.known
        self.frame_offset = self.end_frame
        self.smoother = self.events = None
        return lines

    def finish(self, error: str | None) -> list[Line]:
        """The source's end: its connection closed, the ``end`` line."""
        self.finished = True
        self.counts["error"] = error
        lines = self.close() + self.drop_line()
        return lines + [self.line("end", **self.counts)]

    def _event(self, event: Line | None) -> list[Line]:
        if event is None:
            return []
        self.counts["events"] += 1
        return [self.line("event", **event)]

    def _lines(self, due: list[Smoothed]) -> list[Line]:
        lines = []
        for s in due:
            index, (start, end) = s.payload
            lines.append(
                self.line(
                    "segment",
                    index=index,
                    start_frame=start,
                    end_frame=end,
                    start_s=seconds(start, self.fps),
                    end_s=seconds(end, self.fps),
                    score=round(s.score, 6),
                    smoothed=round(float(s.smoothed), 6),
                    lookahead_s=round(s.lookahead * SEGMENT_LENGTH / self.fps, 3),
                )
            )
            opened, closed = self.events.update(index, s.smoothed, (start, end))
            if opened is not None:
                lines.append(self.line("event_open", **opened))
            lines += self._event(closed)
        return lines


def watch_streams(
    scorer: SegmentScorer,
    sources: Sequence[Source],
    emit: Callable[[Line], None],
    *,
    lookahead: int | None = None,
    max_pending: int | None = None,
    reconnect: Reconnect = Reconnect(),
    stop: threading.Event | None = None,
) -> dict[str, dict]:
    """Watches ``sources`` until every one has ended (or ``stop`` is set, or Ctrl-C), handing
    each line to ``emit`` as it happens (the module's docstring lists them).

    The scorer compiles first; then each source is read in a thread of its own. ``lookahead``:
    segments a smoothed score waits for (default: the kernel's half width, which gives
    ``detect``'s smoothed scores and events; 0: causal); ``max_pending``: segments that may wait
    for the scorer before the oldest is dropped (default: a batch, and one a source, so that
    sources whose segments end at the same moment lose none while the scorer keeps up). When watching stops early,
    the segments still pending are left unscored and every open event is closed.
    Returns each source's counts ({name: the ``end`` line's fields}).
    """
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise InputError(f"a source is given twice: {names}")
    detector = scorer.detector
    stop = stop or threading.Event()
    inbox = _Inbox(max_pending or scorer.batch_size + len(sources))
    streams = [_Stream(name, detector, lookahead) for name in names]
    started = time.perf_counter()
    compiled = scorer.compile()
    smooth(np.zeros(2 * kernel_half_width(detector.sigma, np.inf) + 1), detector.sigma)
    log.info(
        "%s in %.1f s; reading %d source(s)",
        "compiled" if compiled else "ready (each frame size compiles with its first batch)",
        time.perf_counter() - started,
        len(sources),
    )
    for number, source in enumerate(sources):
        threading.Thread(
            target=_read_source,
            args=(number, source, inbox, stop, scorer.reader_kw, reconnect),
            name=f"headhunt-watch-{number}",
            daemon=True,  # a live input blocked in a read past its timeout is not waited for
        ).start()
    try:
        while not stop.is_set() and not all(s.finished for s in streams):
            for line in _round(scorer, inbox, streams):
                emit(line)
    finally:
        stop.set()
        for item in inbox.close():
            if isinstance(item, _Pending):
                streams[item.source].counts["unscored"] += 1
        for s in streams:
            if not s.finished:
                for line in s.finish(None):
                    emit(line)
    return {s.name: s.counts for s in streams}


def _round(scorer, inbox: _Inbox, streams: list[_Stream]) -> list[Line]:
    """One batch: the items the sources handed in since the last, their segments scored."""
    items = inbox.take(scorer.batch_size, timeout=4 * POLL_S)
    fps, batch = {}, []  # a connection may open in this round
    for item in items:
        if isinstance(item, _Opened):
            fps[item.source] = item.fps
        elif isinstance(item, _Pending):
            batch.append((item.segment, fps.get(item.source, streams[item.source].fps)))
    scores = iter(scorer(batch) if batch else [])
    lines = []
    for item in items:
        stream = streams[item.source]
        if isinstance(item, _Opened):
            stream.open(item.fps, item.reopened)
        elif isinstance(item, _Pending):
            lines += stream.scored(item.segment, next(scores))
        elif isinstance(item, _Dropped):
            lines += stream.dropped(item)
        elif isinstance(item, _Closed):
            lines += stream.close()
        else:
            if item.bug is not None:
                raise item.bug
            lines += stream.finish(item.error)
    for stream in streams:
        lines += stream.drop_line()
    return lines
