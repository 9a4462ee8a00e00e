"""Live streams: MPEG-TS fed at real time through a pipe, a growing file and a local TCP server,
scored against ``detection.detect`` on the same bytes; the online smoother against
``locator.smooth``; stalls, disconnections, drops, the command line.

Network inputs (rtsp, http, udp, srt) are not reached from here: the live path is exercised with
FFmpeg's ``tcp://`` client on a local server, which PyAV opens as it opens any URL.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from headhunt_jax import detection, stream, synthetic, tiny_checkpoints
from headhunt_jax.backbone import load_backbone
from headhunt_jax.detector import Detector
from headhunt_jax.locator import kernel_half_width, localize, smooth
from headhunt_jax.scorer import fit_scorer

PROMPT = "Identify any abnormal events or safety hazards in this video."
SCRIPT = Path(sys.executable).with_name("headhunt-jax")
BATCH = 4
SIGMA = 1.0  # a 7-tap kernel: the clips below are longer than it, and short enough to stream


def feed(write, path: Path, fps: float, *, stall=None, until=None) -> float:
    """Writes the file's bytes with ``write`` at real time: each frame's packet at its frame's
    time; ``stall``: (frame, seconds) to pause before that frame; ``until``: stop before that
    frame. Returns the time (monotonic) the first byte went out."""
    data = path.read_bytes()
    with av.open(str(path)) as container:
        starts = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    ends = [*starts[1:], len(data)][:until]
    t0 = time.monotonic()
    done = 0
    for i, end in enumerate(ends):
        if stall and i == stall[0]:
            time.sleep(stall[1])
            t0 += stall[1]
        time.sleep(max(0.0, t0 + i / fps - time.monotonic()))
        write(data[done:end])
        done = end
    return t0


def in_thread(fn, *args, **kw) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, kwargs=kw, daemon=True)
    thread.start()
    return thread


def pipe_feed(path: Path, fps: float, **kw):
    """(the read end of a pipe, the writer thread feeding ``path`` into it at real time)."""
    r, w = os.pipe()

    def write():
        with os.fdopen(w, "wb", buffering=0) as f:
            feed(f.write, path, fps, **kw)

    return os.fdopen(r, "rb", buffering=0), in_thread(write)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(the tiny demo backbone, a detector on two of its heads, clips, their detect results)."""
    root = tmp_path_factory.mktemp("stream")
    bb = load_backbone(tiny_checkpoints.write("internvl3", root / "backbone", [PROMPT]))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2 * bb.head_dim)).astype(np.float32)
    detector = Detector(
        np.array([[1, 0], [3, 2]]),
        fit_scorer(x, (x[:, 0] > 0).astype(int)),
        sigma=SIGMA,
        backbone=bb.name,
        prompt=PROMPT,
        backbone_fingerprint=bb.fingerprint,
        dtype="float32",
    )
    footage = np.concatenate(synthetic.load_footage(96, 72))  # 622 frames
    clips = {  # name: (file, fps)
        "a": (synthetic.write_h264(root / "a.ts", footage[: 8 * 48 + 20], 50, live_gop=25), 50),
        "b": (
            synthetic.write_h264(root / "b.ts", footage[::-1][: 6 * 48], 40, live_gop=25),
            40,
        ),  # ends on a window
        "c": (
            synthetic.write_h264(root / "c.ts", footage[200 : 200 + 4 * 48 + 30], 50, live_gop=25),
            50,
        ),
    }
    work = root / "work"
    results, failures = detection.detect(
        bb, detector, [f for f, _ in clips.values()], work, batch_size=BATCH, progress=False
    )
    assert not failures
    # tau between two smoothed scores near their median, so that every clip has events
    smoothed = np.sort(np.concatenate([r["smoothed_scores"] for r in results]))
    tau = float(smoothed[len(smoothed) // 2 - 1 : len(smoothed) // 2 + 1].mean())
    detector = Detector(**{**detector.__dict__, "tau": tau})
    results, _ = detection.detect(
        bb, detector, [f for f, _ in clips.values()], work, batch_size=BATCH, progress=False
    )
    expected = dict(zip(clips, results, strict=True))
    assert all(r["events"] for r in results)
    return bb, detector, clips, expected, root


def write_fragmented_mp4(path: Path, frames: np.ndarray, fps: int) -> Path:
    """A fragmented MP4 (an empty index, then a fragment a keyframe), as a live writer makes it."""
    with av.open(str(path), "w", options={"movflags": "frag_keyframe+empty_moov"}) as container:
        s = container.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast", "tune": "zerolatency", "g": "25"}
        for f in frames:
            container.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def mp4s(setup):
    """{name: (file, detect's result)}: clip c's frames as an ordinary MP4 (synthetic.write_h264,
    the demo's writer: B-frames, the index at the end) and as a fragmented one."""
    bb, detector, _, _, root = setup
    frames = np.concatenate(synthetic.load_footage(96, 72))[200 : 200 + 4 * 48 + 30]
    files = {
        "plain": synthetic.write_h264(root / "plain.mp4", frames, 50),
        "fragmented": write_fragmented_mp4(root / "fragmented.mp4", frames, 50),
    }
    results, failures = detection.detect(
        bb, detector, list(files.values()), root / "work_mp4", batch_size=BATCH, progress=False
    )
    assert not failures
    by_path = {r["path"]: r for r in results}
    return {k: (f, by_path[str(f)]) for k, f in files.items()}


def by_type(lines, source, kind):
    return [line for line in lines if line["source"] == source and line["type"] == kind]


def assert_detect(lines, source, result, scores_only=False):
    segments = by_type(lines, source, "segment")
    assert [s["index"] for s in segments] == list(range(len(result["segment_scores"])))
    assert [[s["start_frame"], s["end_frame"]] for s in segments] == result["segment_frames"]
    np.testing.assert_allclose([s["score"] for s in segments], result["segment_scores"], atol=1e-5)
    if scores_only:
        return
    np.testing.assert_allclose(
        [s["smoothed"] for s in segments], result["smoothed_scores"], atol=1e-6
    )
    fields = result["events"][0] if result["events"] else {}
    events = [{k: e[k] for k in fields} for e in by_type(lines, source, "event")]
    assert events == result["events"]
    opened = by_type(lines, source, "event_open")
    assert [o["start_segment"] for o in opened] == [e["start_segment"] for e in events]


def test_online_smoothing_is_detects():
    """Full lookahead: ``smooth`` of the whole sequence to the bit and ``localize``'s events,
    for every length, short ones included (smoothed with a shorter kernel, so their lines wait
    for the sequence to be as long as the kernel or to end)."""
    rng = np.random.default_rng(1)
    for sigma in (0.5, 1.5, 3.0):
        for length in [*range(1, 24), 61]:
            scores = rng.random(length).astype(np.float32)
            smoother = stream.OnlineSmoother(sigma)
            due = [d for s in scores for d in smoother.push(float(s))] + smoother.finish()
            assert [d.index for d in due] == list(range(length))
            expected = np.asarray(smooth(scores, sigma))
            np.testing.assert_array_equal([d.smoothed for d in due], expected)
            tau = float(np.median(expected))
            tracker, events = stream.EventTracker(tau, 25.0), []
            for d in due:
                events.append(
                    tracker.update(d.index, d.smoothed, (48 * d.index, 48 * d.index + 48))
                )
            events = [e for _, e in events if e] + [tracker.finish()]
            runs = [(e["start_segment"], e["end_segment"]) for e in events if e]
            assert runs == localize(expected, None, tau)


def test_online_smoothing_waits_only_for_its_lookahead():
    rng = np.random.default_rng(2)
    scores = rng.random(40)
    half = kernel_half_width(1.5, np.inf)
    for lookahead in (0, 2, half):
        smoother = stream.OnlineSmoother(1.5, lookahead)
        for t, s in enumerate(scores):
            for d in smoother.push(float(s)):
                if t >= smoother.full:  # past the start, a line waits exactly its lookahead
                    assert t - d.index == lookahead == d.lookahead
        # a few kernels' widths of scores, whatever the length
        assert len(smoother._scores) < 64 + 2 * smoother.full
    # causal: the Gaussian's taps on the past, renormalised
    smoother = stream.OnlineSmoother(1.5, 0)
    due = [d for s in scores for d in smoother.push(float(s))]
    weights = np.exp(-(np.arange(-half, 1) ** 2) / (2 * 1.5**2))
    t = 20
    expected = (weights * scores[t - half : t + 1]).sum() / weights.sum()
    np.testing.assert_allclose(due[t].smoothed, expected, rtol=1e-6)


def test_a_dropped_segment_is_left_out_of_its_neighbours_smoothing():
    scores = np.linspace(0.2, 0.8, 15)
    smoother = stream.OnlineSmoother(1.0)
    due = []
    for t, s in enumerate(scores):
        due += smoother.push(None if t == 7 else float(s))
    due += smoother.finish()
    assert [d.index for d in due] == [t for t in range(15) if t != 7]
    weights = np.exp(-(np.arange(-3, 4) ** 2) / 2.0)
    kept = np.arange(-3, 4) != -1  # segment 8's tap on segment 7
    expected = (weights * scores[5:12])[kept].sum() / weights[kept].sum()
    np.testing.assert_allclose(due[7].smoothed, expected, rtol=1e-6)  # due[7] is segment 8


def test_a_pipe_and_a_growing_file_at_once_equal_detect(setup, tmp_path):
    """An MPEG-TS stream through a pipe (50 fps) and a file appended to (40 fps, ending on a
    window), both at real time, at once: detect's segments, scores, smoothed scores and events,
    each line while the stream still runs."""
    bb, detector, clips, expected, _ = setup
    (a, fps_a), (b, fps_b) = clips["a"], clips["b"]
    growing = tmp_path / "growing.ts"
    growing.touch()

    def append():
        with open(growing, "ab", buffering=0) as f:
            feed(f.write, b, fps_b)

    reader, writer = pipe_feed(a, fps_a)
    appender = in_thread(append)
    lines = []
    summary = stream.watch_streams(
        stream.SegmentScorer(bb, detector, BATCH),
        [stream.pipe(reader, "pipe"), stream.followed_file(growing, idle_s=1.0)],
        lines.append,
    )
    writer.join(), appender.join()
    assert_detect(lines, "pipe", expected["a"])
    assert_detect(lines, str(growing), expected["b"])
    assert summary["pipe"] == {
        "segments": 8, "dropped": 0, "events": len(expected["a"]["events"]), "unscored": 0,
        "reopened": 0, "error": None,
    }  # fmt: skip
    # Live: segment 2's line (it waits for 3 more segments) long before the pipe's last frame.
    first = by_type(lines, "pipe", "segment")[2]["time"]
    assert by_type(lines, "pipe", "end")[0]["time"] - first > 2 * 48 / fps_a
    head = by_type(lines, "pipe", "segment")[0]
    assert head["lookahead_s"] == round(3 * 48 / fps_a, 3) and head["end_s"] == 0.96


def test_a_whole_file_at_once_loses_nothing_with_room_to_wait(setup):
    """A source faster than real time (a finished clip piped in at once): with room for all its
    segments nothing is dropped, and the scores are detect's."""
    bb, detector, clips, expected, _ = setup
    r, w = os.pipe()

    def write():
        with os.fdopen(w, "wb") as f:
            f.write(clips["c"][0].read_bytes())

    writer = in_thread(write)
    lines = []
    summary = stream.watch_streams(
        stream.SegmentScorer(bb, detector, BATCH),
        [stream.pipe(os.fdopen(r, "rb", buffering=0))],
        lines.append,
        max_pending=16,
    )
    writer.join()
    assert summary["-"]["dropped"] == 0
    assert_detect(lines, "-", expected["c"])


def test_a_stall_and_a_disconnection(setup, caplog):
    """A pipe that stalls for 2.5 s carries on where it was (detect's scores, smoothed scores and
    events) while the other source goes on; a TCP source that drops mid-stream is reopened with
    backoff (logged), its clock carries on, and it gives up once its server is gone."""
    bb, detector, clips, expected, _ = setup
    (a, fps_a), (c, fps_c) = clips["a"], clips["c"]
    server = socket.create_server(("127.0.0.1", 0))
    url = f"tcp://127.0.0.1:{server.getsockname()[1]}"

    def serve():
        for until in (3 * 48 + 10, None):  # the first connection drops inside segment 3
            conn, _ = server.accept()
            with conn:
                feed(conn.sendall, c, fps_c, until=until)
        server.close()

    server_thread = in_thread(serve)
    reader, writer = pipe_feed(a, fps_a, stall=(3 * 48 + 5, 2.5))
    lines = []
    caplog.set_level(logging.WARNING, logger="headhunt_jax.stream")
    summary = stream.watch_streams(
        stream.SegmentScorer(bb, detector, BATCH),
        [stream.pipe(reader, "stalls"), stream.live_input(url, timeout_s=5.0)],
        lines.append,
        lookahead=0,
        reconnect=stream.Reconnect(first_s=0.2, retries=1),
    )
    writer.join(), server_thread.join()
    assert_detect(lines, "stalls", expected["a"], scores_only=True)
    assert summary["stalls"]["reopened"] == 0 and summary["stalls"]["error"] is None
    live = by_type(lines, url, "segment")
    first, second = live[:3], live[3:]  # 3 whole segments before the drop, then the clip again
    assert [s["index"] for s in live] == list(range(3 + 4))
    c_result = expected["c"]
    np.testing.assert_allclose(
        [s["score"] for s in first], c_result["segment_scores"][:3], atol=1e-5
    )
    np.testing.assert_allclose([s["score"] for s in second], c_result["segment_scores"], atol=1e-5)
    assert second[0]["start_frame"] == 3 * 48  # the stream's clock carries on
    assert summary[url]["reopened"] == 1  # after the drop (after the clip's end, refused)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("reopening in 0.2 s" in m for m in messages) == 2
    assert any("giving up" in m for m in messages)
    # no event spans the reconnection: the first connection's end closed its event
    for e in by_type(lines, url, "event"):
        assert e["end_segment"] <= 3 or e["start_segment"] >= 3
    assert len(by_type(lines, url, "event")) == len(by_type(lines, url, "event_open"))
    # the TCP source's lines went on while the pipe stalled (between its segments 2 and 3)
    before, after = (s["time"] for s in by_type(lines, "stalls", "segment")[2:4])
    assert any(before + 0.2 < s["time"] < after - 1.0 for s in live)


def test_file_layout_tells_what_can_be_followed(setup, mp4s, tmp_path):
    """What a file's bytes so far say: MPEG-TS, Matroska and fragmented MP4 can be read while
    written; an ordinary MP4 only once its index (at its end) is written."""
    clips = setup[2]
    plain, fragmented = mp4s["plain"][0].read_bytes(), mp4s["fragmented"][0].read_bytes()
    mkv = tmp_path / "x.mkv"
    with av.open(str(clips["c"][0])) as src, av.open(str(mkv), "w") as dst:  # remuxed
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    cases = [
        (b"", stream.UNKNOWN),
        (plain[:40], stream.UNKNOWN),  # ftyp, free: the mdat's header not yet written
        (plain[:2000], stream.UNSTREAMABLE),  # samples, the index to come
        (plain[:-10], stream.UNSTREAMABLE),  # the index being written
        (plain, stream.COMPLETE),
        (fragmented[:100], stream.UNKNOWN),  # the index's header only
        (fragmented[:2000], stream.STREAMS),
        (fragmented, stream.STREAMS),
        (clips["c"][0].read_bytes()[:1000], stream.STREAMS),
        (mkv.read_bytes()[:1000], stream.STREAMS),
        (b"RIFF\x00\x10\x00\x00AVI LIST", stream.UNSTREAMABLE),
    ]
    for i, (data, layout) in enumerate(cases):
        (tmp_path / f"{i}.bin").write_bytes(data)
        assert stream.file_layout(tmp_path / f"{i}.bin") == layout, i


def test_a_finished_mp4_is_read_as_detect_reads_it(setup, mp4s, tmp_path):
    """An ordinary MP4 (its index at its end), just written or old: detect's segments, scores,
    smoothed scores and events, at once (no wait for it to stop growing); an old MP4 that was
    never finished (no index): one line that says so."""
    bb, detector, *_ = setup
    plain, result = mp4s["plain"]
    old = tmp_path / "old.mp4"
    old.write_bytes(plain.read_bytes())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(plain.read_bytes()[:-500])
    for path in (old, cut):
        os.utime(path, (time.time() - 60, time.time() - 60))
    fresh = tmp_path / "fresh.mp4"
    fresh.write_bytes(plain.read_bytes())
    lines = []
    started = time.monotonic()
    summary = stream.watch_streams(
        stream.SegmentScorer(bb, detector, BATCH),
        [stream.followed_file(p, idle_s=30.0) for p in (fresh, old, cut)],
        lines.append,
    )
    assert time.monotonic() - started < 30.0
    for path in (fresh, old):
        assert_detect(lines, str(path), result)
        assert summary[str(path)]["error"] is None
    assert "moov atom" in summary[str(cut)]["error"]
    assert summary[str(cut)]["segments"] == 0


def test_a_growing_mp4_is_followed_if_fragmented_else_read_once_finished(
    setup, mp4s, tmp_path, caplog
):
    """While written: a fragmented MP4 (at real time) is followed, its lines (causal smoothing)
    before its end; an ordinary one, appended to, is waited for (a warning) and read once its
    index is written. Both give detect's segments and scores."""
    bb, detector, *_ = setup
    (plain, plain_result), (fragmented, fragmented_result) = mp4s["plain"], mp4s["fragmented"]
    growing = {name: tmp_path / f"growing_{name}.mp4" for name in ("plain", "fragmented")}
    finished = {}
    for path in growing.values():
        path.touch()

    def append_plain():
        data = plain.read_bytes()
        with open(growing["plain"], "ab", buffering=0) as f:
            for i in range(0, len(data), len(data) // 5 + 1):
                f.write(data[i : i + len(data) // 5 + 1])
                time.sleep(0.3)
        finished["plain"] = time.time()

    def append_fragmented():
        with open(growing["fragmented"], "ab", buffering=0) as f:
            feed(f.write, fragmented, 50)
        finished["fragmented"] = time.time()

    writers = [in_thread(append_plain), in_thread(append_fragmented)]
    caplog.set_level(logging.WARNING, logger="headhunt_jax.stream")
    lines = []
    summary = stream.watch_streams(
        stream.SegmentScorer(bb, detector, BATCH),
        [stream.followed_file(p, idle_s=1.0) for p in growing.values()],
        lines.append,
        lookahead=0,
    )
    for writer in writers:
        writer.join()
    assert_detect(lines, str(growing["plain"]), plain_result, scores_only=True)
    assert_detect(lines, str(growing["fragmented"]), fragmented_result, scores_only=True)
    assert all(s["error"] is None for s in summary.values())
    assert min(s["time"] for s in by_type(lines, str(growing["plain"]), "segment")) >= (
        finished["plain"] - 0.3
    )
    assert by_type(lines, str(growing["fragmented"]), "segment")[0]["time"] < finished["fragmented"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "growing_plain.mp4" in warning and "until it is finished" in warning


class SlowScorer(stream.SegmentScorer):
    """The scorer, ``delay_s`` slower a batch."""

    delay_s = 0.0

    def __call__(self, segments):
        time.sleep(self.delay_s)
        return super().__call__(segments)


def test_a_slow_scorer_drops_the_oldest_segments(setup):
    bb, detector, clips, expected, _ = setup
    a, fps = clips["a"]
    scorer = SlowScorer(bb, detector, BATCH)
    scorer.delay_s = 2.5  # 2.6 segments arrive during a batch, one may wait
    reader, writer = pipe_feed(a, fps)
    lines = []
    summary = stream.watch_streams(scorer, [stream.pipe(reader)], lines.append, max_pending=1)
    writer.join()
    scored = by_type(lines, "-", "segment")
    dropped = by_type(lines, "-", "dropped")
    assert dropped and summary["-"]["dropped"] == dropped[-1]["total"] > 0
    indices = [i for d in dropped for i in d["segments"]]
    assert sorted(indices + [s["index"] for s in scored]) == list(range(8))
    assert sum(d["count"] for d in dropped) == len(indices)
    assert scored[-1]["index"] == 7 and max(indices) < 7  # the oldest go, the newest stays
    for s in scored:
        assert s["score"] == pytest.approx(expected["a"]["segment_scores"][s["index"]], abs=1e-5)


def test_sources_from_the_command_line(tmp_path):
    assert stream.parse_source("-", stdin=sys.stdin).name == "-"
    live = stream.parse_source("rtsp://camera/1", options={"rtsp_transport": "tcp"})
    assert live.live and live.name == "rtsp://camera/1"
    (tmp_path / "x.ts").write_bytes(b"")
    assert not stream.parse_source(str(tmp_path / "x.ts")).live
    assert stream.parse_source(f"file://{tmp_path}/x.ts").name == str(tmp_path / "x.ts")
    with pytest.raises(ValueError, match="no such file, and not a URL"):
        stream.parse_source(str(tmp_path / "missing.ts"))
    with pytest.raises(ValueError, match="given twice"):
        source = stream.parse_source(str(tmp_path / "x.ts"))
        stream.watch_streams(None, [source, source], print)


def _watch_registered() -> bool:
    from headhunt_jax import cli

    parser = cli.build_parser()
    return "watch" in parser._subparsers._group_actions[0].choices


needs_cli = pytest.mark.skipif(
    not _watch_registered(), reason="cli.build_parser does not register watch yet"
)


@needs_cli
def test_watch_command_on_standard_input_and_ctrl_c(setup, tmp_path):
    """``headhunt-jax watch ... -``: JSON lines on stdout as the stream is piped in at real
    time; Ctrl-C (the pipe still open) smooths what was scored, closes the open event, prints
    the end line and exits 130."""
    bb, detector, clips, expected, root = setup
    detector.save(tmp_path / "detector")
    a, fps = clips["a"]
    args = ["--detector", tmp_path / "detector", "--model", root / "backbone", "--quiet"]
    run = subprocess.Popen(
        [SCRIPT, "watch", *map(str, args), "--batch-size", str(BATCH), "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(120, run.kill)
    watchdog.start()
    in_thread(feed, lambda b: (run.stdin.write(b), run.stdin.flush()), a, fps, until=7 * 48 + 5)
    lines = []
    for raw in run.stdout:  # segments 0-3 are due once segment 6 is complete
        lines.append(json.loads(raw))
        if len(by_type(lines, "-", "segment")) == 4:
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    watchdog.cancel()
    lines += [json.loads(raw) for raw in out.splitlines()]
    assert run.returncode == 130, err.decode()
    assert "interrupted" in err.decode()
    segments = by_type(lines, "-", "segment")
    assert [s["index"] for s in segments] == list(range(7))
    np.testing.assert_allclose(
        [s["score"] for s in segments], expected["a"]["segment_scores"][:7], atol=1e-5
    )
    assert len(by_type(lines, "-", "event")) == len(by_type(lines, "-", "event_open"))
    (end,) = by_type(lines, "-", "end")
    assert end["segments"] == 7 and end["error"] is None


@needs_cli
def test_watch_command_errors_are_one_line(setup, tmp_path):
    bb, detector, clips, expected, root = setup
    detector.save(tmp_path / "detector")
    run = subprocess.run(
        [SCRIPT, "watch", "--detector", tmp_path / "detector", "--model", root / "backbone",
         tmp_path / "missing.ts"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "missing.ts: no such file, and not a URL" in run.stderr


@needs_cli
def test_watch_command_on_a_finished_mp4(setup, mp4s, tmp_path):
    """The issue's case: ``watch`` on a finished MP4 (the demo's writer) scores it; one that was
    never finished fails on one line."""
    bb, detector, clips, expected, root = setup
    detector.save(tmp_path / "detector")
    plain, result = mp4s["plain"]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(plain.read_bytes()[:-500])
    os.utime(cut, (time.time() - 60, time.time() - 60))
    run = subprocess.run(
        [SCRIPT, "watch", "--detector", tmp_path / "detector", "--model", root / "backbone",
         "--quiet", "--batch-size", str(BATCH), plain, cut],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [json.loads(raw) for raw in run.stdout.splitlines()]
    assert_detect(lines, str(plain), result)
    assert by_type(lines, str(plain), "end")[0]["error"] is None
    assert run.returncode == 1 and "Traceback" not in run.stderr
    (error,) = run.stderr.splitlines()
    assert (
        error.startswith(f"headhunt-jax watch: {cut}: not a readable video file")
        and "moov" in error
    )
