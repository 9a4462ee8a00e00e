"""Detectors, converted backbones and stores round-trip through a bucket (a real S3-compatible
server, tests/buckets.py), and a bucket's failures are one line naming the URL."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_detector import HEADS, head_features, scores, trained_detector

from headhunt_jax import backbone, paths, tiny_checkpoints
from headhunt_jax.detector import Detector


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "headhunt_jax.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_a_detector_round_trips_through_a_bucket(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADHUNT_CACHE_DIR", str(tmp_path / "cache"))
    detector = trained_detector()
    detector.save(f"{bucket}/run/detector")
    assert (paths.of(bucket) / "run/detector/sha256.json").exists()
    loaded = Detector.load(f"{bucket}/run/detector")
    np.testing.assert_array_equal(loaded.expert_heads, HEADS)
    features, _ = head_features(7, seed=3)
    np.testing.assert_array_equal(scores(loaded, features), scores(detector, features))
    with pytest.raises(ValueError, match="exists"):
        detector.save(f"{bucket}/run/detector")
    with pytest.raises(FileNotFoundError, match=f"{bucket}/nothing"):
        Detector.load(f"{bucket}/nothing")


def test_a_converted_backbone_round_trips_through_a_bucket(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADHUNT_CACHE_DIR", str(tmp_path / "cache"))
    local = tiny_checkpoints.write("internvl3", tmp_path / "tiny", ["Anything odd?"])
    bb = backbone.load_backbone(local)
    url = f"{bucket}/backbones/tiny"
    assert str(backbone.save_converted(bb, url)) == url
    again = backbone.load_backbone(url)
    assert again.origin == url and again.name == bb.name
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(bb.params), strict=True):
        np.testing.assert_array_equal(a, b)
    # The tokenizer and processor files came along (the copy is a whole checkpoint).
    assert (again.path / "tokenizer.json").exists()


def test_the_cli_says_a_buckets_failure_in_one_line(bucket, tmp_path):
    missing = cli("hunt", f"{bucket}/no-store", "--out", tmp_path / "heads.json")
    assert missing.returncode == 1, missing.stderr
    assert missing.stderr.strip().count("\n") == 0, missing.stderr
    assert f"{bucket}/no-store" in missing.stderr
    nobucket = cli("convert", "no/such-model", "s3://no-such-bucket-2/out")
    assert nobucket.returncode == 1 and "Traceback" not in nobucket.stderr, nobucket.stderr
    keys = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
    }
    nokeys = cli("hunt", f"{bucket}/store", "--out", tmp_path / "heads.json", env=keys)
    assert nokeys.returncode == 1 and "Traceback" not in nokeys.stderr, nokeys.stderr
    assert nokeys.stderr.strip().count("\n") == 0, nokeys.stderr
    assert f"{bucket}/store: no credentials" in nokeys.stderr
