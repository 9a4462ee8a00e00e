"""Backbones by Hugging Face Hub id, offline, against a cache laid out as ``huggingface_hub`` lays
one out (``models--org--name/{blobs,snapshots/<commit>,refs/main}``) in a temporary HF_HOME."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

import headhunt_jax as hh
from headhunt_jax import backbone, hub
from headhunt_jax.detector import Detector

hf = pytest.importorskip("hf_reference")
from test_cli import assert_one_line_error, cli  # noqa: E402

REPO = "test-org/tiny-internvl"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(home: Path, repo_id: str, checkpoint: Path, commit: str = COMMIT) -> Path:
    """Puts ``checkpoint``'s files in HF_HOME ``home``'s cache as the Hub's ``commit`` of
    ``repo_id`` on branch main: content-addressed blobs, snapshot links, the ref."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        link = snapshot / f.relative_to(checkpoint)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(os.path.relpath(blob, link.parent)))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    checkpoint = hf.save_tiny_internvl(root / "checkpoint")
    hub_cache(root / "hf_home", REPO, checkpoint)
    return root, checkpoint


@pytest.fixture
def offline(cached, monkeypatch):
    """The cache as this process's huggingface_hub sees it, offline."""
    root, _ = cached
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / "hf_home" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {"HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1"}


def test_hub_ids_are_told_from_paths(tmp_path):
    assert hub.parse_hub_id("OpenGVLab/InternVL3-8B") == ("OpenGVLab/InternVL3-8B", None)
    assert hub.parse_hub_id("Qwen/Qwen2.5-VL-7B-Instruct@refs/pr/3") == (
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "refs/pr/3",
    )
    for text in ("model", "/abs/org/name", "./org/name", "a/b/c", "org/..", "org/name@", "-x/y"):
        assert hub.parse_hub_id(text) is None, text
    (tmp_path / "org" / "name").mkdir(parents=True)  # an existing path is always a path
    assert hub.resolve(tmp_path / "org" / "name") == hub.Source(tmp_path / "org" / "name")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        hub.resolve(tmp_path / "missing")


def test_relative_records():
    assert hub.relative_to("/a/out/backbone", "/a/out/detector") == "../backbone"
    assert hub.relative_to("/a/out/detector/bb", "/a/out/detector") == "bb"
    assert hub.relative_to("/models/bb", "/a/out/detector") == "/models/bb"
    assert hub.from_record("../backbone", "/a/out/detector") == "/a/out/backbone"
    assert hub.from_record("/models/bb", "/a/out/detector") == "/models/bb"


@pytest.mark.parametrize("revision", ["", "@main", f"@{COMMIT}"])
def test_load_by_hub_id_equals_the_directory(cached, offline, revision):
    _, checkpoint = cached
    bb = hh.load_backbone(REPO + revision)
    assert bb.name == REPO and bb.hub_ref == f"{REPO}@{COMMIT}"
    assert bb.path.name == COMMIT and bb.path.parent.name == "snapshots"
    local = hh.load_backbone(checkpoint)
    assert local.hub_ref is None
    ids, n = hf.multimodal_ids(np.random.default_rng(0), 2, 2, 4)
    pixels = np.random.default_rng(1).standard_normal((n, 3, 56, 56)).astype(np.float32)
    np.testing.assert_array_equal(
        hh.head_features(bb, ids, pixels), hh.head_features(local, ids, pixels)
    )


def test_not_cached_offline_is_one_line(offline, tmp_path):
    with pytest.raises(hub.HubError, match="nobody/nothing: not in the Hugging Face cache"):
        hh.load_backbone("nobody/nothing")
    run = cli("convert", "nobody/nothing@v2", tmp_path / "out", check=False, env=offline)
    assert_one_line_error(run, "nobody/nothing@v2", "HF_HUB_OFFLINE", "hf download")
    assert not (tmp_path / "out").exists()
    run = cli("convert", "no-such-dir", tmp_path / "out", check=False, env=offline)
    assert_one_line_error(run, "no-such-dir: no such directory")


def test_convert_a_hub_id(cached, offline, tmp_path):
    _, checkpoint = cached
    cli("convert", REPO, tmp_path / "converted", "--dtype", "float32", env=offline)
    converted = hh.load_backbone(tmp_path / "converted")
    assert converted.name == REPO
    local = hh.load_backbone(checkpoint)
    for got, want in zip(
        *(backbone.jax.tree.leaves(b.params) for b in (converted, local)), strict=True
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_detector_fitted_by_hub_id_detects_without_model(cached, offline, tmp_path):
    from headhunt_jax import synthetic

    clips = tmp_path / "clips"
    synthetic.make_videos(clips, num_normal=2, num_anomalous=2, segments=2, size=(64, 48), seed=3)
    store = tmp_path / "store"
    common = ["--quiet", "--batch-size", "2"]
    cli("extract", "--model", REPO, "--videos", clips, "--prompt", "p", "--out", store, *common,
        env=offline)  # fmt: skip
    assert json.loads((store / "backbone.json").read_text())["hub"] == f"{REPO}@{COMMIT}"
    (tmp_path / "heads.json").write_text(json.dumps({"heads": [[0, 1], [2, 3]]}))
    annotations = clips / "annotations.txt"
    cli("fit", "--store", store, "--heads", tmp_path / "heads.json", "--annotations", annotations,
        "--out", tmp_path / "detector", env=offline)  # fmt: skip
    detector = Detector.load(tmp_path / "detector")
    assert detector.backbone == REPO and detector.backbone_hub == f"{REPO}@{COMMIT}"
    video = sorted(clips.glob("*.mp4"))[0]
    out = tmp_path / "detections.json"
    cli("detect", "--detector", tmp_path / "detector", video, "--out", out, *common, env=offline)
    (result,) = json.loads(out.read_text())["videos"]
    assert result["video"] == video.name and len(result["segment_scores"]) == 2
