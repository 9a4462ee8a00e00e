"""The ground truth: UCF-Crime's and XD-Violence's temporal annotation files, the names videos
are known by in them, and the labels they give feature rows.

Labels (``segment_labels``): a row of an annotated video is anomalous when it overlaps an annotated
event (frames [start, end)); a row of any other video takes its video's label.
"""

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from headhunt_jax import paths
from headhunt_jax.errors import InputError
from headhunt_jax.files import read_lines
from headhunt_jax.store import FeatureStore, VideoFeatures
from headhunt_jax.video import VIDEO_EXTENSIONS

Events = Mapping[str, Sequence[tuple[int, int]]]  # video key -> annotated frame ranges
Labels = Mapping[str, int]  # video key -> 1 anomalous, 0 normal


class AnnotationError(InputError):
    """A malformed line in an annotation file; the message names the file and the line."""

    def __init__(self, path, line_number, line, reason):
        super().__init__(f"{path}:{line_number}: {reason}: {line.strip()!r}")


def video_key(name):
    """The name a video is known by in annotations: a known video extension stripped.

    Only a video extension is removed: XD-Violence names contain dots ("A.Beautiful.Mind.2001__...").
    """
    name = Path(str(name)).name
    stem, dot, extension = name.rpartition(".")
    return stem if dot and f".{extension.lower()}" in VIDEO_EXTENSIONS else name


def xd_violence_label(name):
    """1 (anomaly) or 0 (normal) from an XD-Violence file name: `label_A` is normal."""
    match = re.search(r"label_([^._\s]+)", video_key(name))
    if match is None:
        raise InputError(f"no XD-Violence label (label_...) in the video name {name!r}")
    return int(match.group(1) != "A")


def _frame_pairs(path, line_number, line, fields):
    """Events from an even number of integer fields, pairs of -1 meaning none."""
    try:
        frames = [int(f) for f in fields]
    except ValueError:
        raise AnnotationError(path, line_number, line, "frame numbers must be integers") from None
    if not frames or len(frames) % 2:
        raise AnnotationError(path, line_number, line, "frames must come in (start, end) pairs")
    events = []
    for start, end in zip(frames[::2], frames[1::2], strict=True):
        if start == end == -1:
            continue
        if start < 0 or end < 0:
            raise AnnotationError(path, line_number, line, "a frame number is negative")
        if start > end:
            raise AnnotationError(path, line_number, line, "an event ends before it starts")
        events.append((start, end))
    return events


def _parse(path, min_fields, frame_fields_from, what):
    path = paths.of(path)
    annotations = {}
    for line_number, line in enumerate(read_lines(path, "an annotation file"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < min_fields:
            raise AnnotationError(path, line_number, line, f"expected {what}")
        name = video_key(fields[0])
        if name in annotations:
            raise AnnotationError(path, line_number, line, f"{name} is annotated twice")
        fields = fields[frame_fields_from:]
        annotations[name] = _frame_pairs(path, line_number, line, fields)
    return annotations


def parse_ucf_crime_annotations(path):
    """UCF-Crime's Temporal_Anomaly_Annotation file: `name.mp4 Class start end start end`.

    Returns {video key: [(start, end), ...]}; -1 -1 marks no event (normal videos: none at all).
    """
    return _parse(path, 4, 2, "`name Class start end [start end ...]`")


def parse_xd_violence_annotations(path):
    """XD-Violence's annotations.txt: `name start end [start end ...]`, anomalous videos only.

    Returns {video key: [(start, end), ...]}; videos absent from the file have no event.
    """
    return _parse(path, 3, 1, "`name start end [start end ...]`")


def read_annotations(path) -> dict[str, list[tuple[int, int]]]:
    """An XD-Violence ``annotations.txt`` or a UCF-Crime temporal annotation file (told apart by
    the second field: a class name in UCF-Crime's) -> {video key: [(start, end), ...]}.
    ``path``: a local file or a URL."""
    path = paths.of(path)
    lines = read_lines(path, "an annotation file")
    first = next((line.split() for line in lines if line.strip()), None)
    if first is not None and len(first) > 1 and not first[1].lstrip("-").isdigit():
        return parse_ucf_crime_annotations(path)
    return parse_xd_violence_annotations(path)


def segment_labels(
    video: VideoFeatures, events: Events | None = None, labels: Labels | None = None
) -> np.ndarray:
    """0/1 [S]: the labels of a video's feature rows.

    A video the annotations list (its key in ``events``): a row is anomalous when its frames
    overlap an annotated event. Any other video (XD-Violence annotates its test videos only,
    UCF-Crime labels its training videos by class folder only): its video label on every row,
    from ``labels`` ({video key: 0/1}, e.g. from a dataset listing) or else the label stored with
    its features. A video with neither is an error that names it, never silently normal.
    """
    key = video_key(video.video_id)
    if events is not None and key in events:
        hit = np.zeros(video.num_segments, bool)
        for start, end in events[key]:
            hit |= (video.start_frames < end) & (video.end_frames > start)
        return hit.astype(np.int32)
    label = labels.get(key, video.label) if labels is not None else video.label
    if label is None:
        raise InputError(
            f"video {video.video_id!r} has no label: it is not in the annotations and was "
            "extracted without one (pass --dataset/--root, or extract it with labels)"
        )
    return np.full(video.num_segments, label, np.int32)


def labelled_videos(
    store: FeatureStore, events: Events | None = None, labels: Labels | None = None
) -> list[tuple[VideoFeatures, np.ndarray]]:
    """Every video of ``store`` with its rows' labels (``segment_labels``)."""
    videos = [(v, segment_labels(v, events, labels)) for v in store]
    if not videos:
        raise InputError(f"{store.path}: the store holds no videos")
    return videos
