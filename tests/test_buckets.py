"""Detectors, converted backbones and stores round-trip through a bucket (a real S3-compatible
server, tests/buckets.py), and a bucket's failures are one line naming the URL."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from buckets import ENV, start_server
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


def test_a_denied_write_is_one_line(tmp_path):
    """A server that checks permissions (moto's, after its first requests): a user allowed to
    read only converts a backbone into the bucket."""
    boto3 = pytest.importorskip("boto3")
    server, endpoint = start_server(INITIAL_NO_AUTH_ACTION_COUNT="4")
    try:
        kw = dict(endpoint_url=endpoint, region_name="us-east-1", **_keys(ENV))
        boto3.client("s3", **kw).create_bucket(Bucket="read-only")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="reader")
        read_only = {"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}
        policy = json.dumps({"Version": "2012-10-17", "Statement": [read_only]})
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=policy)
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        local = tiny_checkpoints.write("internvl3", tmp_path / "tiny", ["Anything odd?"])
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        denied = cli("convert", local, "s3://read-only/tiny", env=env)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert denied.returncode == 1 and "Traceback" not in denied.stderr, denied.stderr
    assert denied.stderr.strip().count("\n") == 0, denied.stderr
    assert "headhunt-jax convert: error: s3://read-only/tiny: access denied" in denied.stderr


def _keys(env):
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }


def test_a_store_and_a_detector_on_google_cloud_storage(gcs_bucket, tmp_path, monkeypatch):
    """The same code through gcsfs, against the Cloud Storage emulator."""
    monkeypatch.setenv("HEADHUNT_CACHE_DIR", str(tmp_path / "cache"))
    from test_store import SPEC, video

    from headhunt_jax.store import FeatureStore

    store = FeatureStore.create(f"{gcs_bucket}/store", SPEC)
    store.write(video("a.mp4", 3, label=1))
    store.write(video("b/c.mp4", 2, label=0, seed=1))
    again = FeatureStore(f"{gcs_bucket}/store")
    assert again.video_ids() == ["a.mp4", "b/c.mp4"]
    np.testing.assert_array_equal(again.read("a.mp4").features, video("a.mp4", 3).features)
    detector = trained_detector()
    detector.save(f"{gcs_bucket}/detector")
    features, _ = head_features(5, seed=4)
    loaded = Detector.load(f"{gcs_bucket}/detector")
    np.testing.assert_array_equal(scores(loaded, features), scores(detector, features))
