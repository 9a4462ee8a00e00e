"""Extraction: videos -> per-segment head features (and, asked for, each layer's hidden state) in
a :class:`~headhunt_jax.store.FeatureStore`.

Segments of consecutive videos fill fixed-shape batches of ``batch_size`` segments (the last one
padded with blank frames), so the backbone compiles once per run. A background thread decodes the
next batch while the device computes the current one; at most one finished batch waits for the
device, so memory stays at a few batches whatever the videos' lengths. Each video is written to
the store once its last segment has been computed, so an interrupted run loses at most the videos
in flight, and a rerun skips the videos already stored.

A video that cannot be read in full (:class:`~headhunt_jax.video.VideoError`) is dropped, with
whatever segments of it were computed, and listed in the report; the other videos go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from headhunt_jax import paths
from headhunt_jax.backbone import Backbone
from headhunt_jax.errors import InputError, check_terminated
from headhunt_jax.features import (
    KINDS,
    check_heads,
    features_one_prompt,
    features_prompts,
    gather_heads,
    layer_indices,
)
from headhunt_jax.store import FeatureStore, StoreSpec, VideoFeatures, processor_spec
from headhunt_jax.video import (
    CLIPS,
    FRAMES_PER_SEGMENT,
    SEGMENT_LENGTH,
    VIDEO_EXTENSIONS,
    VideoError,
    VideoMetadata,
    VideoReader,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Failure:
    """A video left out of the store: its file and what was wrong with it."""

    path: str
    problem: str


@dataclasses.dataclass(frozen=True)
class ExtractionReport:
    """What a run did. ``stores``: one per prompt; ``written``/``skipped``/``short``: video ids
    (``skipped`` were already in every store; ``short`` were shorter than one segment and stored as
    one segment of all their frames); ``segments`` and ``batches``: computed in this run."""

    stores: tuple[Path, ...]
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    short: tuple[str, ...]
    failures: tuple[Failure, ...]
    segments: int
    batches: int

    @property
    def store(self) -> Path:
        """The store of the first (or only) prompt."""
        return self.stores[0]

    def summary(self) -> str:
        lines = [
            f"{self.store}: {len(self.written)} videos written ({self.segments} segments in "
            f"{self.batches} batches), {len(self.skipped)} already stored, "
            f"{len(self.failures)} failed"
        ]
        lines += [f"  failed: {f.path}: {f.problem}" for f in self.failures]
        return "\n".join(lines)


def list_videos(root: str | Path, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Video files under ``root`` (recursively, by extension, case-insensitive), sorted."""
    root = paths.of(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    wanted = {e.lower() for e in extensions}
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in wanted and p.is_file())


def video_ids(videos: Sequence[str | Path], root: str | Path | None = None) -> list[str]:
    """Stable, unique ids: each path relative to ``root`` ('/'-separated), or its file name.

    Raises InputError (a ValueError) for a path outside ``root`` or two paths with the same id.
    """
    ids: dict[str, Path] = {}
    for p in map(paths.of, videos):
        if root is None:
            vid = p.name
        else:
            try:
                vid = _relative(p, paths.of(root))
            except ValueError:
                raise InputError(f"{p}: not under the video root {root}") from None
        if vid in ids:
            hint = "" if root is not None else " (give a root to tell them apart)"
            raise InputError(f"{ids[vid]} and {p} have the same video id {vid!r}{hint}")
        ids[vid] = p
    return list(ids)


def _relative(p, root) -> str:
    """``p`` relative to ``root``, '/'-separated (a ValueError when it is not under it)."""
    if paths.is_url(p) or paths.is_url(root):
        if not (paths.is_url(p) and paths.is_url(root)):
            raise ValueError(f"{p} is not under {root}")
        return p.relative_to(root).as_posix()
    return PurePath(p.absolute().relative_to(root.absolute())).as_posix()


def expert_layers(heads) -> tuple[int, ...]:
    """The sorted distinct layers of expert heads int [K, 2] of (layer, head): the layers to
    compute."""
    return tuple(sorted({int(layer) for layer in np.asarray(heads).reshape(-1, 2)[:, 0]}))


def store_spec(
    bb: Backbone,
    prompt: str,
    heads,
    image_size: int,
    frames_per_segment: int,
    segment_length: int,
    clip: str = "segment",
    processor: tuple = (),
    processor_options: tuple = (),
    kinds: Sequence[str] = ("heads",),
    hidden_layers=None,
) -> StoreSpec:
    """The spec of a store of ``bb``'s features for ``prompt``: of each of ``kinds`` ("heads":
    all heads when ``heads`` is None, else those; "hidden": the hidden states of
    ``hidden_layers``, all when None)."""
    kinds = check_kinds(kinds)
    if "heads" not in kinds:
        if heads is not None:
            raise InputError("expert heads are a choice of the heads kind, which is not extracted")
        layers, pairs, shape = (), None, (0,)
    elif heads is None:
        layers, pairs = tuple(range(bb.num_layers)), None
        shape = (bb.num_layers, bb.num_heads, bb.head_dim)
    else:
        checked = check_heads(heads, (bb.num_layers, bb.num_heads), "the backbone")
        pairs = tuple(map(tuple, checked.tolist()))
        layers = expert_layers(pairs)
        shape = (len(pairs), bb.head_dim)
    return StoreSpec(
        backbone=bb.name,
        backbone_fingerprint=bb.fingerprint,
        prompt=prompt,
        dtype=np.dtype(bb.dtype).name,
        image_size=image_size,
        frames_per_segment=frames_per_segment,
        segment_length=segment_length,
        layers=layers,
        heads=pairs,
        feature_shape=shape,
        clip=clip,
        processor=processor,
        processor_options=processor_options,
        kinds=kinds,
        **_hidden_fields(bb, kinds, hidden_layers),
    )


def check_kinds(kinds) -> tuple[str, ...]:
    """The kinds of features asked for, in ``KINDS``' order; unknown or none: an InputError."""
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InputError(
            f"features must be one or more of {', '.join(KINDS)}, got {', '.join(kinds) or 'none'}"
        )
    return tuple(k for k in KINDS if k in kinds)


def _hidden_fields(bb: Backbone, kinds, hidden_layers) -> dict:
    """``StoreSpec``'s hidden_layers and hidden_shape (empty without the hidden kind)."""
    if "hidden" not in kinds:
        return {}
    try:
        layers = layer_indices(bb, hidden_layers)
    except ValueError as e:
        raise InputError(f"hidden layers: {e}") from None
    return {"hidden_layers": layers, "hidden_shape": (len(layers), bb.text_config.hidden_size)}


@dataclasses.dataclass(frozen=True)
class Row:
    """A batch row: which video it belongs to, which frames it covers, the seconds between
    its sampled frames and its thumbnail (None unless asked for)."""

    video: int
    start_frame: int
    end_frame: int
    frame_indices: np.ndarray
    frame_seconds: float
    thumbnail: bytes | None = None


@dataclasses.dataclass(frozen=True)
class Batch:
    """``pixels`` [batch_size, frames, 3, H, W] in the backbone's dtype (every row of one frame
    size), of which the first ``len(rows)`` segments are real; ``closed``: videos whose last
    segment is in this batch or an earlier one, with their metadata, or the error that ended
    them."""

    pixels: np.ndarray
    rows: list[Row]
    closed: list[tuple[int, VideoMetadata | VideoError]]


def frame_seconds(indices: np.ndarray, fps: float) -> float:
    """Seconds between a segment's sampled frames (on average; one frame: one frame's time)."""
    span = (indices[-1] - indices[0]) / (len(indices) - 1) if len(indices) > 1 else 1
    return float(max(span, 1) / fps)


def _batches(
    videos: Sequence[Path], batch_size: int, dtype, reader_kw: dict, timed: bool = False
) -> Iterator[Batch]:
    """Batches of segments in reading order; a segment of another frame size than the batch
    being filled (a processor that keeps each video's size) starts a new batch, and so does one
    of another frame spacing when ``timed`` (a processor whose prompt writes the times)."""
    pixels, rows, closed = None, [], []
    for n, path in enumerate(videos):
        try:
            with VideoReader(path, **reader_kw) as reader:
                for seg in reader:
                    seconds = frame_seconds(seg.frame_indices, reader.fps)
                    if rows and (
                        pixels.shape[1:] != seg.pixels.shape
                        or (timed and rows[0].frame_seconds != seconds)
                    ):
                        yield Batch(pixels, rows, closed)
                        pixels, rows, closed = None, [], []
                    if pixels is None:
                        pixels = np.zeros((batch_size, *seg.pixels.shape), dtype)
                    pixels[len(rows)] = seg.pixels
                    rows.append(
                        Row(
                            n,
                            seg.start_frame,
                            seg.end_frame,
                            seg.frame_indices,
                            seconds,
                            seg.thumbnail,
                        )
                    )
                    if len(rows) == batch_size:
                        yield Batch(pixels, rows, closed)
                        pixels, rows, closed = None, [], []
                closed.append((n, reader.metadata))
        except VideoError as err:
            closed.append((n, err))
    if rows or closed:
        yield Batch(pixels, rows, closed)


_END = object()


@dataclasses.dataclass(frozen=True)
class _Raised:
    error: BaseException


def _prefetch(make: Callable[[], Iterator], depth: int = 1) -> Iterator:
    """Runs the iterator ``make()`` in a thread, at most ``depth`` items ahead of the consumer.

    The producer's exceptions re-raise in the consumer; closing the consumer stops the producer.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                items.put(item, timeout=0.1)
                return True
        return False

    def work():
        try:
            with contextlib.closing(make()) as it:
                for item in it:
                    if not put(item):
                        return
            put(_END)
        except BaseException as err:
            put(_Raised(err))

    thread = threading.Thread(target=work, name="headhunt-decode", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def _expected_segments(videos: Sequence[Path], reader_kw: dict) -> int | None:
    """Segments the containers state, or None if one does not say (unreadable files count 0).

    Opening a container reads only its header, so this costs little next to decoding.
    """
    total = 0
    for path in videos:
        try:
            with VideoReader(path, **reader_kw) as reader:
                if reader.expected_segments is None:
                    return None
                total += reader.expected_segments
        except VideoError:
            pass
    return total


def batch_features(bb, processor, input_ids, batch: Batch, spec: StoreSpec) -> dict:
    """The stored features of a batch's segments under each prompt, one forward for every kind
    of ``spec.kinds``: {"heads": float32 [prompts, batch, *spec.feature_shape] (every head of
    ``spec.layers``, or the expert heads; [.., 0] when the store holds no heads), and with the
    hidden kind "hidden": [prompts, batch, *spec.hidden_shape]}. ``input_ids``: each prompt's
    ids [batch, T] for the batch's frame size."""
    seconds = [r.frame_seconds for r in batch.rows]
    seconds += seconds[-1:] * (len(batch.pixels) - len(seconds))  # padding rows
    vision = processor.vision_inputs(batch.pixels, np.asarray(seconds, np.float32))
    layers = tuple(sorted({*spec.layers, *spec.hidden_layers}))
    if len(input_ids) == 1:
        feats = features_one_prompt(bb, input_ids[0], vision, layers, spec.kinds)
        feats = {kind: value[None] for kind, value in feats.items()}
    else:
        feats = features_prompts(bb, input_ids, layers=layers, kinds=spec.kinds, **vision)
    return split_kinds({k: np.asarray(v) for k, v in feats.items()}, layers, spec)


def split_kinds(feats: dict, layers, spec: StoreSpec) -> dict:
    """A forward's {kind: [..., len(layers), ...]} over ``layers`` (the union of the spec's
    heads and hidden layers) -> what the store keeps of each kind (``batch_features``)."""
    out = {}
    if "heads" in feats:
        heads = feats["heads"]
        if tuple(spec.layers) != tuple(layers):
            heads = heads[..., [layers.index(i) for i in spec.layers], :, :]
        out["heads"] = heads if spec.heads is None else gather_heads(heads, spec.heads, spec.layers)
    else:
        some = next(iter(feats.values()))
        out["heads"] = np.zeros((*some.shape[:2], 0), np.float32)
    if "hidden" in feats:
        out["hidden"] = feats["hidden"][:, :, [layers.index(i) for i in spec.hidden_layers]]
    return out


def _write_video(stores, video_id, done, metadata, label) -> None:
    """One finished video's rows ``done`` [(row, {kind: features [prompts, ...]})] into every
    store that lacks it (store m takes prompt m's features)."""
    thumbnails = tuple(r.thumbnail for r, _ in done)
    for m, store in enumerate(stores):
        if video_id in store:
            continue
        store.write(
            VideoFeatures(
                video_id=video_id,
                features=np.stack([f["heads"][m] for _, f in done]),
                hidden=np.stack([f["hidden"][m] for _, f in done])
                if "hidden" in done[0][1]
                else None,
                start_frames=np.asarray([r.start_frame for r, _ in done]),
                end_frames=np.asarray([r.end_frame for r, _ in done]),
                frame_indices=np.stack([r.frame_indices for r, _ in done]),
                metadata=metadata,
                label=label,
                thumbnails=None if None in thumbnails else thumbnails,
            )
        )


def extract_features(
    bb: Backbone,
    videos: Sequence[str | Path],
    prompt: str | Sequence[str],
    out_dir: str | Path | Sequence[str | Path],
    *,
    heads=None,
    root: str | Path | None = None,
    labels: Mapping[str, int] | None = None,
    batch_size: int = 8,
    image_size: int | None = None,
    frames_per_segment: int = FRAMES_PER_SEGMENT,
    segment_length: int = SEGMENT_LENGTH,
    clip: str = "segment",
    processor_options: Mapping[str, Any] | None = None,
    thumbnail_height: int | None = None,
    explainer=None,
    progress: bool = True,
    kinds: Sequence[str] = ("heads",),
    hidden_layers=None,
) -> ExtractionReport:
    """Head features of every segment of ``videos`` under ``prompt``, written to a feature store.

    Several prompts (a sequence, with one ``out_dir`` each) share one decoding pass and the
    frames' prefix (``head_features_prompts``): each video is decoded once, the vision tower and
    the decoder over the frames run once, and only each prompt's own tokens run per prompt.

    ``heads``: None for every head, features [L, H, D] per segment (for head hunting); or expert
    heads int [K, 2] of (layer, head), features [K, D] in that order (for detection; the forward
    stops at the deepest expert layer). Video ids come from ``root`` (see :func:`video_ids`);
    ``labels`` maps video ids to 1 (anomaly) or 0. ``image_size`` defaults to the backbone's.
    ``processor_options``: the family processor's own options (e.g. Qwen2.5-VL's ``mode``),
    recorded in the store spec with the rest of the processor's.
    ``thumbnail_height``: also store a JPEG of each segment's middle sampled frame, that many
    pixels high (``VideoFeatures.thumbnails``), made in the same decoding pass, for reports.
    ``explainer`` (``explain.Explainer``, one prompt): explain events as they are found, from
    the frames' keys and values of this pass.
    ``kinds``: the features stored ("heads", "hidden" or both, one forward for all); ``heads``
    applies to the heads kind; ``hidden_layers``: the layers whose hidden states are kept (all
    when None).
    ``clip``: "segment" (a row per ``segment_length``-frame segment) or "video" (one row a video
    from ``frames_per_segment`` frames spread over the whole video, the original's unit for
    hunting and training; see :class:`~headhunt_jax.video.VideoReader`).
    Videos already in the store are skipped; a store of other settings is an error. Unreadable
    videos are reported in ``failures``, never stored.
    """
    processor = bb.processor(image_size, **dict(processor_options or {}))
    size = processor.frames["image_size"]
    image_size = 0 if callable(size) else size  # 0: each video at its own size (the spec's rule)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    out_dirs = (
        [out_dir] if isinstance(out_dir, str | Path) or paths.is_url(out_dir) else list(out_dir)
    )
    _check_settings(batch_size, prompts, out_dirs, clip, explainer)
    specs = [
        store_spec(
            bb,
            p,
            heads,
            image_size,
            frames_per_segment,
            segment_length,
            clip,
            processor_spec(processor.spec),
            processor_spec(processor_options or {}),
            kinds,
            hidden_layers,
        )
        for p in prompts
    ]
    videos = [paths.of(p) for p in videos]
    ids = video_ids(videos, root)
    stores = [FeatureStore.create(d, spec) for d, spec in zip(out_dirs, specs, strict=True)]
    for store in stores:
        store.record_backbone(bb.origin or bb.path, bb.hub_ref)

    listed = [
        set(store.video_ids()) for store in stores
    ]  # one listing a store, not a query a video
    stored = {v for v in ids if all(v in done for done in listed)}
    todo = [(v, p) for v, p in zip(ids, videos, strict=True) if v not in stored]
    reader_kw = dict(
        **processor.frames,
        frames_per_segment=frames_per_segment,
        segment_length=segment_length,
        clip=clip,
        thumbnail_height=thumbnail_height,
    )
    prompt_ids = _prompt_ids(processor, prompts, frames_per_segment, batch_size)
    run = _Extraction(bb, processor, prompt_ids, specs[0], stores, todo, labels, explainer)
    run.compute(batch_size, reader_kw, progress)
    return ExtractionReport(
        stores=tuple(store.path for store in stores),
        written=tuple(run.written),
        skipped=tuple(v for v in ids if v in stored),
        short=tuple(run.short),
        failures=tuple(run.failures),
        segments=run.segments,
        batches=run.batches,
    )


def _prompt_ids(processor, prompts, frames: int, batch_size: int) -> Callable:
    """(frame size, seconds between frames or None) -> each prompt's ids [batch_size, T]
    (cached; the seconds matter to a ``timed`` processor only)."""
    return functools.cache(
        lambda size, seconds: [
            np.tile(processor.prompt_ids(p, frames, size, seconds)[None], (batch_size, 1))
            for p in prompts
        ]
    )


def _check_settings(batch_size: int, prompts, out_dirs, clip: str, explainer) -> None:
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if not prompts or len(prompts) != len(out_dirs):
        raise InputError(
            f"{len(prompts)} prompts but {len(out_dirs)} output stores: give one per prompt"
        )
    if clip not in CLIPS:
        raise InputError(f"clip must be one of {', '.join(CLIPS)}, got {clip!r}")
    if explainer is not None and len(prompts) != 1:
        raise InputError("explaining events takes one prompt (the detector's)")


@dataclasses.dataclass
class _Extraction:
    """One extraction's videos to compute (``todo``: (id, path) in reading order) into
    ``stores``, and what it has done so far."""

    bb: Backbone
    processor: Any
    prompt_ids: Callable  # (frame size, seconds) -> each prompt's ids [batch_size, T]
    spec: StoreSpec
    stores: list[FeatureStore]
    todo: list[tuple[str, Path]]
    labels: Mapping[str, int] | None
    explainer: Any
    written: list[str] = dataclasses.field(default_factory=list)
    short: list[str] = dataclasses.field(default_factory=list)
    failures: list[Failure] = dataclasses.field(default_factory=list)
    segments: int = 0
    batches: int = 0
    # a video's computed rows [(row, features [prompts, ...])] until its last one
    pending: dict = dataclasses.field(default_factory=lambda: defaultdict(list))

    def compute(self, batch_size: int, reader_kw: dict, progress: bool) -> None:
        """Decodes (in a thread, one batch ahead), computes and writes every video of ``todo``."""
        videos = [p for _, p in self.todo]
        total = _expected_segments(videos, reader_kw) if progress else None
        dtype, timed = np.dtype(self.bb.dtype), self.processor.timed
        make = lambda: _batches(videos, batch_size, dtype, reader_kw, timed)
        with (
            tqdm(total=total, unit="segment", desc="extract", disable=not progress) as bar,
            contextlib.closing(_prefetch(make)) as stream,
        ):
            for batch in stream:
                check_terminated()
                if batch.rows:
                    self.add(batch)
                    bar.update(len(batch.rows))
                self.close(batch.closed)

    def add(self, batch: Batch) -> None:
        """Computes the features of a batch's segments and keeps them with their videos."""
        seconds = batch.rows[0].frame_seconds if self.processor.timed else None
        input_ids = self.prompt_ids(batch.pixels.shape[-2:], seconds)
        if self.explainer is None:
            feats = batch_features(self.bb, self.processor, input_ids, batch, self.spec)
        else:
            feats = self.explainer.batch_features(self.processor, input_ids, batch, self.spec)
        for i, row in enumerate(batch.rows):
            self.pending[row.video].append((row, {k: v[:, i] for k, v in feats.items()}))
        self.segments += len(batch.rows)
        self.batches += 1

    def close(self, closed: list[tuple[int, VideoMetadata | VideoError]]) -> None:
        """Writes each finished video to the stores, or lists it as failed."""
        for n, outcome in closed:
            done = self.pending.pop(n, [])
            vid, path = self.todo[n]
            if self.explainer is not None:
                self.explainer.close(n, None if isinstance(outcome, VideoError) else vid)
            if isinstance(outcome, VideoError):
                self.failures.append(Failure(str(path), outcome.problem))
                log.warning("skipping %s: %s", path, outcome.problem)
                continue
            label = None if self.labels is None else self.labels.get(vid)
            _write_video(self.stores, vid, done, outcome, label)
            self.written.append(vid)
            if outcome.short:
                self.short.append(vid)
