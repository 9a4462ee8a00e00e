"""Live streams on one machine: how many simultaneous 25 fps streams ``stream.watch_streams`` keeps
in real time, and the delay from a segment's last frame to its line.

Each stream is an H.264 MPEG-TS clip (real footage, 320 x 240 by default, no B-frames, as a live
encoder sends it) written into its own pipe at real time by a thread, each frame's packet at its
frame's time, from a random moment of a segment's length (cameras are not in step); all streams
share one backbone and its fixed batch (min(streams, --max-batch)).
A trial runs N streams for ``--segments`` segments each with ``--lookahead 0`` (the line follows
the score at once) and counts N kept when no segment was dropped and the 99th percentile of the
delay is under one segment (48 frames, 1.92 s at 25 fps); N doubles until a trial fails, then
bisects. The delay of a segment is the time from the write of its last frame to its line: one
more frame (a segment is complete when the next frame arrives), demuxing, decoding and
preprocessing, the wait for the scorer, the batch.

Also printed: the scorer's own capacity (segments/s of a full batch, timed alone) in streams,
and the ratio of the streams kept to it (what decoding, preprocessing and the batching take).

    python benchmarks/stream.py [--backbones demo,mid] [--segments 6] [--size 320x240]

``--soak MINUTES``: instead, a soak test of one ``watch_streams`` run against one detector (the
first of ``--backbones``) for that long, with three live sources produced at real time by a writer
process (``--feed``), each frame encoded (H.264, no B-frames) and written at its frame's time:
an MPEG-TS file appended to (25 fps), MPEG-TS on a pipe (25 fps) and a Matroska file written
progressively (15 fps), 160 x 120 by default, so that two cores score them with room to spare and
a dropped segment means the scorer fell behind. Every ``--interval`` seconds (60) it records this
process's resident memory (psutil, else /proc/self/status), the live Python objects and the
segments scored and dropped; it prints a table of them and a summary: the memory growth after the
first ``--warmup`` minutes (3) in MB/hour (a least-squares line), the drops, the segments.

    python benchmarks/stream.py --soak 30 [--backbones demo] [--size 160x120]

Backbones: ``demo`` (the demo's tiny InternVL3, 112 px), ``mid`` (``_models.MID``, 224 px), or
a preset's shapes (e.g. ``InternVL3-8B``, for a GPU), random weights and the demo's tokenizer;
expert heads on the last layer, so the whole decoder runs.
"""

import argparse
import dataclasses
import datetime
import gc
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402

from headhunt_jax import backbone, stream, synthetic, tiny_checkpoints  # noqa: E402
from headhunt_jax.backbones.internvl.prompt import IMG_CONTEXT  # noqa: E402
from headhunt_jax.backbones.internvl.tiny import SPECIAL_TOKENS  # noqa: E402
from headhunt_jax.detector import Detector  # noqa: E402
from headhunt_jax.models.tokenizer import tiny_tokenizer  # noqa: E402
from headhunt_jax.prompts import DEFAULT_PROMPTS  # noqa: E402
from headhunt_jax.scorer import fit_scorer  # noqa: E402
from headhunt_jax.video import SEGMENT_LENGTH, VideoReader  # noqa: E402

FPS = 25


def log(*a):
    print(*a, flush=True)


def write_ts(path: Path, frames: np.ndarray) -> tuple[bytes, list[int]]:
    """The clip as MPEG-TS bytes and each frame's packet's end offset."""
    data = synthetic.write_h264(path, frames, FPS, crf=23, live_gop=50).read_bytes()
    with av.open(str(path)) as container:
        starts = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    return data, [*starts[1:], len(data)]


def make_backbone(name: str, folder: Path) -> backbone.Backbone:
    if name == "demo":
        return backbone.load_backbone(
            tiny_checkpoints.write("internvl3", folder, DEFAULT_PROMPTS, seed=0)
        )
    cfg = _models.MID if name == "mid" else backbone.preset(name)
    corpus = ["system user assistant Frame1: Frame16:", *DEFAULT_PROMPTS]
    tok = tiny_tokenizer(corpus, SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = dataclasses.replace(cfg, image_token_id=tok.token_to_id(IMG_CONTEXT))
    dtype = "float32" if name == "mid" else "bfloat16"
    model = backbone.make_model(cfg, dtype=dtype)
    return backbone.Backbone(model, backbone.random_params(model, 0), name, folder)


def make_detector(bb: backbone.Backbone) -> Detector:
    rng = np.random.default_rng(0)
    heads = np.array([[bb.num_layers - 1, 0], [bb.num_layers - 1, 1]])
    x = rng.standard_normal((64, 2 * bb.head_dim)).astype(np.float32)
    return Detector(
        heads,
        fit_scorer(x, (x[:, 0] > 0).astype(int)),
        backbone=bb.name,
        prompt=DEFAULT_PROMPTS[0],
        backbone_fingerprint=bb.fingerprint,
        dtype=np.dtype(bb.dtype).name,
    )


def feed(fd: int, data: bytes, ends: list[int], written: list[float], start: float) -> None:
    """Writes frame i's bytes at ``start + i / FPS`` (or as soon as the pipe takes them),
    recording when each went out."""
    with os.fdopen(fd, "wb", buffering=0) as f:
        done = 0
        for i, end in enumerate(ends):
            time.sleep(max(0.0, start + i / FPS - time.monotonic()))
            f.write(data[done:end])
            written.append(time.monotonic())
            done = end


def trial(scorer, data, ends, streams: int) -> dict:
    """N streams at once, each started at a random moment of a segment's length (cameras are
    not in step) -> dropped segments, delays (s) of the scored ones."""
    pipes = [os.pipe() for _ in range(streams)]
    written = [[] for _ in range(streams)]
    lines = []

    def emit(line):
        if line["type"] in ("segment", "dropped"):
            lines.append((line, time.monotonic()))

    phases = np.random.default_rng(streams).uniform(0, SEGMENT_LENGTH / FPS, streams)
    start = time.monotonic() + 0.5
    feeders = [
        threading.Thread(
            target=feed, args=(w, data, ends, written[i], start + phases[i]), daemon=True
        )
        for i, (_, w) in enumerate(pipes)
    ]
    for t in feeders:
        t.start()
    sources = [
        stream.pipe(os.fdopen(r, "rb", buffering=0), f"s{i}") for i, (r, _) in enumerate(pipes)
    ]
    stream.watch_streams(scorer, sources, emit, lookahead=0)
    for t in feeders:
        t.join()
    delays, dropped = [], 0
    for line, at in lines:
        if line["type"] == "dropped":
            dropped += line["count"]
        else:
            last = written[int(line["source"][1:])][line["end_frame"] - 1]
            delays.append(at - last)
    return {"streams": streams, "dropped": dropped, "delays": np.asarray(delays)}


def kept(result, segments: int) -> bool:
    delays = result["delays"]
    return (
        result["dropped"] == 0
        and len(delays) == result["streams"] * segments
        and np.percentile(delays, 99) < SEGMENT_LENGTH / FPS
    )


def describe(r) -> str:
    d = r["delays"]
    p50, p99 = (np.percentile(d, q) if len(d) else float("nan") for q in (50, 99))
    return (
        f"{r['streams']:3d} streams: {len(d)} scored, {r['dropped']} dropped, "
        f"delay p50 {p50:.2f} s, p99 {p99:.2f} s"
    )


def capacity(scorer) -> float:
    """Segments a second of full batches, the scorer alone."""
    s = scorer.image_size
    seg = stream.Segment(0, 0, 48, np.arange(16), np.zeros((16, 3, s, s), np.float32))
    batch = [(seg, float(FPS))] * scorer.batch_size
    scorer(batch)
    start, runs = time.perf_counter(), 3
    for _ in range(runs):
        scorer(batch)
    return runs * scorer.batch_size / (time.perf_counter() - start)


def run_backbone(name, args, folder, data, ends) -> None:
    bb = make_backbone(name, folder / name)
    detector = make_detector(bb)
    log(f"== {name}: {bb.num_layers} layers, {bb.processor().frames['image_size']} px frames")
    scorers = {}

    def scorer_for(streams):
        size = min(streams, args.max_batch)
        if size not in scorers:
            scorers[size] = stream.SegmentScorer(bb, detector, size)
            scorers[size].compile()
        return scorers[size]

    results = {}

    def run(n):
        results[n] = trial(scorer_for(n), data, ends, n)
        log(describe(results[n]) + ("" if kept(results[n], args.segments) else "  (not kept)"))
        return kept(results[n], args.segments)

    good, bad, n = 0, None, 1
    while n <= args.max_streams:
        if not run(n):
            bad = n
            break
        good, n = n, n * 2
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if run(mid) else (good, mid)
    full = scorer_for(args.max_batch)
    per_s = capacity(full)
    ideal = per_s * SEGMENT_LENGTH / FPS
    log(
        f"{name}: {good} simultaneous {FPS} fps streams kept in real time"
        + (f" ({describe(results[good]).split(': ', 1)[1]})" if good else "")
    )
    log(
        f"{name}: scorer alone {per_s:.1f} segments/s (batch {full.batch_size}) = {ideal:.1f} "
        f"streams; kept / scorer-alone: {good / ideal:.2f}"
    )


# --- soak: three live sources for a long time ----------------------------------------------------

SOAK_SOURCES = [
    ("mpegts", "followed.ts", 25),
    ("mpegts", "-", 25),
    ("matroska", "followed.mkv", 15),
]


def rss_mb() -> float:
    """This process's resident memory, MB."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024


def feed_main(args) -> None:
    """The writer process: each ``FORMAT:PATH:FPS`` of ``--feed`` (PATH ``-``: standard output)
    encoded live from the footage, looped, each frame written at its frame's time, until killed."""
    width, height = map(int, args.size.split("x"))
    footage = np.concatenate(synthetic.load_footage(width, height))
    footage = np.concatenate([footage, footage[::-1]])  # a loop without a cut
    start = time.monotonic() + 0.2

    def write(spec):
        fmt, path, fps = spec.split(":")
        fps = int(fps)
        target = "pipe:1" if path == "-" else path
        with av.open(target, "w", format=fmt, options={"flush_packets": "1"}) as container:
            s = container.add_stream("libx264", rate=fps)
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            s.options = {
                "crf": "23",
                "preset": "veryfast",
                "tune": "zerolatency",
                "g": str(2 * fps),
            }
            i = 0
            while True:
                time.sleep(max(0.0, start + i / fps - time.monotonic()))
                frame = av.VideoFrame.from_ndarray(footage[i % len(footage)], format="rgb24")
                container.mux(s.encode(frame))
                i += 1

    threads = [threading.Thread(target=write, args=(spec,), daemon=True) for spec in args.feed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def fit_growth(minutes, rss) -> float:
    """MB/hour of a least-squares line through (minute, MB); nan with fewer than 2 points."""
    if len(minutes) < 2:
        return float("nan")
    return float(np.polyfit(minutes, rss, 1)[0] * 60)


def calibrated(bb, detector, footage, folder: Path) -> Detector:
    """The detector with tau at the median score of the footage's segments, so that the soak's
    sources open and close events."""
    clip = synthetic.write_h264(folder / "calibration.ts", footage[: 12 * SEGMENT_LENGTH], FPS)
    scorer = stream.SegmentScorer(bb, detector, 4)
    segments = [(seg, float(FPS)) for seg in VideoReader(clip, **scorer.reader_kw)]
    scores = np.concatenate([scorer(segments[i : i + 4]) for i in range(0, len(segments), 4)])
    return Detector(**{**detector.__dict__, "tau": float(np.median(scores))})


def soak(args) -> None:
    width, height = map(int, (args.size or "160x120").split("x"))
    name = args.backbones.split(",")[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bb = make_backbone(name, folder / name)
        footage = np.concatenate(synthetic.load_footage(width, height))
        detector = calibrated(bb, make_detector(bb), footage, folder)
        scorer = stream.SegmentScorer(bb, detector, min(len(SOAK_SOURCES), args.max_batch))
        scorer.compile()
        specs = []
        for fmt, path, fps in SOAK_SOURCES:
            if path != "-":
                path = str(folder / path)
                Path(path).touch()
            specs.append(f"{fmt}:{path}:{fps}")
        writer = subprocess.Popen(
            [sys.executable, __file__, "--size", f"{width}x{height}", "--feed", *specs],
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        sources = [
            stream.pipe(writer.stdout, "pipe.ts") if s.split(":")[1] == "-"
            else stream.followed_file(s.split(":")[1], idle_s=10.0)
            for s in specs
        ]  # fmt: skip
        names = [Path(s.name).name for s in sources]
        counts = {"segment": [0] * len(sources), "dropped": [0] * len(sources), "event": 0}
        index = {s.name: i for i, s in enumerate(sources)}

        def emit(line):
            if line["type"] == "segment":
                counts["segment"][index[line["source"]]] += 1
            elif line["type"] == "dropped":
                counts["dropped"][index[line["source"]]] += line["count"]
            elif line["type"] == "event":
                counts["event"] += 1

        log(
            f"soak: {args.soak:g} min, {name} backbone (batch {scorer.batch_size}, tau "
            f"{detector.tau:.4f}: the footage's median score), sources: "
            + ", ".join(
                f"{n} ({fmt}, {fps} fps)"
                for n, (fmt, _, fps) in zip(names, SOAK_SOURCES, strict=True)
            )
            + f", {width} x {height}; {os.cpu_count()} CPUs; {platform.platform()}; "
            + datetime.datetime.now().isoformat(timespec="seconds")
        )
        stop = threading.Event()
        samples, rows = [], []  # (minute, RSS MB) every --sample s; a row every --interval s
        taken = [0]  # samples in the rows so far

        def row(minute):
            gc.collect()
            mbs = [mb for _, mb in samples[taken[0] :]]
            taken[0] = len(samples)
            seg, drop = sum(counts["segment"]), sum(counts["dropped"])
            rows.append((minute, min(mbs), max(mbs), len(gc.get_objects()), seg, drop))
            prev = rows[-2] if len(rows) > 1 else rows[-1]
            log(
                f"{minute:6.1f} {min(mbs):8.1f} {max(mbs):8.1f} {rows[-1][3]:9d} "
                f"{seg - prev[4]:8d} {drop - prev[5]:8d} {seg:9d} {drop:8d} {counts['event']:7d}"
            )

        def monitor():
            log(
                f"{'minute':>6} {'RSS min':>8} {'RSS max':>8} {'objects':>9} {'segments':>8} "
                f"{'dropped':>8} {'seg.total':>9} {'dr.total':>8} {'events':>7}   "
                f"(RSS MB over the minute's samples; segments, dropped: in the minute)"
            )
            t0, k, n = time.monotonic(), 0, 0
            while True:
                now = (time.monotonic() - t0) / 60
                samples.append((now, rss_mb()))
                if n * args.sample >= k * args.interval:
                    row(k * args.interval / 60)
                    if k * args.interval >= args.soak * 60:
                        break
                    k += 1
                n += 1
                if stop.wait(max(0.0, t0 + n * args.sample - time.monotonic())):
                    break
            stop.set()

        monitor_thread = threading.Thread(target=monitor, daemon=True)
        monitor_thread.start()
        try:
            summary = stream.watch_streams(scorer, sources, emit, lookahead=0, stop=stop)
        finally:
            stop.set()
            writer.kill()
            writer.wait()
        monitor_thread.join()
    minutes, rss = np.array(samples).T
    after = minutes >= args.warmup
    floors = np.array([(r[0], r[1]) for r in rows if r[0] >= args.warmup]).reshape(-1, 2).T
    half = minutes >= minutes[-1] / 2
    seconds = args.soak * 60
    log(
        f"summary: RSS {rss[0]:.1f} MB at start, {rss[after][0] if after.any() else np.nan:.1f} "
        f"MB at minute {args.warmup:g}, {rss[-1]:.1f} MB at the end (max {rss.max():.1f}); "
        f"growth after minute {args.warmup:g}: {fit_growth(minutes[after], rss[after]):+.2f} "
        f"MB/hour (all {after.sum()} samples), {fit_growth(*floors):+.2f} MB/hour (the "
        f"minutes' minima); second half {fit_growth(*np.array(samples)[half].T):+.2f} MB/hour; "
        f"whole run {fit_growth(minutes, rss):+.2f} MB/hour"
    )
    for n, (_, _, fps), c in zip(names, SOAK_SOURCES, summary.values(), strict=True):
        log(
            f"summary: {n}: {c['segments']} segments scored (about {seconds * fps / 48:.0f} "
            f"at real time), {c['dropped']} dropped, {c['unscored']} unscored, {c['events']} "
            f"events, reopened {c['reopened']}, error {c['error']}"
        )
    total = {k: sum(c[k] for c in summary.values()) for k in ("segments", "dropped")}
    log(f"summary: {total['segments']} segments scored, {total['dropped']} dropped")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="demo,mid")
    ap.add_argument("--segments", type=int, default=6, help="segments a stream, each trial")
    ap.add_argument("--size", help="the streams' frame size (default 320x240, soak 160x120)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-streams", type=int, default=64)
    ap.add_argument("--soak", type=float, metavar="MINUTES", help="a soak test instead (above)")
    ap.add_argument("--interval", type=float, default=60.0, help="soak: seconds a table row")
    ap.add_argument("--sample", type=float, default=5.0, help="soak: seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=3.0, help="soak: minutes left out of the fit")
    ap.add_argument("--feed", nargs="+", help=argparse.SUPPRESS)  # the soak's writer process
    args = ap.parse_args()
    if args.feed:
        return feed_main(args)
    if args.soak:
        return soak(args)
    width, height = map(int, (args.size or "320x240").split("x"))
    footage = np.concatenate(synthetic.load_footage(width, height))
    frames = footage[: args.segments * SEGMENT_LENGTH + 1]  # the next frame completes the last
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, ends = write_ts(folder / "clip.ts", frames)
        log(
            f"{os.cpu_count()} CPUs; streams of {width} x {height} at {FPS} fps, "
            f"{args.segments} segments ({len(frames) / FPS:.1f} s) each"
        )
        for name in args.backbones.split(","):
            run_backbone(name, args, folder, data, ends)


if __name__ == "__main__":
    main()
