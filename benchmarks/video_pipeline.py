"""Decode + preprocess throughput and peak memory of the single-pass video reader.

Writes a synthetic H.264 clip (10 minutes of 320x240 at 30 fps by default), then runs three ways
of turning it into segments, each in its own process so that its peak RSS (Linux's VmHWM) is
its own:

- single-pass: ``headhunt_jax.video.VideoReader``, the video decoded once, front to back;
- seek per segment: the original's way, for every segment open the file, seek to the keyframe
  before the segment and decode forward through its sampled frames (kinder than the original,
  whose decord reader also re-reads the whole file's packet index on every open);
- load all: decode every frame to RGB first, then sample.

All three must give the same pixels (checked per segment). Prints segments/s for each, the
throughput ratio single-pass / seek-per-segment and the peak-memory ratio single-pass / load-all.

    python benchmarks/video_pipeline.py [--minutes 10] [--width 320] [--height 240] [--fps 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from headhunt_jax.video import (
    VideoReader,
    preprocess_frame,
    segment_count,
    segment_frame_indices,
)

MODES = ("single-pass", "seek-per-segment", "load-all")


def write_clip(path: Path, minutes: float, width: int, height: int, fps: int, gop: int) -> int:
    """A textured scene panning sideways with a block moving across it: it compresses and
    decodes like camera footage (motion plus residual detail), not like a flat test card."""
    n_frames = round(minutes * 60 * fps)
    y, x = np.mgrid[0:height, 0 : 2 * width]
    texture = np.random.default_rng(0).integers(-24, 25, (height, 2 * width, 3))
    base = np.stack([x * 255 // (2 * width), y * 255 // height, ((x + y) * 3) % 256], axis=-1)
    base = np.clip(base + texture, 0, 255).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(gop), "keyint_min": str(gop)}
        for i in range(n_frames):
            picture = np.ascontiguousarray(base[:, i % width : i % width + width])
            top, left = (i * 3) % (height - 32), (i * 7) % (width - 32)
            picture[top : top + 32, left : left + 32] = (i * 11) % 256
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return n_frames


def single_pass(path: Path, image_size: int) -> list[float]:
    with VideoReader(path, image_size=image_size) as reader:
        return [float(segment.pixels.sum(dtype=np.float64)) for segment in reader]


def frame_index(frame: av.VideoFrame, stream: av.video.stream.VideoStream, fps: float) -> int:
    return round(float((frame.pts - (stream.start_time or 0)) * stream.time_base) * fps)


def seek_per_segment(path: Path, image_size: int) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total, fps = stream.frames, float(stream.average_rate)
    sums = []
    for segment in range(segment_count(total)):
        indices = segment_frame_indices(segment, total).tolist()
        tiles = {}
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            target = (stream.start_time or 0) + int(indices[0] / fps / stream.time_base)
            container.seek(target, stream=stream, backward=True)
            for frame in container.decode(stream):
                i = frame_index(frame, stream, fps)
                if i in indices and i not in tiles:
                    tiles[i] = preprocess_frame(frame.to_image(), image_size)
                if i >= indices[-1]:
                    break
        pixels = np.stack([tiles[i] for i in indices])
        sums.append(float(pixels.sum(dtype=np.float64)))
    return sums


def load_all(path: Path, image_size: int) -> list[float]:
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    sums = []
    for segment in range(segment_count(len(frames))):
        indices = segment_frame_indices(segment, len(frames))
        pixels = np.stack(
            [preprocess_frame(Image.fromarray(frames[i]), image_size) for i in indices]
        )
        sums.append(float(pixels.sum(dtype=np.float64)))
    return sums


def run_mode(mode: str, path: Path, image_size: int) -> dict:
    """One measurement, in this process: wall time, per-segment pixel sums, peak RSS."""
    start = time.perf_counter()
    if mode == "baseline":
        VideoReader(path).close()
        sums = []
    else:
        sums = {
            "single-pass": single_pass,
            "seek-per-segment": seek_per_segment,
            "load-all": load_all,
        }[mode](path, image_size)
    seconds = time.perf_counter() - start
    return {"mode": mode, "seconds": seconds, "sums": sums, "peak_mb": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident set, from Linux's VmHWM.

    Not getrusage's ru_maxrss: Linux carries the parent's peak into a spawned child through
    exec, so every worker would report at least the clip writer's footprint.
    """
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


def measure(mode: str, path: Path, image_size: int) -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--video", str(path)]
    command += ["--image-size", str(image_size)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval (x264's default)")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--video", type=Path, help="use this video instead of writing one")
    parser.add_argument("--worker", choices=[*MODES, "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(run_mode(args.worker, args.video, args.image_size)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        path = args.video
        if path is None:
            path = Path(scratch) / "clip.mp4"
            start = time.perf_counter()
            write_clip(path, args.minutes, args.width, args.height, args.fps, args.gop)
            print(f"wrote {path.name} in {time.perf_counter() - start:.1f} s")
        with VideoReader(path) as reader:
            size_mb = path.stat().st_size / 2**20
            print(
                f"clip: {reader.stated_frames} frames at {reader.fps:g} fps, "
                f"{reader.expected_segments} segments, {size_mb:.1f} MiB; tiles {args.image_size} px"
            )
        baseline = measure("baseline", path, args.image_size)
        results = {mode: measure(mode, path, args.image_size) for mode in MODES}

    reference = results["single-pass"]["sums"]
    print(f"{'mode':<18}{'segments/s':>12}{'wall s':>10}{'peak RSS MiB':>15}  pixels")
    for mode, result in results.items():
        rate = len(result["sums"]) / result["seconds"]
        same = "same" if result["sums"] == reference else "DIFFER"
        print(
            f"{mode:<18}{rate:>12.2f}{result['seconds']:>10.1f}{result['peak_mb']:>15.0f}  {same}"
        )
    print(f"{'baseline (imports + open)':<40}{baseline['peak_mb']:>15.0f}")

    single, seek, everything = (results[m] for m in MODES)
    print(f"throughput single-pass / seek-per-segment: {seek['seconds'] / single['seconds']:.2f}x")
    print(
        f"peak RSS single-pass / load-all: {single['peak_mb'] / everything['peak_mb']:.3f} "
        f"({single['peak_mb']:.0f} vs {everything['peak_mb']:.0f} MiB; above the baseline: "
        f"{single['peak_mb'] - baseline['peak_mb']:.0f} vs "
        f"{everything['peak_mb'] - baseline['peak_mb']:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
