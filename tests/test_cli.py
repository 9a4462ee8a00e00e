"""The console script end to end on a tiny checkpoint and small real clips, and its bad inputs."""

import dataclasses
import json
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


def cli(*args, check=True):
    run = subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600)
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
        "detect", "--detector", detector, *videos, "--tau", 0, "--sigma", 1.0,
        "--per-video", tmp_path / "each", "--quiet",
    )  # fmt: skip
    assert "2 videos scored, 2 with events (2 events), 0 failed" in run.stdout
    for video in videos:
        r = json.loads((tmp_path / "each" / f"{video.name}.json").read_text())
        assert r["is_anomaly"] and (r["sigma"], r["tau"]) == (1.0, 0.0)
        (event,) = r["events"]
        assert (event["start_frame"], event["end_frame"]) == (0, r["segment_frames"][-1][1])
        assert event["peak_score"] == max(r["smoothed_scores"])
        assert event["duration_s"] == round(event["end_frame"] / r["fps"], 3)


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
    synthetic.write_mp4(short, np.full((30, 48, 64, 3), 128, np.uint8), 25)
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
        "--quiet",
    )
    report = json.loads(out.read_text())
    assert report["num_videos"] == 8 and 0 <= report["auc"] <= 1 and 0 <= report["ap"] <= 1
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
