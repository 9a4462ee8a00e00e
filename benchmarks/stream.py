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

Backbones: ``demo`` (the demo's tiny InternVL3, 112 px), ``mid`` (``_models.MID``, 224 px), or
a preset's shapes (e.g. ``InternVL3-8B``, for a GPU), random weights and the demo's tokenizer;
expert heads on the last layer, so the whole decoder runs.
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402

from headhunt_jax import backbone, backbones, stream, synthetic  # noqa: E402
from headhunt_jax.backbones.internvl.prompt import IMG_CONTEXT  # noqa: E402
from headhunt_jax.backbones.internvl.tiny import SPECIAL_TOKENS  # noqa: E402
from headhunt_jax.detector import Detector  # noqa: E402
from headhunt_jax.models.tokenizer import tiny_tokenizer  # noqa: E402
from headhunt_jax.prompts import DEFAULT_PROMPTS  # noqa: E402
from headhunt_jax.scorer import fit_scorer  # noqa: E402
from headhunt_jax.video import SEGMENT_LENGTH  # noqa: E402

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
            backbones.demo_backbone("internvl3")(folder, DEFAULT_PROMPTS, seed=0)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="demo,mid")
    ap.add_argument("--segments", type=int, default=6, help="segments a stream, each trial")
    ap.add_argument("--size", default="320x240", help="the streams' frame size")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-streams", type=int, default=64)
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
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
