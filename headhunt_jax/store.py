"""A directory of per-segment head features: one file per video plus one store-level JSON.

Layout::

    store.json            what every file holds: backbone, prompt, clip unit, segment shape,
                          heads, dtype, the kinds of features (heads; hidden states)
    backbone.json         where the backbone was loaded from (not part of the settings: a moved
                          checkpoint leaves the features valid)
    <video file>.npz      one video: features float32 [num_segments, *feature_shape] (and with
                          the hidden kind, ``hidden`` [num_segments, *hidden_shape]), the
                          segments' frame ranges and sampled frames, and a JSON ``meta`` entry
                          (video id, source path, fps, frame counts, short flag, label); when
                          extracted with thumbnails, a JPEG a segment (``thumbnails``, the
                          JPEGs' bytes one after another, and ``thumbnail_ends``)

A video's file name is its id (the video's path relative to a root, or its file name) with every
character outside ``[A-Za-z0-9_.~-]`` percent-encoded, so ids map to names one to one and back.

The store may be a local directory or a folder on a bucket (any ``paths`` URL). Each file is
written whole or not at all (``paths.write_bytes``): locally through a unique ``*.tmp`` name,
fsync and a rename, so a name ending in ``.npz`` is always a complete file and a killed writer
leaves at most a ``.tmp`` file, which readers never look at; on a bucket as one object upload.
On a bucket, where there is no atomic rename, a video counts as done only once its commit marker
``done/<video file name without .npz>`` (an empty object) exists, written after its ``.npz`` object is complete:
``video_ids`` lists ``done/``, and a writer killed between the two leaves a file that is never
read and is overwritten when the video is extracted again. Each process writes only the videos
it was given (``shard_videos``), under names no other process uses; ``store.json`` has the same
content for every writer of a store, so whichever write lands last changes nothing, and a writer
with other settings reads back a description that differs from its own and is refused. Each
video file records a digest of ``store.json``, so a file from a store of other settings is
refused instead of mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from headhunt_jax import files, paths
from headhunt_jax.errors import UserError
from headhunt_jax.video import VideoMetadata

FORMAT_VERSION = 1
SPEC_FILE = "store.json"
BACKBONE_FILE = "backbone.json"
SUFFIX = ".npz"
DONE = "done"  # on a bucket: the commit markers' folder


class StoreError(UserError):
    """A store that cannot be used as asked: the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """What the features in a store are; two runs may share a store only with equal specs.

    ``layers``: the layers read; ``heads``: the expert heads as (layer, head) pairs in the order
    their features are stored, or None when every head of ``layers`` is stored. ``feature_shape``
    is one segment's: [len(layers), heads, head_dim] or [len(heads), head_dim]. ``dtype``: the
    backbone's compute dtype (the stored features are float32 either way). ``clip``: the unit a
    feature row covers: "segment" (consecutive ``segment_length``-frame windows, the inference
    unit) or "video" (one row a video, ``frames_per_segment`` frames spread over all of it, the
    original's unit for hunting and training; ``segment_length`` is then unused).
    ``kinds``: the features each row holds (``features.KINDS``): "heads" (described above) and/or
    "hidden", each decoder layer's hidden state at the last position (HiProbe-VAD's), of
    ``hidden_layers``, [len(hidden_layers), hidden] a segment (``hidden_shape``). A store without
    the heads kind has ``layers`` (), ``heads`` None and ``feature_shape`` (0,). Stores written
    before the field hold heads only.
    """

    backbone: str
    prompt: str
    dtype: str
    image_size: int
    frames_per_segment: int
    segment_length: int
    layers: tuple[int, ...]
    heads: tuple[tuple[int, int], ...] | None
    feature_shape: tuple[int, ...]
    format_version: int = FORMAT_VERSION
    backbone_fingerprint: str = ""
    clip: str = "segment"
    # The backbone family's processor spec (resolution, normalisation, tokens per frame,
    # template) as sorted (key, value) pairs; () in stores written before it was recorded.
    processor: tuple[tuple[str, Any], ...] = ()
    # The options the processor was built with (``Backbone.processor(**options)``), sorted pairs.
    processor_options: tuple[tuple[str, Any], ...] = ()
    kinds: tuple[str, ...] = ("heads",)
    hidden_layers: tuple[int, ...] = ()
    hidden_shape: tuple[int, ...] = ()

    def holds(self, kind: str) -> bool:
        """Whether the store's rows hold features of ``kind`` ("heads" or "hidden")."""
        return kind in self.kinds

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        # Fields added after 0.1.0 are written only when they differ from their default, so the
        # description (and its digest, recorded in every video file) of an older store is unchanged.
        for name, default in _ADDED_FIELDS.items():
            if d[name] == default:
                del d[name]
        for name in ("processor", "processor_options"):
            if name in d:
                d[name] = dict(getattr(self, name))
        return d

    @classmethod
    def from_json(cls, d: dict) -> StoreSpec:
        d = dict(d)
        d["layers"] = tuple(d["layers"])
        d["heads"] = None if d["heads"] is None else tuple(tuple(h) for h in d["heads"])
        d["feature_shape"] = tuple(d["feature_shape"])
        for name in ("kinds", "hidden_layers", "hidden_shape"):
            if name in d:
                d[name] = tuple(d[name])
        d["processor"] = _frozen(d.get("processor", {}))
        d["processor_options"] = _frozen(d.get("processor_options", {}))
        return cls(**d)

    def digest(self) -> str:
        text = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_ADDED_FIELDS = {
    "clip": "segment",
    "processor": (),
    "processor_options": (),
    "kinds": ("heads",),
    "hidden_layers": (),
    "hidden_shape": (),
}


def _frozen(spec) -> tuple[tuple[str, Any], ...]:
    """A processor spec (a mapping) as sorted pairs, lists as tuples: comparable and hashable."""
    return tuple(
        sorted((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in dict(spec).items())
    )


def processor_spec(spec) -> tuple[tuple[str, Any], ...]:
    """The ``StoreSpec.processor`` value of a processor's ``spec`` mapping."""
    return _frozen(spec)


@dataclasses.dataclass(frozen=True)
class VideoFeatures:
    """One video's features and where its segments lie.

    ``features``: float32 [num_segments, *feature_shape]; segment s covers frames
    [start_frames[s], end_frames[s]) and sampled ``frame_indices[s]`` (int64 [frames_per_segment]).
    ``label``: 1 for an anomalous video, 0 for a normal one, None when unknown. ``thumbnails``:
    one small JPEG a segment (its middle sampled frame, ``VideoReader(thumbnail_height=...)``),
    or None when extracted without. ``hidden``: float32 [num_segments, *hidden_shape], the
    hidden states of the store's ``hidden_layers``, or None when the store holds none.
    """

    video_id: str
    features: np.ndarray
    start_frames: np.ndarray
    end_frames: np.ndarray
    frame_indices: np.ndarray
    metadata: VideoMetadata
    label: int | None = None
    thumbnails: tuple[bytes, ...] | None = None
    hidden: np.ndarray | None = None

    def kinds(self) -> dict[str, np.ndarray]:
        """{kind: features [num_segments, ...]}: "heads" (``features``) and "hidden" where
        held."""
        held = {"heads": self.features}
        return held if self.hidden is None else held | {"hidden": self.hidden}

    @property
    def num_segments(self) -> int:
        return int(self.features.shape[0])


@dataclasses.dataclass(frozen=True)
class FeatureArrays:
    """Segments of many videos as flat arrays, videos in id order, segments in time order.

    ``features`` float32 [N, *feature_shape]; ``labels`` int32 [N], each segment's video label
    (-1 where unknown); ``video_ids`` str [N]; ``segments`` int32 [N], the segment's index in its
    video.
    """

    features: np.ndarray
    labels: np.ndarray
    video_ids: np.ndarray
    segments: np.ndarray


def file_name(video_id: str) -> str:
    """The file holding a video's features: its id percent-encoded, ``.npz`` appended."""
    return quote(video_id, safe="") + SUFFIX


def _thumbnails(f) -> tuple[bytes, ...]:
    """The JPEGs of a video file: its ``thumbnails`` bytes cut at ``thumbnail_ends``."""
    data, ends = f["thumbnails"].tobytes(), f["thumbnail_ends"].tolist()
    return tuple(data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True))


def _read_spec(path: Path) -> StoreSpec:
    record = files.read_json(path, "a feature store description", error=StoreError)
    try:
        return StoreSpec.from_json(record)
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(f"{path}: not a feature store description ({err})") from None


def _mismatch(path: Path, found: StoreSpec, wanted: StoreSpec) -> StoreError:
    have, want = dataclasses.asdict(found), dataclasses.asdict(wanted)
    diffs = [
        f"{k}: store has {have[k]!r}, asked for {want[k]!r}" for k in want if have[k] != want[k]
    ]
    return StoreError(f"{path}: the store holds other features; " + "; ".join(diffs))


class FeatureStore:
    """A feature store directory (see the module docstring for its layout).

    ``FeatureStore(path)`` opens an existing store; ``FeatureStore.create(path, spec)`` opens or
    starts one and checks that an existing one has the same spec.
    """

    def __init__(self, path: str | Path):
        self.path = paths.of(path)
        self.remote = paths.is_url(self.path)
        spec_file = self.path / SPEC_FILE
        if not spec_file.exists():
            if self.remote:
                paths.check_bucket(self.path)
            raise StoreError(f"{self.path}: not a feature store (no {SPEC_FILE})")
        self.spec = _read_spec(spec_file)
        self._digest = self.spec.digest()

    @classmethod
    def create(cls, path: str | Path, spec: StoreSpec) -> FeatureStore:
        path = paths.of(path)
        spec_file = path / SPEC_FILE
        if not spec_file.exists():
            paths.mkdir(path)
            paths.write_bytes(
                spec_file, json.dumps(spec.to_json(), indent=2, ensure_ascii=False).encode()
            )
        # Read back: another writer may have put its own description there first.
        store = cls(path)
        found = store.spec
        if not found.processor:  # written before processor specs were recorded (0.1.0)
            found = dataclasses.replace(found, processor=spec.processor)
        if found != spec:
            raise _mismatch(spec_file, store.spec, spec)
        return store

    @property
    def backbone_path(self) -> str | None:
        """The directory the backbone was loaded from at the last extraction, if recorded."""
        return self._backbone_record().get("path")

    @property
    def backbone_hub(self) -> str | None:
        """``org/name@commit`` when the backbone was loaded by a Hub id, if recorded."""
        return self._backbone_record().get("hub")

    def _backbone_record(self) -> dict:
        file = self.path / BACKBONE_FILE
        if not file.exists():
            return {}
        return files.read_json(file, "the store's backbone record", error=StoreError)

    def record_backbone(self, path, hub_ref: str | None = None) -> None:
        where = path if paths.is_url(path) else Path(path).absolute()
        record = {"path": str(where)}
        if hub_ref:
            record["hub"] = hub_ref
        paths.write_bytes(self.path / BACKBONE_FILE, json.dumps(record).encode())

    def _names(self) -> list[str]:
        """The file names of the complete videos (on a bucket: those with a commit marker)."""
        if not self.remote:
            return [p.name for p in self.path.iterdir() if p.name.endswith(SUFFIX)]
        done = self.path / DONE
        done.fs.invalidate_cache(done.path)  # other hosts may have written since the last listing
        if not done.exists():
            return []
        return [p.name + SUFFIX for p in done.iterdir() if p.name]

    def video_ids(self) -> list[str]:
        """Ids of the complete videos, sorted."""
        return sorted(unquote(n[: -len(SUFFIX)]) for n in self._names())

    def _done(self, name: str):
        """What says the video file ``name`` is complete: on a bucket its marker (``done/``
        and the file's name without ``.npz``, so that no marker passes for a video file), else
        the file itself."""
        return self.path / DONE / name.removesuffix(SUFFIX) if self.remote else self.path / name

    def __contains__(self, video_id: str) -> bool:
        return self._done(file_name(video_id)).exists()

    def __len__(self) -> int:
        return len(self.video_ids())

    def __iter__(self) -> Iterator[VideoFeatures]:
        return (self.read(v) for v in self.video_ids())

    def write(self, video: VideoFeatures) -> Path:
        """Writes one video's file atomically; returns its path."""
        n = video.num_segments
        want = (n, *self.spec.feature_shape)
        if video.features.shape != want or video.features.dtype != np.float32:
            raise ValueError(
                f"{video.video_id}: features must be float32 {list(want)}, got "
                f"{video.features.dtype} {list(video.features.shape)}"
            )
        meta = {
            "video_id": video.video_id,
            "store": self._digest,
            "label": None if video.label is None else int(video.label),
            "metadata": dataclasses.asdict(video.metadata),
        }
        arrays = {
            "features": video.features,
            "start_frames": np.asarray(video.start_frames, np.int64).reshape(n),
            "end_frames": np.asarray(video.end_frames, np.int64).reshape(n),
            "frame_indices": np.asarray(video.frame_indices, np.int64).reshape(n, -1),
            # A unicode array, so reading never needs pickle.
            "meta": np.asarray(json.dumps(meta, ensure_ascii=False)),
        }
        if self.spec.holds("hidden"):
            want = (n, *self.spec.hidden_shape)
            hidden = video.hidden
            if hidden is None or hidden.shape != want or hidden.dtype != np.float32:
                got = "none" if hidden is None else f"{hidden.dtype} {list(hidden.shape)}"
                raise ValueError(
                    f"{video.video_id}: hidden states must be float32 {list(want)}, got {got}"
                )
            arrays["hidden"] = hidden
        if video.thumbnails is not None:
            if len(video.thumbnails) != n:
                raise ValueError(
                    f"{video.video_id}: {len(video.thumbnails)} thumbnails for {n} segments"
                )
            arrays["thumbnails"] = np.frombuffer(b"".join(video.thumbnails), np.uint8)
            arrays["thumbnail_ends"] = np.cumsum([len(j) for j in video.thumbnails], dtype=np.int64)
        path = self.path / file_name(video.video_id)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        paths.write_bytes(path, buffer.getbuffer())
        if self.remote:
            paths.write_bytes(self._done(path.name), b"")
        else:
            # Only this process writes this video, so any other temporary of it is a killed run's.
            for stale in self.path.glob(f"{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        return path

    def read(self, video_id: str, _data: bytes | None = None) -> VideoFeatures:
        path = self.path / file_name(video_id)
        if _data is None and not self._done(path.name).exists():
            raise KeyError(f"{path}: no features for video {video_id!r} in this store")
        if _data is None and self.remote:
            _data = path.read_bytes()
        try:
            with np.load(path if _data is None else io.BytesIO(_data)) as f:
                meta = json.loads(str(f["meta"]))
                arrays = {k: f[k] for k in ("features", "start_frames", "end_frames")}
                frame_indices = f["frame_indices"]
                thumbnails = _thumbnails(f) if "thumbnails" in f else None
                hidden = f.get("hidden")
        except (
            OSError,
            EOFError,
            ValueError,
            KeyError,
            zipfile.BadZipFile,
            NotImplementedError,  # zipfile: a compression method the damage made up
        ) as err:
            raise StoreError(f"{path}: unreadable feature file ({err})") from None
        if not (
            isinstance(meta, dict)
            and {"store", "video_id", "metadata", "label"} <= meta.keys()
            and isinstance(meta["metadata"], dict)
        ):
            raise StoreError(f"{path}: unreadable feature file (its meta entry is damaged)")
        if meta["store"] != self._digest:
            raise StoreError(
                f"{path}: written for a store of other settings than {self.path / SPEC_FILE}"
            )
        return VideoFeatures(
            video_id=meta["video_id"],
            frame_indices=frame_indices,
            metadata=VideoMetadata(**meta["metadata"]),
            label=meta["label"],
            thumbnails=thumbnails,
            hidden=hidden,
            **arrays,
        )

    def _fetched(self, ids: list[str]) -> list[VideoFeatures]:
        """The videos ``ids`` of a store on a bucket, their objects fetched concurrently after
        one listing of the commit markers."""
        done = set(self.video_ids())
        for v in ids:
            if v not in done:
                raise KeyError(
                    f"{self.path / file_name(v)}: no features for video {v!r} in this store"
                )
        keys = [(self.path / file_name(v)).path for v in ids]
        blobs = self.path.fs.cat(keys) if keys else {}
        blobs = blobs if isinstance(blobs, dict) else {keys[0]: blobs}
        return [self.read(v, blobs[k]) for v, k in zip(ids, keys, strict=True)]

    def load(
        self, video_ids: Iterable[str] | None = None, *, require_labels: bool = False
    ) -> FeatureArrays:
        """Every segment of the given videos (default: all) as flat arrays.

        ``require_labels``: raise, naming them, if any of the videos has no label.
        """
        ids = self.video_ids() if video_ids is None else sorted(video_ids)
        videos = self._fetched(ids) if self.remote else [self.read(v) for v in ids]
        unlabelled = [v.video_id for v in videos if v.label is None]
        if require_labels and unlabelled:
            raise StoreError(f"{self.path}: videos without a label: {', '.join(unlabelled)}")
        counts = np.asarray([v.num_segments for v in videos], np.int64)
        firsts = np.cumsum(counts) - counts
        labels = np.asarray([-1 if v.label is None else v.label for v in videos], np.int32)
        empty = np.zeros((0, *self.spec.feature_shape), np.float32)
        return FeatureArrays(
            features=np.concatenate([empty, *(v.features for v in videos)]),
            labels=np.repeat(labels, counts),
            video_ids=np.repeat(np.asarray(ids, dtype=str), counts),
            segments=(np.arange(counts.sum()) - np.repeat(firsts, counts)).astype(np.int32),
        )
