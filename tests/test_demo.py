"""The demo, the main job on a fresh machine: the whole pipeline, as the README runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_demo_runs_the_whole_pipeline(tmp_path):
    script = Path(sys.executable).with_name("headhunt-jax")
    run = subprocess.run(
        [script, "demo", "--out", tmp_path, "--quiet"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    # Seed 0 gives AUC 0.837 and AP 0.598 (random weights, real footage); chance is 0.5 and the
    # share of anomalous frames (about 0.2): a broken stage drops to those.
    assert report["auc"] > 0.7 and report["ap"] > 0.4
    assert report["num_videos"] == 16 and report["num_anomaly_frames"] > 0
    assert len(report["expert_heads"]) == 5 and "random" in report["note"]
    assert (tmp_path / "rss_heatmap.png").stat().st_size > 0
    assert len(list((tmp_path / "timelines").glob("*.png"))) == 16
    assert (tmp_path / "detector").is_dir() and (tmp_path / "heads.json").exists()
    assert "frame-level ROC AUC" in run.stdout
    assert f"headhunt-jax detect --detector {tmp_path / 'detector'} VIDEO.mp4" in run.stdout

    # The detector knows its backbone: detect needs no --model.
    good = sorted((tmp_path / "clips").glob("*.mp4"))[0]
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    detect = [script, "detect", "--detector", tmp_path / "detector", good, bad, "--quiet"]
    run = subprocess.run(detect, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    record = json.loads(run.stdout)
    assert [r["video"] for r in record["videos"]] == [good.name]
    assert record["summary"] == {
        "videos": 1,
        "anomalous": int(bool(record["videos"][0]["events"])),
        "events": len(record["videos"][0]["events"]),
        "failed": 1,
    }
    assert "notes.mp4" in run.stderr
    (tmp_path / "backbone").rename(tmp_path / "elsewhere")
    run = subprocess.run(detect, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"no longer at {tmp_path / 'backbone'}; pass --model" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["internvl3.5", "llava-onevision", "qwen2.5-vl"])
def test_demo_on_every_family(tmp_path, backbone):
    """The same demo on another family's tiny random backbone (seed 0: internvl3.5 AUC 0.85,
    llava-onevision 0.77, qwen2.5-vl 0.86)."""
    script = Path(sys.executable).with_name("headhunt-jax")
    args = [script, "demo", "--backbone", backbone, "--out", tmp_path, "--quiet"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["auc"] > 0.7 and report["num_videos"] == 16
    assert backbone in report["backbone"] and backbone in report["note"]
