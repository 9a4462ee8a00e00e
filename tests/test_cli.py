"""The console script end to end on a tiny checkpoint and small real clips, and its bad inputs."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headhunt_jax import synthetic
from headhunt_jax.detector import Detector

hf = pytest.importorskip("hf_reference")

SCRIPT = str(Path(sys.executable).with_name("headhunt-jax"))
PROMPTS = [
    "Identify any abnormal events or safety hazards in this video.",
    "Analyze the video for anomalies.",
]


def cli(*args, check=True, env=None):
    env = None if env is None else {**os.environ, **env}
    run = subprocess.run(
        [SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )
    if check and run.returncode:
        raise AssertionError(f"headhunt-jax {' '.join(map(str, args))} failed:\n{run.stderr}")
    return run


def assert_one_line_error(run, *words):
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, run.stderr
    for w in words:
        assert w in errors[0], run.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = hf.save_tiny_internvl(root / "model")
    clips = root / "clips"
    synthetic.make_videos(clips, num_normal=4, num_anomalous=4, segments=3, size=(64, 48), seed=1)
    return root, model, clips


@pytest.fixture(scope="module")
def detector(work):
    root, model, clips = work
    stores = [root / "store0", root / "store1"]
    run = cli(
        "extract",
        "--model",
        model,
        "--videos",
        clips,
        "--prompt",
        PROMPTS[0],
        "--out",
        stores[0],
        "--prompt",
        PROMPTS[1],
        "--out",
        stores[1],
        "--quiet",
    )
    assert "8 videos written" in run.stdout
    annotations = clips / "annotations.txt"
    cli("hunt", *stores, "--k", 3, "--annotations", annotations, "--out", root / "heads.json")
    cli(
        "fit",
        "--store",
        stores[0],
        "--heads",
        root / "heads.json",
        "--annotations",
        annotations,
        "--out",
        root / "detector",
    )
    return root / "detector"


def test_extract_hunt_fit_detect(work, detector):
    root, model, clips = work
    heads = json.loads((root / "heads.json").read_text())
    assert np.asarray(heads["heads"]).shape == (3, 2) and (root / "heads.png").stat().st_size > 0
    for figure in ("saliency_criteria", "head_importance", "tsne"):  # the original's figures
        assert (root / f"heads_{figure}.png").stat().st_size > 0
    videos = sorted(clips.glob("*.mp4"))[:3]
    out = root / "detections.json"
    cli(
        "detect",
        "--detector",
        detector,
        "--model",
        model,
        *videos,
        "--out",
        out,
        "--plot",
        root / "plots",
        "--quiet",
    )
    results = json.loads(out.read_text())
    assert [r["video"] for r in results["videos"]] == [v.name for v in videos]
    for r in results["videos"]:
        assert len(r["segment_scores"]) == 3 and 0 <= r["video_score"] <= 1
        assert r["fps"] == 25 and r["fps_source"] == "stream"
        assert (root / "plots" / f"{r['video']}.png").exists()
    assert results["failures"] == []
    assert results["summary"] == {
        "videos": 3,
        "anomalous": sum(r["is_anomaly"] for r in results["videos"]),
        "events": sum(len(r["events"]) for r in results["videos"]),
        "failed": 0,
    }


def test_detect_overrides_and_one_file_a_video(work, detector, tmp_path):
    """--tau 0 flags every segment (probabilities are positive): one event a video, spanning it,
    with its peak; --per-video writes a JSON a video."""
    root, model, clips = work
    videos = sorted(clips.glob("*.mp4"))[:2]
    run = cli(
        "--no-compile-cache", "detect", "--detector", detector, *videos, "--tau", 0,
        "--sigma", 1.0, "--per-video", tmp_path / "each", "--quiet",
        env={"HEADHUNT_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert not (tmp_path / "cache").exists()
    assert "2 videos scored, 2 with events (2 events), 0 failed" in run.stdout
    for video in videos:
        r = json.loads((tmp_path / "each" / f"{video.name}.json").read_text())
        assert r["is_anomaly"] and (r["sigma"], r["tau"]) == (1.0, 0.0)
        (event,) = r["events"]
        assert (event["start_frame"], event["end_frame"]) == (0, r["segment_frames"][-1][1])
        assert event["peak_score"] == max(r["smoothed_scores"])
        assert event["duration_s"] == round(event["end_frame"] / r["fps"], 3)


def test_detect_report(work, detector, tmp_path):
    """--report: a page with every video, its timeline and the thumbnails of the extraction's own
    pass (every segment here: 3 a video, fewer than the strip's 8, plus each event's peak);
    stdout stays the results' JSON."""
    from test_report import Page

    root, model, clips = work
    videos = sorted(clips.glob("*.mp4"))[:2]
    page = tmp_path / "out" / "report.html"
    cache = tmp_path / "cache"
    run = cli(
        "detect", "--detector", detector, *videos, "--tau", 0.3, "--report", page, "--quiet",
        env={"HEADHUNT_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert any((cache / "jax").iterdir())  # the compiled programs, for the next run
    record = json.loads(run.stdout)
    assert f"report -> {page}" in run.stderr
    parsed = Page(page.read_text())
    assert [a["data-video"] for a in parsed.all("article")] == [v.name for v in videos]
    assert len(parsed.all("svg")) == 2
    events = sum(len(r["events"]) for r in record["videos"])
    thumbnails = [a for a in parsed.all("img") if a.get("class") == "thumb"]
    assert len(thumbnails) == 2 * 3 + events
    assert all(a["src"].startswith("data:image/jpeg;base64,") for a in thumbnails)


def test_detect_bad_inputs_finish_the_good_ones(work, detector, tmp_path):
    root, model, clips = work
    good = sorted(clips.glob("*.mp4"))[0]
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    short = tmp_path / "short.mp4"
    synthetic.write_h264(short, np.full((30, 48, 64, 3), 128, np.uint8), 25)
    out = tmp_path / "out.json"
    run = cli(
        "detect",
        "--detector",
        detector,
        "--model",
        model,
        good,
        empty,
        text,
        truncated,
        short,
        "--out",
        out,
        "--quiet",
        check=False,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    results = json.loads(out.read_text())
    done = {r["video"]: r for r in results["videos"]}
    assert set(done) == {good.name, short.name}
    assert done[short.name]["short"] and len(done[short.name]["segment_scores"]) == 1
    failed = {Path(f["path"]).name for f in results["failures"]}
    assert failed == {"empty.mp4", "notes.mp4", "truncated.mp4"}
    for name in failed:
        assert name in run.stderr


def test_a_moved_folder_keeps_its_backbone(work, detector, tmp_path):
    """The detector records its backbone beside it relative to itself: the folder holding both
    can be copied or moved, and ``detect`` without --model still finds the backbone."""
    import shutil

    root, model, clips = work
    assert json.loads((detector / "meta" / "metadata").read_text())["backbone_path"] == "../model"
    moved = tmp_path / "moved"
    shutil.copytree(model, moved / "model")
    shutil.copytree(detector, moved / "detector")
    assert Detector.load(moved / "detector").backbone_path == str(moved / "model")
    out = tmp_path / "d.json"
    video = sorted(clips.glob("*.mp4"))[0]
    cli("detect", "--detector", moved / "detector", video, "--out", out, "--quiet")
    assert [r["video"] for r in json.loads(out.read_text())["videos"]] == [video.name]


def test_one_line_errors(work, detector, tmp_path):
    root, model, clips = work
    assert_one_line_error(
        cli(
            "extract",
            "--model",
            model,
            "--videos",
            tmp_path / "nope",
            "--prompt",
            "p",
            "--out",
            tmp_path / "s",
            check=False,
        ),
        "nope",
        "no such file",
    )
    assert_one_line_error(cli("convert", tmp_path, tmp_path / "out", check=False), "config.json")
    # The detector records its backbone's folder; one that is gone is named.
    moved = Detector.load(detector)
    moved = dataclasses.replace(moved, backbone_path=str(tmp_path / "gone"))
    moved.save(tmp_path / "moved")
    assert_one_line_error(
        cli(
            "detect", "--detector", tmp_path / "moved", sorted(clips.glob("*.mp4"))[0], check=False
        ),
        "moved: the backbone it was fitted on is no longer at",
        "--model",
    )
    other = hf.save_tiny_internvl(
        tmp_path / "other-model", text=hf.tiny_text_config(num_hidden_layers=2).to_dict()
    )
    run = cli(
        "detect",
        "--detector",
        detector,
        "--model",
        other,
        sorted(clips.glob("*.mp4"))[0],
        check=False,
    )
    assert_one_line_error(run, f"{detector}: the detector was fitted on backbone")
    assert_one_line_error(
        cli("hunt", root / "store0", "--out", tmp_path / "h.json", check=False),
        "at least 2 prompts",
    )
    extract = ["extract", "--model", model, "--videos", clips, "--prompt", "p", "--out", tmp_path]
    assert_one_line_error(
        cli(*extract, "--model-parallel", 2, check=False),
        "--model-parallel 2: 1 device(s) cannot be split into a mesh with model=2",
    )
    assert_one_line_error(
        cli(*extract, "--coordinator", "10.0.0.1:99", check=False),
        "--coordinator given without --distributed",
    )


def test_evaluate_on_an_xd_violence_layout(work, detector, tmp_path):
    root, model, clips = work
    videos = tmp_path / "xd" / "videos"
    videos.mkdir(parents=True)
    for clip in clips.glob("*.mp4"):
        (videos / clip.name).symlink_to(clip)
    (tmp_path / "xd" / "annotations.txt").symlink_to(clips / "annotations.txt")
    out = tmp_path / "report.json"
    run = cli(
        "evaluate",
        "--detector",
        detector,
        "--model",
        model,
        "--dataset",
        "xd_violence",
        "--root",
        tmp_path / "xd",
        "--out",
        out,
        "--report",
        tmp_path / "report.html",
        "--quiet",
    )
    report = json.loads(out.read_text())
    assert report["num_videos"] == 8 and 0 <= report["auc"] <= 1 and 0 <= report["ap"] <= 1
    page = (tmp_path / "report.html").read_text()
    assert "Frame-level ROC and precision-recall curves" in page and page.count('class="truth"') > 0
    assert f"{report['auc']:.4f}" in page and page.count("<article") == 8
    assert report["num_anomaly_frames"] > 0 and report["failed_videos"] == []
    assert "frame-level ROC AUC" in run.stdout
    assert_one_line_error(
        cli(
            "evaluate",
            "--detector",
            detector,
            "--model",
            model,
            "--dataset",
            "ucf_crime",
            "--root",
            tmp_path / "xd",
            check=False,
        ),
        "outside a class folder",
    )


def test_detect_with_the_same_model_under_another_name(work, detector, tmp_path):
    """A renamed checkpoint folder holds the same architecture: detection runs, with a warning."""
    import shutil

    root, model, clips = work
    renamed = shutil.copytree(model, tmp_path / "renamed-model")
    run = cli(
        "detect",
        "--detector",
        detector,
        "--model",
        renamed,
        sorted(clips.glob("*.mp4"))[0],
        "--quiet",
    )
    assert json.loads(run.stdout)["videos"] and "fitted on" in run.stderr


def test_detect_warns_on_another_compute_dtype(work, detector):
    root, model, clips = work
    video = sorted(clips.glob("*.mp4"))[0]
    run = cli(
        "detect", "--detector", detector, "--model", model, "--dtype", "bfloat16", video, "--quiet"
    )
    assert json.loads(run.stdout)["videos"]
    assert "fitted on float32 features; extracting in bfloat16" in run.stderr


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from headhunt_jax import cli as module
    from headhunt_jax.errors import InputError

    def raising(error):
        def command(args):
            raise error

        return command

    monkeypatch.setattr(module, "_hunt", raising(InputError("heads.json: not a heads file")))
    assert module.main(["hunt", "a", "b", "--out", "h.json"]) == 1
    assert capsys.readouterr().err == "headhunt-jax hunt: error: heads.json: not a heads file\n"
    for bug in (ValueError("shapes (3,) and (4,) not aligned"), KeyError("x"), OSError(5, "EIO")):
        monkeypatch.setattr(module, "_hunt", raising(bug))
        with pytest.raises(type(bug)):
            module.main(["hunt", "a", "b", "--out", "h.json"])


def test_not_a_detector_and_an_existing_output_are_one_line(work, detector, tmp_path):
    root, model, clips = work
    video = sorted(clips.glob("*.mp4"))[0]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    assert_one_line_error(
        cli("detect", "--detector", tmp_path / "junk", video, check=False), "not a bundle"
    )
    assert_one_line_error(
        cli("detect", "--detector", root / "heads.json", video, check=False), "no checkpoint at"
    )
    fit = ["fit", "--store", root / "store0", "--heads", root / "heads.json"]
    fit += ["--annotations", clips / "annotations.txt", "--out", detector]
    assert_one_line_error(cli(*fit, check=False), "already exists", "--overwrite")
    assert_one_line_error(
        cli("hunt", root / "store0", root / "store1", "--out", tmp_path / "h.json",
            "--annotations", tmp_path / "missing.txt", check=False),
        "missing.txt",
    )  # fmt: skip


def test_detect_explain(work, detector, tmp_path):
    """--explain: every event gets the backbone's answer to each question (--tau 0: one event a
    video); an answer length of 0 is a one-line error."""
    root, model, clips = work
    video = sorted(clips.glob("*.mp4"))[0]
    questions = ("--explain-prompt", "What happens?", "--explain-prompt", "Who is there?")
    run = cli(
        "detect", "--detector", detector, video, "--tau", 0, "--explain", *questions,
        "--max-new-tokens", 5, "--per-video", tmp_path / "each", "--quiet",
    )  # fmt: skip
    r = json.loads((tmp_path / "each" / f"{video.name}.json").read_text())
    (event,) = r["events"]
    assert isinstance(event["explanation"], list) and len(event["explanation"]) == 2
    assert all(isinstance(text, str) for text in event["explanation"])
    assert "explanation_note" not in event  # not the demo's random checkpoint
    assert f"{event['start_s']}-{event['end_s']} s: " in run.stdout
    bad = cli(
        "detect", "--detector", detector, video, "--explain", "--max-new-tokens", 0, check=False
    )
    assert_one_line_error(bad, "max_new_tokens")


def wait_for(predicate, process, timeout=300):
    """Polls until ``predicate()`` or the process ends; True when the predicate held."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigterm_during_extract_keeps_what_is_done_and_resumes(work, detector, tmp_path):
    """A preempted extraction says what it kept and exits 143; the rerun finishes the stores,
    equal to the uninterrupted run's (the ``detector`` fixture's stores)."""
    import signal

    from headhunt_jax.store import FeatureStore

    root, model, clips = work
    stores = [tmp_path / "s0", tmp_path / "s1"]
    args = ["extract", "--model", model, "--videos", clips, "--prompt", PROMPTS[0], "--out",
            stores[0], "--prompt", PROMPTS[1], "--out", stores[1], "--batch-size", 1, "--quiet"]  # fmt: skip
    process = subprocess.Popen(
        [SCRIPT, *map(str, args)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert wait_for(lambda: any(stores[1].glob("*.npz")), process), "nothing was written"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if "terminated" in x]
    ids = [set(FeatureStore(s).video_ids()) for s in stores]
    assert f"kept {len(ids[0])} videos in {stores[0]}" in line and "rerun" in line
    kept = len(ids[0] & ids[1])  # a signal between a video's two files leaves it in one store
    assert 1 <= kept < 8
    assert not list(stores[0].glob("*.tmp")) and not list(stores[1].glob("*.tmp"))
    run = cli(*args)
    assert f"{8 - kept} videos written, {kept} already there" in run.stdout
    for resumed, whole in zip(stores, [root / "store0", root / "store1"], strict=True):
        resumed, whole = FeatureStore(resumed), FeatureStore(whole)
        assert resumed.video_ids() == whole.video_ids()
        for video in whole.video_ids():
            np.testing.assert_allclose(
                resumed.read(video).features, whole.read(video).features, rtol=1e-5, atol=1e-5
            )


def test_values_that_mean_nothing_are_refused_in_one_line(work, detector, tmp_path, capsys):
    from headhunt_jax import backbones
    from headhunt_jax import cli as command_line

    root, model, clips = work
    video = sorted(clips.glob("*.mp4"))[0]
    cases = [
        (["hunt", root / "store0", root / "store1", "--lam", "-5", "--out", tmp_path / "h.json"],
         "--lam must be >= 0"),
        (["detect", "--detector", detector, "--tau", "2", video], "--tau must be in [0, 1)"),
        (["extract", "--model", model, "--videos", clips, "--prompt", " ", "--out", tmp_path / "s"],
         "--prompt number 1 is empty"),
        (["extract", "--model", model, "--videos", clips, "--prompt", "p", "--out", tmp_path / "s",
          "--processor-option", "mode=video"], "InternVL's processor has no options (got mode)"),
    ]  # fmt: skip
    for argv, message in cases:
        assert command_line.main(list(map(str, argv))) == 1, argv
        err = capsys.readouterr().err
        (line,) = [x for x in err.splitlines() if "error:" in x]
        assert message in line and "Traceback" not in err
    assert not (tmp_path / "h.json").exists()
    # Choice-like flags list their choices and refuse others (argparse: usage + error, exit 2).
    with pytest.raises(SystemExit) as exit_:
        command_line.main(["demo", "--backbone", "foo", "--out", str(tmp_path / "d")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'foo'" in err and "'llava-onevision'" in err
    demos = {n for f in backbones.FAMILIES.values() for n in f.demo_backbones}
    assert set(command_line.DEMO_BACKBONES) == demos


def cell_means(maps, cells):
    """Each [H, W] map's means over an h x w grid, cell i's rows [i H // h, (i + 1) H // h)."""
    h, w = cells
    height, width = maps.shape[-2:]
    rows = [i * height // h for i in range(h + 1)]
    cols = [j * width // w for j in range(w + 1)]
    return np.asarray(
        [
            [[m[rows[i] : rows[i + 1], cols[j] : cols[j + 1]].mean() for j in range(w)]
             for i in range(h)]
            for m in maps
        ]
    )  # fmt: skip


def test_detect_attribution_report(work, detector, tmp_path):
    """--attribution: each video's record holds the heatmaps of its peak segment, equal to
    ``hh.head_attribution`` of the detector's scorer on that segment's frames read again here
    (16x16 cell means over the 56-px frames, divided by their largest); the page shows the
    peak's thumbnail under red cells of those values, as Chromium renders it."""
    import headless
    from test_report import Page

    import headhunt_jax as hh
    from headhunt_jax.video import VideoReader

    root, model, clips = work
    videos = sorted(clips.glob("*.mp4"))[3:5]
    page, out = tmp_path / "report.html", tmp_path / "detections.json"
    cli(
        "detect", "--detector", detector, *videos, "--tau", 0.3, "--attribution",
        "--report", page, "--out", out, "--quiet",
    )  # fmt: skip
    results = json.loads(out.read_text())["videos"]
    bb, det = hh.load_backbone(model), Detector.load(detector)
    processor = bb.processor()
    for r in results:
        found = r["attribution"]
        peak = int(np.argmax(r["smoothed_scores"]))
        heatmaps = np.asarray(found["heatmaps"])
        assert found["segment"] == peak and found["size"] == [16, 16]
        assert heatmaps.shape == (16, 16, 16) and np.isfinite(heatmaps).all()
        assert heatmaps.min() >= 0 and heatmaps.max() == 1 and found["scale"] > 0
        reader = VideoReader(r["path"], **processor.frames, frames_per_segment=16)
        with reader:
            (segment,) = [s for s in reader if s.start_frame == r["segment_frames"][peak][0]]
        assert found["frames"] == segment.frame_indices.tolist()
        ids = processor.prompt_ids(det.prompt, 16, segment.pixels.shape[-2:])[None]
        maps = hh.head_attribution(bb, ids, segment.pixels, det.expert_heads, det.scorer)
        means = cell_means(np.asarray(maps, np.float64), (16, 16))
        np.testing.assert_allclose(found["scale"], means.max(), rtol=1e-4)
        np.testing.assert_allclose(heatmaps, means / means.max(), atol=6e-4)

    dom = Page(headless.dump_dom(page))
    shown = dom.all("div", **{"class": "attribution"})
    assert [int(d["data-segment"]) for d in shown] == [r["attribution"]["segment"] for r in results]
    assert len(dom.all("svg", **{"class": "heat"})) == len(results)
    assert len(dom.all("div", **{"class": "overlay"})) == len(results)  # each over a thumbnail
    cells = [float(a["data-value"]) for a in dom.all("rect") if "data-value" in a]
    want = [
        v
        for r in results
        for row in r["attribution"]["heatmaps"][r["attribution"]["thumbnail_frame"]]
        for v in row
        if v > 0
    ]
    assert cells == want
    opacity = [float(a["fill-opacity"]) for a in dom.all("rect") if "data-value" in a]
    assert max(opacity) == 0.7 and min(opacity) > 0  # the frame's largest cell, and none clear
    (body,) = dom.all("body")
    assert int(body["data-images-decoded"]) == len(dom.all("img"))
    assert "the gradient of the detector's logit" in "".join(dom.text)


def test_attribution_without_a_gradient_is_one_line(work, detector, tmp_path):
    """Qwen2.5-VL lays out its pixels on the host: --attribution is refused before extracting."""
    from headhunt_jax import tiny_checkpoints

    root, model, clips = work
    qwen = tiny_checkpoints.write("qwen2.5-vl", tmp_path / "qwen", ["Anything odd here?"])
    video = sorted(clips.glob("*.mp4"))[0]
    run = cli(
        "detect", "--detector", detector, "--model", qwen, video, "--attribution", check=False
    )
    assert_one_line_error(run, "attribution", "qwen2_5_vl")
