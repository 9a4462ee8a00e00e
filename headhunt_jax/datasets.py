"""UCF-Crime and XD-Violence as lists of videos, in the layouts the original code reads.

Each function walks a dataset root and returns a :class:`DatasetListing`: its videos as
:class:`VideoItem` s (path, id, 0/1 label, class, annotated events), sorted by id, plus the
warnings that did not stop the listing. Nothing is decoded; only file names and the annotation
and split-list files are read.

A root, an annotation file or a split list may be a URL (``s3://``, ``gs://``;
:mod:`headhunt_jax.paths`): a bucket is walked as a folder, its videos found in one recursive
listing of the video folder, and the items' paths stay URLs (:class:`VideoItem`'s ``path`` a
``UPath``, which :class:`~headhunt_jax.video.VideoReader` reads).

UCF-Crime (``ucf_crime``)::

    ROOT/Videos/<Class>/<name>.mp4    any depth, the class is the video's folder; a folder whose
                                      name has the word "normal" (Training_Normal_Videos_Anomaly,
                                      Testing_Normal_Videos_Anomaly, Normal_Videos_event, ...)
                                      holds normal videos, any other an anomaly class
    ROOT/Temporal_Anomaly_Annotation_for_Testing_Videos.txt (or Temporal_Anomaly_Annotation.txt)
                                      `name.mp4 Class start end start end`, -1 -1 for none
    ROOT/Anomaly_Train.txt, ROOT/Anomaly_Test.txt (optional; also in ROOT/Anomaly_Detection_splits)
                                      the official split: one `Class/name.mp4` per line

With the split lists, a listed video is found at its listed path under Videos/ or else by its
file name anywhere under Videos/ (the official lists name folders that the downloads do not
always have, e.g. the training normals come in Training-Normal-Videos-Part-1/2; file names are
unique across the dataset). Without them, the test split is the annotated videos and the training
split every other video. Normal_Videos_event (the event-recognition normals) repeats 50 test
normals under the same names; where a name is found there and in another folder, the other copy
is the one meant.

XD-Violence (``xd_violence``)::

    ROOT/train/**/<name>_label_<codes>.mp4   training videos (optional; any depth)
    ROOT/test/**/... or ROOT/videos/...      test videos (the original's `videos` folder)
    ROOT/annotations.txt (or in the test folder)
                                             `name.mp4 start end [start end ...]`, test anomalies

The label comes from the name: `label_A` is normal, anything else (B1 fighting, B2 shooting, B4
riot, B5 abuse, B6 car accident, G explosion, up to three codes joined by '-') anomalous; the class
is the first code's category.

Events are frame ranges [start, end), as :mod:`headhunt_jax.evaluation` reads the annotation files;
training videos carry no events (their labels are video-level).

Official lists. Where the folder lacks a split list or an annotation file and its videos carry
the official release's names (one of them in the official lists), the official files packaged in
``headhunt_jax/data`` (the top-level ``data/`` of the source tree; ``data/README.md`` names their
sources) stand in, and a warning says so. A folder of other videos in the same layout is listed
from its own files, as above.

Errors and warnings. Whatever would make the listing wrong or a test video silently missing raises
:class:`DatasetError` naming the file and listing the videos concerned: a missing root, video
folder, split folder or annotation file; a split-list entry or an annotated name with no video;
a test video with no annotation line (UCF-Crime: every test video; XD-Violence: every anomalous
one); an annotation that contradicts the video's label (a normal video with events, an anomaly
annotated as Normal); a name that matches several videos; a video in both split lists; an
XD-Violence name without a label; an empty split. Malformed annotation lines raise
:class:`~headhunt_jax.annotations.AnnotationError` (file and line). Warnings, in
``DatasetListing.warnings``, report what is left out or odd but does not change a test video's
ground truth: videos on disk in neither split list, duplicate copies left out, an annotated video
the test list does not name, an anomalous test video annotated with no event, a class name in the
annotation that differs from the video's folder.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from headhunt_jax import paths
from headhunt_jax.annotations import (
    parse_ucf_crime_annotations,
    parse_xd_violence_annotations,
    video_key,
    xd_violence_label,
)
from headhunt_jax.errors import InputError, UserError
from headhunt_jax.files import read_lines, read_text
from headhunt_jax.resources import package_dir
from headhunt_jax.video import VIDEO_EXTENSIONS

Split = Literal["train", "test", "all"]
SPLITS = ("train", "test")

UCF_ANNOTATION_FILES = (
    "Temporal_Anomaly_Annotation_for_Testing_Videos.txt",
    "Temporal_Anomaly_Annotation.txt",
)
UCF_SPLIT_FILES = {"train": "Anomaly_Train.txt", "test": "Anomaly_Test.txt"}
UCF_SPLIT_FOLDER = "Anomaly_Detection_splits"
UCF_EVENT_NORMALS = "Normal_Videos_event"
NORMAL_CLASS = "Normal"

XD_ANNOTATION_FILE = "annotations.txt"
XD_TEST_LIST = "test_list.txt"

# The official lists, packaged from data/ (data/README.md).
OFFICIAL_DIR = package_dir("data")
UCF_OFFICIAL = OFFICIAL_DIR / "ucf_crime"
XD_OFFICIAL = OFFICIAL_DIR / "xd_violence"
XD_CATEGORIES = {
    "A": NORMAL_CLASS,
    "B1": "Fighting",
    "B2": "Shooting",
    "B4": "Riot",
    "B5": "Abuse",
    "B6": "Car accident",
    "G": "Explosion",
}

# A whole word, so that Training-Normal-Videos-Part-1 is normal and an "Abnormal" folder is not.
_NORMAL_WORD = re.compile(r"(?:^|[_\-\s])normal(?:[_\-\s]|$)", re.IGNORECASE)

# Enough names to find the culprits in a message without flooding it.
_NAMES_SHOWN = 10


class DatasetError(UserError):
    """A dataset that cannot be listed as asked; the message names the file and the problem."""


class SplitNotFoundError(DatasetError):
    """The dataset's layout at this root has no such split (e.g. XD-Violence without train/)."""


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One video of a dataset.

    ``video_id``: the path relative to the dataset root, '/'-separated (what
    :func:`headhunt_jax.extract.video_ids` gives with the same root). ``label``: 1 anomalous,
    0 normal. ``class_name``: the anomaly class, "Normal" for normal videos. ``events``: annotated
    anomalous frame ranges [start, end), empty for normal and training videos.
    """

    path: Path
    video_id: str
    label: int
    class_name: str
    events: tuple[tuple[int, int], ...]
    split: Literal["train", "test"]

    @property
    def key(self) -> str:
        """The name the annotation files know the video by (its file name without extension)."""
        return video_key(self.path.name)


@dataclasses.dataclass(frozen=True)
class DatasetListing:
    """A dataset split: its videos sorted by id, and what was noticed but did not stop listing."""

    name: str
    root: Path
    split: Split
    items: tuple[VideoItem, ...]
    warnings: tuple[str, ...]

    def __iter__(self) -> Iterator[VideoItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _some(names: Iterable[object]) -> str:
    names = [str(n) for n in names]
    more = len(names) - _NAMES_SHOWN
    return ", ".join(names[:_NAMES_SHOWN]) + (f" (and {more} more)" if more > 0 else "")


def _check_root(root: str | Path, dataset: str) -> Path:
    root = paths.of(root)
    if paths.is_url(root):
        _forget_listings(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory (the {dataset} root)")
    return root


def _forget_listings(root: Path) -> None:
    """Drops the listings at and under a bucket's ``root`` that its file system cached (s3fs and
    gcsfs keep them for the life of the process), so that a listing sees what is there now."""
    fs, prefix = root.fs, root.path.rstrip("/")
    fs.invalidate_cache(prefix)
    cached = getattr(fs, "dircache", {})
    for key in [k for k in cached if k.startswith(prefix + "/")]:
        cached.pop(key, None)


def _wanted(split: str) -> tuple[str, ...]:
    if split == "all":
        return SPLITS
    if split not in SPLITS:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return (split,)


def _child_dir(parent: Path, name: str) -> Path | None:
    """The folder ``name`` in ``parent``, matched case-insensitively; None if absent."""
    found = [p for p in parent.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    if len(found) > 1:
        raise DatasetError(f"{parent}: several folders named {name!r}: {_some(found)}")
    return found[0] if found else None


def _video_files(folder: Path) -> list[Path]:
    # One recursive listing on a bucket, whose entries' kinds it caches for is_file.
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
    )


def _find_file(explicit: str | Path | None, names: Sequence[str], folders: Sequence[Path]):
    """``explicit`` (which must exist) or the one file of ``names`` in ``folders``; else None."""
    if explicit is not None:
        explicit = paths.of(explicit)
        if not explicit.is_file():
            raise DatasetError(f"{explicit}: no such file")
        return explicit
    found = [f / n for f in folders for n in names if (f / n).is_file()]
    if len(found) > 1:
        raise DatasetError(f"several candidate files: {_some(found)}; pass the one to use")
    return found[0] if found else None


def _pick(candidates: Sequence[Path], exact: Path | None = None) -> Path | None:
    """The video a name means among the files of that name; None when it stays ambiguous."""
    if exact in candidates:
        return exact
    if len(candidates) > 1:
        candidates = [c for c in candidates if c.parent.name != UCF_EVENT_NORMALS] or candidates
    return candidates[0] if len(candidates) == 1 else None


def _listing(name, root, split, items, warnings) -> DatasetListing:
    return DatasetListing(
        name=name,
        root=root,
        split=split,
        items=tuple(sorted(items, key=lambda i: i.video_id)),
        warnings=tuple(warnings),
    )


# --- UCF-Crime ------------------------------------------------------------------------------


def _ucf_class(folder: str) -> tuple[str, int]:
    """(class, label) of a class folder or annotated class: "normal" as a word means normal."""
    return (NORMAL_CLASS, 0) if _NORMAL_WORD.search(folder) else (folder, 1)


def _ucf_official_names(by_key: dict[str, list[Path]]) -> bool:
    """Whether the videos carry the official release's names (one of them in its split lists)."""
    official = {
        video_key(line.strip())
        for name in UCF_SPLIT_FILES.values()
        for line in read_lines(UCF_OFFICIAL / name, "a split list")
        if line.strip()
    }
    return not official.isdisjoint(by_key)


def _ucf_annotated_classes(path: Path) -> dict[str, str]:
    """{video key: class column} of a file that parse_ucf_crime_annotations has accepted."""
    lines = read_lines(path, "an annotation file")
    return {video_key(f[0]): f[1] for f in map(str.split, lines) if f}


def _ucf_split_lists(root: Path, split_lists) -> dict[str, Path] | None:
    if split_lists is not None:
        if set(split_lists) != set(SPLITS):
            raise ValueError(f"split_lists needs 'train' and 'test', got {sorted(split_lists)}")
        lists = {s: paths.of(split_lists[s]) for s in SPLITS}
        missing = [str(p) for p in lists.values() if not p.is_file()]
        if missing:
            raise DatasetError(f"no such split list: {_some(missing)}")
        return lists
    found = {
        s: _find_file(None, [n], [root, root / UCF_SPLIT_FOLDER])
        for s, n in UCF_SPLIT_FILES.items()
    }
    present = {s: p for s, p in found.items() if p is not None}
    if len(present) == 1:
        (have,) = present.values()
        (lacking,) = (UCF_SPLIT_FILES[s] for s in found if found[s] is None)
        raise DatasetError(f"{have}: found without {lacking} beside it; both lists are needed")
    return present or None


def _read_split_list(path: Path) -> list[tuple[int, str]]:
    lines = read_lines(path, "a split list (one video a line)")
    return [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]


def _ucf_members_listed(lists, wanted, videos_dir, files, by_key, warnings, missing_ok=False):
    """{split: videos} from the official split lists; ``missing_ok``: listed videos absent from
    the folder are left out with a warning (the packaged lists over a partial download)."""
    listed = {s: _read_split_list(p) for s, p in lists.items()}
    for s, entries in listed.items():
        counts = Counter(video_key(e) for _, e in entries)
        repeated = sorted(k for k, n in counts.items() if n > 1)
        if repeated:
            raise DatasetError(
                f"{lists[s]}: {len(repeated)} videos listed twice: {_some(repeated)}"
            )
    keys = {s: {video_key(e) for _, e in entries} for s, entries in listed.items()}
    both = sorted(keys["train"] & keys["test"])
    if both:
        raise DatasetError(
            f"{lists['train']} and {lists['test']} both list {len(both)} videos: {_some(both)}"
        )
    members = {}
    for s in wanted:
        unresolved, members[s] = [], []
        for line_number, entry in listed[s]:
            video = _pick(by_key.get(video_key(entry), []), videos_dir / entry)
            if video is None:
                unresolved.append(f"line {line_number} {entry!r}")
            else:
                members[s].append(video)
        if unresolved:
            message = (
                f"{lists[s]}: {len(unresolved)} listed videos are missing under {videos_dir} "
                f"or match several files: {_some(unresolved)}"
            )
            if not missing_ok:
                raise DatasetError(message)
            warnings.append(message + "; they are left out")
    listed_keys = keys["train"] | keys["test"]
    unlisted = [f.relative_to(videos_dir) for f in files if video_key(f.name) not in listed_keys]
    if unlisted:
        warnings.append(
            f"{len(unlisted)} videos under {videos_dir} are in neither split list and are left "
            f"out: {_some(unlisted)}"
        )
    return members


def _ucf_members_annotated(annotation, events, videos_dir, files, by_key, warnings):
    """{split: videos} without split lists: the annotated videos are the test split."""
    test, unresolved = [], []
    for key in events:
        video = _pick(by_key.get(key, []))
        if video is None:
            unresolved.append(key)
        else:
            test.append(video)
    if unresolved:
        raise DatasetError(
            f"{annotation}: {len(unresolved)} annotated videos are missing under {videos_dir} or "
            f"match several files: {_some(unresolved)}"
        )
    chosen = set(test)
    copies = [f for f in files if video_key(f.name) in events and f not in chosen]
    if copies:
        warnings.append(
            f"{len(copies)} videos share a name with an annotated test video and are left out: "
            f"{_some(f.relative_to(videos_dir) for f in copies)}"
        )
    return {"test": test, "train": [f for f in files if video_key(f.name) not in events]}


def _ucf_test_events(annotation, events, test_videos, warnings):
    """{video: events} of the test videos, checked against their folders' labels."""
    classes = _ucf_annotated_classes(annotation)
    problems: dict[str, list[str]] = defaultdict(list)
    checked = {}
    for path in test_videos:
        key = video_key(path.name)
        if key not in events:
            problems["have no line"].append(key)
            continue
        class_name, label = _ucf_class(path.parent.name)
        annotated = classes[key]
        if _ucf_class(annotated)[1] != label:
            problems["are annotated against their folder's label"].append(
                f"{key} ({annotated}, in {path.parent.name}/)"
            )
        elif label == 0 and events[key]:
            problems["are normal and have events"].append(key)
        elif label == 1 and annotated != class_name:
            warnings.append(f"{annotation}: {key} is annotated {annotated}, in {class_name}/")
        if label == 1 and not events[key]:
            warnings.append(f"{annotation}: anomalous test video {key} has no event")
        checked[path] = tuple(events[key])
    if problems:
        raise DatasetError(
            "\n".join(
                f"{annotation}: {len(v)} test videos {what}: {_some(v)}"
                for what, v in problems.items()
            )
        )
    return checked


def ucf_crime(
    root: str | Path,
    split: Split = "test",
    *,
    annotation_file: str | Path | None = None,
    split_lists: dict[str, str | Path] | None = None,
    official: bool = True,
) -> DatasetListing:
    """UCF-Crime's videos of ``split`` ('train', 'test' or 'all') under ``root``.

    ``annotation_file``: the temporal annotation file, if not in ``root`` (or
    ``root/Anomaly_Detection_splits``) under its usual name. ``split_lists``: {'train': path,
    'test': path} of the official lists, if not in ``root`` or ``root/Anomaly_Detection_splits``.
    The annotation file is needed for the test split, and for the training split when there are
    no split lists. ``official``: let the packaged official files stand in for missing ones
    (module docstring); their videos missing from the folder are left out with a warning. See the module docstring for the layout, the errors and the warnings.
    """
    root = _check_root(root, "UCF-Crime")
    wanted = _wanted(split)
    videos_dir = _child_dir(root, "Videos")
    if videos_dir is None:
        raise DatasetError(f"{root}: no Videos folder (expected ROOT/Videos/<Class>/*.mp4)")
    files = _video_files(videos_dir)
    loose = [f.name for f in files if f.parent == videos_dir]
    if loose:
        raise DatasetError(f"{videos_dir}: videos outside a class folder: {_some(loose)}")
    by_key: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        by_key[video_key(f.name)].append(f)

    annotation = _find_file(annotation_file, UCF_ANNOTATION_FILES, [root, root / UCF_SPLIT_FOLDER])
    lists = _ucf_split_lists(root, split_lists)
    warnings: list[str] = []
    packaged_annotation = packaged_lists = False
    if official and (annotation is None or lists is None) and _ucf_official_names(by_key):
        if annotation is None:
            annotation, packaged_annotation = UCF_OFFICIAL / UCF_ANNOTATION_FILES[0], True
            warnings.append(
                f"{root} has no temporal annotation file; using the official {annotation}"
            )
        if lists is None:
            lists, packaged_lists = {s: UCF_OFFICIAL / n for s, n in UCF_SPLIT_FILES.items()}, True
            warnings.append(f"{root} has no split lists; using the official ones in {UCF_OFFICIAL}")
    if annotation is None and ("test" in wanted or lists is None):
        needed = "the test split" if "test" in wanted else "listing without the split lists"
        raise DatasetError(
            f"{root}: no temporal annotation file ({' or '.join(UCF_ANNOTATION_FILES)}), "
            f"needed for {needed}"
        )
    events = parse_ucf_crime_annotations(annotation) if annotation else {}

    if lists is not None:
        members = _ucf_members_listed(
            lists, wanted, videos_dir, files, by_key, warnings, missing_ok=packaged_lists
        )
        if "test" in wanted:
            absent = [k for k in events if k not in by_key]
            if absent:
                message = (
                    f"{annotation}: {len(absent)} annotated videos have no file under "
                    f"{videos_dir}: {_some(absent)}"
                )
                if not packaged_annotation:
                    raise DatasetError(message)
                warnings.append(message + "; they are left out")
                events = {k: e for k, e in events.items() if k in by_key}
            test_keys = {video_key(v.name) for v in members["test"]}
            unlisted = [k for k in events if k not in test_keys]
            if unlisted:
                warnings.append(
                    f"{annotation}: {len(unlisted)} annotated videos are not in "
                    f"{lists['test']}, so not in the test split: {_some(unlisted)}"
                )
    else:
        members = _ucf_members_annotated(annotation, events, videos_dir, files, by_key, warnings)
    for s in wanted:
        if not members[s]:
            raise DatasetError(f"{videos_dir}: no videos in the {s} split")
    test_events = (
        _ucf_test_events(annotation, events, members["test"], warnings) if "test" in wanted else {}
    )

    items = []
    for s in wanted:
        for path in members[s]:
            class_name, label = _ucf_class(path.parent.name)
            items.append(
                VideoItem(
                    path=path,
                    video_id=path.relative_to(root).as_posix(),
                    label=label,
                    class_name=class_name,
                    events=test_events.get(path, ()) if s == "test" else (),
                    split=s,
                )
            )
    return _listing("ucf_crime", root, split, items, warnings)


# --- XD-Violence ----------------------------------------------------------------------------


def _xd_class(key: str) -> str:
    """The first label code's category ('B2-G-0' -> Shooting); an unknown code is kept as is."""
    code = key.rpartition("label_")[2].split("-")[0]
    return XD_CATEGORIES.get(code, code)


def _xd_files(folders: dict[str, Path], wanted) -> dict[str, list[Path]]:
    """The video files of each wanted split, refused when a split has none or two share a name."""
    files = {s: _video_files(folders[s]) for s in wanted}
    for s, videos in files.items():
        if not videos:
            raise DatasetError(f"{folders[s]}: no videos in the {s} split")
        by_key = defaultdict(list)
        for p in videos:
            by_key[video_key(p.name)].append(p.relative_to(folders[s]))
        repeated = [f"{k} ({', '.join(map(str, v))})" for k, v in by_key.items() if len(v) > 1]
        if repeated:
            raise DatasetError(f"{folders[s]}: several videos share a name: {_some(repeated)}")
    return files


def _xd_test_events(root, test_dir, test_labels, annotation_file, official, warnings):
    """{video key: events} of the test videos (``test_labels``: {key: 0/1}) from
    annotations.txt, the packaged one standing in where the folder has none and holds official
    videos; checked against the videos and their labels (module docstring)."""
    annotation = _find_file(annotation_file, [XD_ANNOTATION_FILE], [root, test_dir])
    listed = set(read_text(XD_OFFICIAL / XD_TEST_LIST, "a test list").split())
    names = set(test_labels)
    packaged = False
    if official and not listed.isdisjoint(names):
        missing = sorted(listed - names)
        if missing:
            warnings.append(
                f"{test_dir}: {len(missing)} of the {len(listed)} official test videos "
                f"are missing: {_some(missing)}"
            )
        if annotation is None:
            annotation, packaged = XD_OFFICIAL / XD_ANNOTATION_FILE, True
            warnings.append(f"{root} has no {XD_ANNOTATION_FILE}; using the official {annotation}")
    if annotation is None:
        raise DatasetError(
            f"{root}: no {XD_ANNOTATION_FILE} (in the root or {test_dir.name}/); it is "
            "needed for the test split"
        )
    events = parse_xd_violence_annotations(annotation)
    if packaged:  # a partial download: the missing videos were warned of above
        events = {k: e for k, e in events.items() if k in test_labels}
    absent = [k for k in events if k not in test_labels]
    unannotated = [k for k, y in test_labels.items() if y == 1 and k not in events]
    normal = [k for k in events if test_labels.get(k) == 0]
    problems = [
        f"{annotation}: {len(names)} {what}: {_some(names)}"
        for names, what in [
            (absent, f"annotated videos have no file in {test_dir}"),
            (unannotated, "anomalous test videos have no line"),
            (normal, "normal (label_A) test videos are annotated"),
        ]
        if names
    ]
    if problems:
        raise DatasetError("\n".join(problems))
    warnings += [
        f"{annotation}: anomalous test video {k} has no event" for k, e in events.items() if not e
    ]
    return events


def xd_violence(
    root: str | Path,
    split: Split = "test",
    *,
    annotation_file: str | Path | None = None,
    official: bool = True,
) -> DatasetListing:
    """XD-Violence's videos of ``split`` ('train', 'test' or 'all') under ``root``.

    ``annotation_file``: annotations.txt, if not in ``root`` or the test folder; needed for the
    test split only. ``official``: with the official release's names, warn of official test videos
    missing from the folder and let the packaged annotations stand in for a missing file. See the
    module docstring for the layout, the errors and the warnings.
    """
    root = _check_root(root, "XD-Violence")
    wanted = _wanted(split)
    test_dirs = [d for d in (_child_dir(root, "test"), _child_dir(root, "videos")) if d]
    if len(test_dirs) > 1:
        raise DatasetError(f"{root}: both test/ and videos/; which one holds the test videos?")
    folders = {"train": _child_dir(root, "train"), "test": test_dirs[0] if test_dirs else None}
    for s in wanted:
        if folders[s] is None:
            expected = "train/" if s == "train" else "test/ or videos/"
            raise SplitNotFoundError(f"{root}: no {expected} folder for the {s} split")

    files = _xd_files(folders, wanted)
    labels = {}
    unlabelled = []
    for p in (p for videos in files.values() for p in videos):
        try:
            labels[p] = xd_violence_label(p.name)
        except ValueError:
            unlabelled.append(p)
    if unlabelled:
        raise DatasetError(f"videos without `label_` in their name: {_some(unlabelled)}")

    warnings: list[str] = []
    events: dict[str, list[tuple[int, int]]] = {}
    if "test" in wanted:
        test_labels = {video_key(p.name): labels[p] for p in files["test"]}
        events = _xd_test_events(
            root, folders["test"], test_labels, annotation_file, official, warnings
        )

    items = [
        VideoItem(
            path=p,
            video_id=p.relative_to(root).as_posix(),
            label=labels[p],
            class_name=_xd_class(video_key(p.name)),
            events=tuple(events.get(video_key(p.name), ())) if s == "test" else (),
            split=s,
        )
        for s, videos in files.items()
        for p in videos
    ]
    return _listing("xd_violence", root, split, items, warnings)


# --- registry and calibration ---------------------------------------------------------------

DATASETS: dict[str, Callable[..., DatasetListing]] = {
    "ucf_crime": ucf_crime,
    "xd_violence": xd_violence,
}


def load_dataset(name: str, root: str | Path, split: Split = "test", **options) -> DatasetListing:
    """The listing of dataset ``name`` (a key of :data:`DATASETS`); ``options`` go to its function."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, split, **options)


def calibration_subset(
    items: Iterable[VideoItem], fraction: float = 0.01, seed: int = 0
) -> tuple[VideoItem, ...]:
    """The scorer's calibration videos: a seeded ``fraction`` of each class of training videos.

    The paper fits its scorer on about 1% of the training videos. Each class contributes
    ``max(1, round(fraction * n))`` of its n videos (halves round up), drawn without replacement
    by a generator seeded with ``seed`` and the class name, from the class's videos sorted by id:
    the choice does not depend on the input order, and a class's draw does not change when other
    classes are added or removed. Returns the chosen items sorted by id.

    Raises ValueError for a fraction outside (0, 1], no items, or items not from the training
    split (the calibration videos must not overlap the evaluation videos).
    """
    items = tuple(items)
    if not 0 < fraction <= 1:
        raise InputError(f"the calibration fraction must be in (0, 1], got {fraction}")
    if not items:
        raise InputError("no videos to choose calibration videos from")
    not_train = [i.video_id for i in items if i.split != "train"]
    if not_train:
        raise ValueError(
            f"calibration videos come from the training split; {len(not_train)} are from "
            f"another: {_some(not_train)}"
        )
    by_class: dict[str, list[VideoItem]] = defaultdict(list)
    for item in items:
        by_class[item.class_name].append(item)
    chosen = []
    for class_name in sorted(by_class):
        members = sorted(by_class[class_name], key=lambda i: i.video_id)
        count = max(1, math.floor(fraction * len(members) + 0.5))
        rng = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
        chosen += [members[i] for i in rng.choice(len(members), count, replace=False)]
    return tuple(sorted(chosen, key=lambda i: i.video_id))
