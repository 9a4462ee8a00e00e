"""The ground truth's file formats: UCF-Crime's and XD-Violence's temporal annotation files, and
the names videos are known by in them."""

import re
from pathlib import Path

from headhunt_jax.errors import InputError
from headhunt_jax.files import read_lines
from headhunt_jax.video import VIDEO_EXTENSIONS


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
    path = Path(path)
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
