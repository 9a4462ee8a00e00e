"""The paper's protocol through the CLI on trees laid out like UCF-Crime and XD-Violence, made from
the demo's footage, with the demo's tiny backbone: labels from the layouts, the step commands,
``reproduce`` and its resumption."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headhunt_jax import synthetic, tiny_checkpoints

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).with_name("headhunt-jax"))
PROMPTS = [
    "Identify any abnormal events or safety hazards in this video.",
    "Analyze the video for anomalies. Describe any violent activities, accidents, or deviations "
    "from normal patterns in detail.",
]
TREE = dict(train_per_class=8, test_per_class=4, seed=3, event_segments=(3, 5))


def cli(*args, check=True):
    run = subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=900)
    if check and run.returncode:
        raise AssertionError(f"headhunt-jax {' '.join(map(str, args))} failed:\n{run.stderr}")
    return run


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    write = tiny_checkpoints.writer("internvl3")
    return write(tmp_path_factory.mktemp("backbone") / "tiny", PROMPTS)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    return synthetic.ucf_crime_tree(tmp_path_factory.mktemp("ucf") / "UCF_Crimes", **TREE)


@pytest.fixture(scope="module")
def xd(tmp_path_factory):
    return synthetic.xd_violence_tree(tmp_path_factory.mktemp("xd") / "XD", **TREE)


def test_ucf_crime_step_by_step(model, ucf, tmp_path):
    """Training anomalies are labelled by their class folder: hunting finds both classes
    (annotations alone would make every training video normal)."""
    data = ["--dataset", "ucf_crime", "--root", ucf]
    stores = [tmp_path / "p1", tmp_path / "p2"]
    run = cli(
        "extract", "--model", model, *data, "--split", "train",
        "--prompt", PROMPTS[0], "--out", stores[0], "--prompt", PROMPTS[1], "--out", stores[1],
        "--quiet",
    )  # fmt: skip
    assert "16 videos written" in run.stdout
    labels = {v["video_id"]: v["label"] for v in _stored_meta(stores[0])}
    assert sum(labels.values()) == 8 and all("Normal" in v for v, y in labels.items() if y == 0)
    annotations = ucf / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    # Not annotated, but labelled when extracted: the stored labels hold.
    cli("hunt", *stores, "--k", 3, "--annotations", annotations, "--out", tmp_path / "h0.json")
    cli("hunt", *stores, "--k", 3, *data, "--out", tmp_path / "heads.json")
    run = cli(
        "fit", "--store", stores[0], "--heads", tmp_path / "heads.json", *data,
        "--holdout", 0.4, "--out", tmp_path / "detector",
    )  # fmt: skip
    assert "held out 6 videos" in run.stdout and "held-out videos" in run.stdout
    run = cli(
        "evaluate", "--detector", tmp_path / "detector", "--model", model, *data,
        "--out", tmp_path / "report.json", "--per-video", tmp_path / "per_video.json", "--quiet",
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_videos"] == 8 and report["auc"] > 0.7, report
    assert set(report["video_level"]) == {"max", "mean", "p90"}
    per_video = json.loads((tmp_path / "per_video.json").read_text())
    assert len(per_video) == 8 and sum(v["is_anomaly_video"] for v in per_video) == 4


def test_unlabelled_videos_are_an_error_not_normal(model, ucf, tmp_path):
    videos = sorted((ucf / "Videos" / "Burglary").glob("*.mp4"))
    stores = [tmp_path / "p1", tmp_path / "p2"]
    cli(
        "extract", "--model", model, "--videos", *videos,
        "--prompt", PROMPTS[0], "--out", stores[0], "--prompt", PROMPTS[1], "--out", stores[1],
        "--quiet",
    )  # fmt: skip
    annotations = ucf / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    run = cli("hunt", *stores, "--annotations", annotations, "--out", tmp_path / "h", check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "has no label" in run.stderr and "Burglary001_x264.mp4" in run.stderr


def test_reproduce_on_xd_violence_twice_and_from_a_bucket(model, xd, prompts, tmp_path, bucket):
    out = tmp_path / "run"
    args = [
        "reproduce", "xd_violence", "--root", xd, "--model", model, "--out", out,
        "--prompts", prompts, "--calibration-fraction", 0.5, "--k", 3,
    ]  # fmt: skip
    # Preempted while extracting: one line, exit 143; the rerun finishes the run.
    process = subprocess.Popen(
        [SCRIPT, *map(str, args), "--quiet"], stderr=subprocess.PIPE, text=True
    )
    while process.poll() is None and not any((out / "features").rglob("*.npz")):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert f"terminated (SIGTERM): the finished stages are kept in {out}" in stderr
    first = cli(*args, "--quiet")
    report = json.loads((out / "report.json").read_text())
    assert report["videos"] == {"calibration": 8, "validation": 6, "test": 8}
    frame = report["frame_level"]
    assert frame["num_videos"] == 8 and frame["roc_auc"] > 0.7, frame
    assert report["prompts"] == PROMPTS and len(report["expert_heads"]) == 3
    assert (
        report["training"]["clip"] == "video"
        and "validation" in report["training"]["calibrated_on"]
    )
    assert "frame-level ROC AUC" in first.stdout
    stores = sorted((out / "features").rglob("*.npz"))
    written = {p: p.stat().st_mtime_ns for p in stores}
    second = cli(*args)
    assert second.stderr.count("already done") == 5, second.stderr
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "features").rglob("*.npz"))} == written
    again = json.loads((out / "report.json").read_text())
    assert again["frame_level"] == frame and all(s["reused"] for s in again["stages"].values())
    run = cli(*args[:-2], "--k", 4, check=False)
    assert run.returncode == 1 and "other settings" in run.stderr and "Traceback" not in run.stderr
    _from_and_into_a_bucket(args, out, model, xd, bucket)


def test_reproduce_on_ucf_crime(model, ucf, prompts, tmp_path):
    out = tmp_path / "run"
    cli(
        "reproduce", "ucf_crime", "--root", ucf, "--model", model, "--out", out,
        "--prompts", prompts, "--calibration-fraction", 0.5, "--k", 3, "--quiet",
        "--report", tmp_path / "run.html",
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["frame_level"]["roc_auc"] > 0.7, report["frame_level"]
    page = (tmp_path / "run.html").read_text()
    figures = ["rss_heatmap", "saliency_criteria", "head_importance", "tsne", "roc_pr", "scores"]
    assert all((out / f"{name}.png").exists() for name in figures)
    assert page.count('<img class="plot"') == len(figures) and page.count("<article") == 8
    assert 'class="thumb"' in page and f"{report['frame_level']['roc_auc']:.4f}" in page
    splits = json.loads((out / "splits.json").read_text())
    assert not set(splits["calibration"]) & set(splits["validation"])
    assert all("Testing" in v or "Videos/" in v for v in splits["test"])


def test_reproduce_both_probes_on_one_extraction(model, xd, prompts, tmp_path):
    """HeadHunt-VAD's heads and HiProbe-VAD's layer side by side: one extraction a split, a
    column a probe in report.json and on the page (rendered by Chromium), every stage reused
    when run again."""
    import headless
    import numpy as np
    from PIL import Image

    out, page = tmp_path / "run", tmp_path / "run.html"
    args = [
        "reproduce", "xd_violence", "--root", xd, "--model", model, "--out", out,
        "--prompts", prompts, "--calibration-fraction", 0.5, "--k", 3, "--probe", "heads,hidden",
    ]  # fmt: skip
    first = cli(*args, "--quiet", "--report", page)
    report = json.loads((out / "report.json").read_text())
    columns = report["probes"]
    assert list(columns) == ["heads", "hidden"] and "hidden: layer" in first.stdout
    for name, column in columns.items():
        assert column["frame_auc"] > 0.7, (name, column)
    layers = json.loads((out / "layers.json").read_text())
    assert columns["hidden"]["layer"] == layers["layer"] and len(layers["scores"]) == 4
    assert len(columns["heads"]["expert_heads"]) == 3 and report["probe"] == "heads"
    assert columns["hidden"]["stage_seconds"].keys() == {"hunt_hidden", "fit_hidden"}
    assert all(c["calibration_store_bytes"] > 0 for c in columns.values())
    assert (out / "layers.png").exists() and (out / "roc_pr_hidden.png").exists()
    written = {p: p.stat().st_mtime_ns for p in sorted((out / "features").rglob("*.npz"))}
    second = cli(*args)
    assert second.stderr.count("already done") == 7, second.stderr
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "features").rglob("*.npz"))} == written
    again = json.loads((out / "report.json").read_text())
    assert again["probes"] == columns and all(s["reused"] for s in again["stages"].values())
    dom = headless.dump_dom(page)
    assert 'id="probes"' in dom and "Probes side by side" in dom
    assert f"{columns['hidden']['frame_auc']:.4f}" in dom and "hidden state of layer" in dom
    shot = headless.screenshot(page, tmp_path / "run.png", size=(1000, 1600))
    assert np.asarray(Image.open(shot).convert("L")).std() > 10  # not a blank page


def test_hidden_probe_flags_that_do_not_fit(model, xd, tmp_path):
    """The hidden probe's steps run as the README's block (test_demo's README test); what the
    commands refuse is one line."""
    from test_store import SPEC

    from headhunt_jax.store import FeatureStore

    FeatureStore.create(tmp_path / "p1", SPEC)
    data = ["--dataset", "xd_violence", "--root", xd]
    bad = cli("fit", "--store", tmp_path / "p1", "--heads", tmp_path / "heads.json", "--layer", "1",
              "--out", tmp_path / "x", check=False)  # fmt: skip
    assert bad.returncode == 1 and "give one of --heads" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = cli("extract", "--model", model, *data, "--features", "heads,tails",
              "--prompt", "p", "--out", tmp_path / "y", check=False)  # fmt: skip
    assert bad.returncode == 1 and "features must be one or more of heads, hidden" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def _stored_meta(store):
    import numpy as np

    return [json.loads(str(np.load(p)["meta"])) for p in sorted(Path(store).glob("*.npz"))]


def _from_and_into_a_bucket(args, local, model, xd, bucket):
    """The same run with the dataset, the backbone and the run folder on a bucket (a real
    S3-compatible server): the same heads, scores and metrics as the run on local paths."""
    import s3fs

    s3fs.S3FileSystem().put(str(xd), f"{bucket}/XD", recursive=True)
    s3fs.S3FileSystem().put(str(model), f"{bucket}/backbone", recursive=True)
    remote = f"{bucket}/run"
    places = {"--root": f"{bucket}/XD", "--model": f"{bucket}/backbone", "--out": remote}
    run = cli(*[places.get(a, x) for a, x in zip([None, *args], args, strict=False)], "--quiet")
    assert f"{remote}/report.json" in run.stdout
    fs = s3fs.S3FileSystem()
    read = lambda name: json.loads(fs.cat(f"{remote}/{name}"))
    want, got = json.loads((local / "report.json").read_text()), read("report.json")
    assert got["expert_heads"] == want["expert_heads"]
    assert got["frame_level"] == want["frame_level"] and got["videos"] == want["videos"]
    strip = lambda detections: [{k: v for k, v in d.items() if k != "path"} for d in detections]
    want_detections = json.loads((local / "detections.json").read_text())
    assert strip(read("detections.json")) == strip(want_detections)
    assert read("detections.json")[0]["path"].startswith(f"{bucket}/XD/")
    assert fs.exists(f"{remote}/detector/sha256.json") and fs.exists(f"{remote}/roc_pr.png")
    # detect: the detector, its backbone and a video on the bucket, the result into it.
    video = want_detections[0]["video"]
    cli(
        "detect",
        "--detector",
        f"{remote}/detector",
        f"{bucket}/XD/{video}",
        "--out",
        f"{remote}/one.json",
    )
    (one,) = read("one.json")["videos"]
    assert one["segment_scores"] == want_detections[0]["segment_scores"]
    # Nothing was written beside the bucket as a local folder named after the URL.
    assert not Path("s3:").exists()
