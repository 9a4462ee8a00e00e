"""Videos from a bucket: decode throughput of ``VideoReader`` on the same clip read from a local
S3 server (moto's, as the tests use, reached through s3fs) and from a local file, side by side.

Writes a synthetic H.264 clip (2 minutes of 320x240 at 30 fps and 2 Mbit/s by default: a panning
texture with fresh noise in every frame, so that the encoder spends the bit rate, about UCF-Crime's
size for its frames), uploads it to a bucket of a ``moto_server`` started for the run, then times,
alternating the sources, ``--repeats`` passes of each:

- demux only: every packet of the video stream read, nothing decoded (the reads alone), opened
  as ``VideoReader`` opens each source;
- decode: every segment of the clip, 448 px tiles (InternVL3's), as ``extract`` reads it;
- decode + extract (default on; ``--no-extract``): the same at the demo's tiny InternVL3's size
  (112 px), every head's features of batches of 8 segments (one prompt), the forward compiled
  before the timing; decoding and the forward run one after the other here (``extract`` overlaps
  them in a thread), so the figure is the sum of both.

Prints segments/s (packets/s) and MB/s (the clip's bytes over the pass's time) of each, the
median and best wall time and the median CPU time of the process (s3fs's I/O thread included;
less sensitive than the wall time to other jobs on the machine), the ratios bucket / local, the
requests a bucket pass makes, and the time to read the object whole. The bucket is on
localhost: this measures what reading through fsspec's read-ahead stream costs against FFmpeg's
own file reads, not a network.

    python benchmarks/bucket_decode.py [--minutes 2] [--width 320] [--height 240] [--mbps 2]
        [--repeats 3] [--no-extract]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import av
import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from buckets import s3_serving  # noqa: E402

from headhunt_jax import paths  # noqa: E402
from headhunt_jax.video import URL_BUFFER_SIZE, VideoReader  # noqa: E402

BATCH = 8


def write_clip(path: Path, minutes: float, width: int, height: int, fps: int, mbps: float) -> None:
    """A textured scene panning sideways, fresh noise in every frame, H.264 at ``mbps``."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0 : 2 * width]
    base = np.stack([x * 255 // (2 * width), y * 255 // height, ((x + y) * 3) % 256], axis=-1)
    base = (base + rng.integers(-24, 25, base.shape)).clip(0, 255).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = round(mbps * 1e6)
        stream.options = {"preset": "veryfast", "g": "250"}
        for i in range(round(minutes * 60 * fps)):
            picture = base[:, i % width : i % width + width].copy()
            picture += rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
            frame = av.VideoFrame.from_ndarray(picture.clip(0, 255).astype(np.uint8), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def counted_requests() -> list[str]:
    """The s3fs requests made from now on, by operation (the list fills as they are made)."""
    import s3fs

    made, call = [], s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        made.append(method)
        return await call(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counting
    return made


def demux(source) -> int:
    """Reads every packet of the video stream, decoding nothing (the reads alone, opened as
    ``VideoReader`` opens each source); returns the packet count."""
    file = paths.open_for_reading(source) if paths.is_url(source) else None
    options = {"buffer_size": URL_BUFFER_SIZE} if file is not None else {}
    try:
        with av.open(file or str(source), **options) as container:
            return sum(1 for _ in container.demux(video=0))
    finally:
        if file is not None:
            file.close()


def decode(source, **reader_kw) -> int:
    """One pass over ``source``: its segment count."""
    with VideoReader(source, **reader_kw) as reader:
        return sum(1 for _ in reader)


def extractor(folder: Path):
    """(a pass's function: source -> segments, the forward of a batch) with the demo's tiny
    InternVL3, every head of every layer, batches of ``BATCH`` segments."""
    from headhunt_jax import backbone, tiny_checkpoints
    from headhunt_jax.features import head_features
    from headhunt_jax.prompts import DEFAULT_PROMPTS

    bb = backbone.load_backbone(tiny_checkpoints.write("internvl3", folder, DEFAULT_PROMPTS))
    processor = bb.processor()
    reader_kw = dict(processor.frames)
    ids = np.tile(processor.prompt_ids(DEFAULT_PROMPTS[0], 16)[None], (BATCH, 1))

    def forward(pixels: list[np.ndarray]) -> None:
        batch = np.zeros((BATCH, *pixels[0].shape), bb.dtype)
        batch[: len(pixels)] = pixels
        np.asarray(head_features(bb, ids, **processor.vision_inputs(batch)))

    def run(source) -> int:
        count, pending = 0, []
        with VideoReader(source, **reader_kw) as reader:
            for segment in reader:
                pending.append(segment.pixels)
                count += 1
                if len(pending) == BATCH:
                    forward(pending)
                    pending = []
        if pending:
            forward(pending)
        return count

    return run, forward, reader_kw


def side_by_side(name: str, unit: str, run, sources: dict, repeats: int, mb: float) -> None:
    """Alternates the sources ``repeats`` times; prints each one's median wall time (and the
    best), the process's median CPU time, and the ratios bucket / local."""
    wall = {label: [] for label in sources}
    cpu = {label: [] for label in sources}
    counts = {}
    for _ in range(repeats):
        for label, source in sources.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            counts[label] = run(source)
            wall[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - start_cpu)
    assert len(set(counts.values())) == 1, counts
    median = {label: statistics.median(t) for label, t in wall.items()}
    median_cpu = {label: statistics.median(t) for label, t in cpu.items()}
    for label, seconds in median.items():
        print(
            f"{name:<18}{label:<8}{counts[label] / seconds:>10.2f} {unit:<9}{mb / seconds:>9.2f}"
            f"{seconds:>10.2f}{min(wall[label]):>8.2f}{median_cpu[label]:>8.2f}"
            f"   ({', '.join(f'{t:.2f}' for t in wall[label])})"
        )
    print(
        f"{name:<18}bucket / local: {median['local'] / median['bucket']:.3f} of the throughput "
        f"(median), {min(wall['local']) / min(wall['bucket']):.3f} (best), "
        f"{median_cpu['bucket'] / median_cpu['local']:.3f} x the CPU time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--mbps", type=float, default=2.0, help="the clip's bit rate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-extract", dest="extract", action="store_false")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, s3_serving():
        import s3fs

        local = Path(scratch) / "clip.mp4"
        write_clip(local, args.minutes, args.width, args.height, args.fps, args.mbps)
        fs = s3fs.S3FileSystem()
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        fs.put_file(str(local), f"{bucket}/clip.mp4")
        url = f"s3://{bucket}/clip.mp4"
        megabytes = local.stat().st_size / 1e6
        start = time.perf_counter()
        whole = paths.of(url).read_bytes()
        fetch = time.perf_counter() - start
        assert whole == local.read_bytes()
        with VideoReader(local) as reader:
            print(
                f"clip: {reader.stated_frames} frames {args.width}x{args.height} at "
                f"{reader.fps:g} fps, {reader.expected_segments} segments, {megabytes:.1f} MB; "
                f"the object read whole from the server: {fetch:.3f} s "
                f"({megabytes / fetch:.0f} MB/s); read-ahead {paths.READ_AHEAD >> 20} MiB"
            )
        sources = {"local": local, "bucket": url}
        decode(local)  # warm the page cache and the imports
        requests = counted_requests()
        decode(url)
        print(f"a bucket pass: {len(requests)} requests ({', '.join(sorted(set(requests)))})")
        print(
            f"{'pass':<18}{'source':<8}{'rate':>10} {'':<9}{'MB/s':>9}{'median s':>10}"
            f"{'best s':>8}{'CPU s':>8}   (all, s)"
        )
        side_by_side("demux only", "packets/s", demux, sources, args.repeats, megabytes)
        side_by_side("decode 448 px", "seg/s", decode, sources, args.repeats, megabytes)
        if args.extract:
            run, forward, reader_kw = extractor(Path(scratch) / "tiny")
            with VideoReader(local, **reader_kw) as reader:
                forward([next(iter(reader)).pixels])  # compile
            side_by_side("decode + extract", "seg/s", run, sources, args.repeats, megabytes)


if __name__ == "__main__":
    main()
