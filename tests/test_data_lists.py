"""The committed split and annotation lists of UCF-Crime and XD-Violence (data/, see its README)."""

import hashlib
from pathlib import Path

import pytest

from headhunt_jax.annotations import parse_ucf_crime_annotations, parse_xd_violence_annotations

DATA = Path(__file__).resolve().parent.parent / "data"
UCF = DATA / "ucf_crime"
XD = DATA / "xd_violence"
UCF_TRAIN = UCF / "Anomaly_Train.txt"
UCF_TEST = UCF / "Anomaly_Test.txt"
UCF_ANNOTATIONS = UCF / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
XD_ANNOTATIONS = XD / "annotations.txt"
XD_TEST = XD / "test_list.txt"

# The files are kept byte-identical to their sources (data/README.md): any edit shows here.
SHA256 = {
    UCF_TRAIN: "ea91e03de7581bfa6b139e663ebb7511ab1651c33427f85741d3f497a2027744",
    UCF_TEST: "afcb2a6bffe7286607e08c864425964d8784cbd5b1f263e03b76025e11548de7",
    UCF_ANNOTATIONS: "3b9542413f2ed9e94f73bf0488c151b3d7d595a8d2ad30f524e9243a2ae2a17c",
    XD_ANNOTATIONS: "27b583ba06fe2e096d7e3d281845365c3b24de7e30797ae5c1ec771667e04c2f",
    XD_TEST: "efab4945f1dc7bf02967e1ef3b34000031faa05896b7a5ff79dca1039b4c6251",
}

UCF_CLASSES = {
    "Abuse",
    "Arrest",
    "Arson",
    "Assault",
    "Burglary",
    "Explosion",
    "Fighting",
    "RoadAccidents",
    "Robbery",
    "Shooting",
    "Shoplifting",
    "Stealing",
    "Vandalism",
}
UCF_TRAIN_NORMAL = "Training_Normal_Videos_Anomaly"
UCF_TEST_NORMAL = "Testing_Normal_Videos_Anomaly"


def lines(path):
    text = path.read_text()
    assert "\r" not in text, f"{path} has CR line ends"
    return [line for line in text.split("\n") if line.strip()]


def stem(entry):
    """`Class/Name_x264.mp4` -> `Name_x264`, the key the parsers use."""
    return entry.rsplit("/", 1)[-1].removesuffix(".mp4")


@pytest.mark.parametrize("path", list(SHA256), ids=lambda p: p.name)
def test_file_is_unchanged(path):
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256[path]


def test_ucf_crime_train_list():
    train = lines(UCF_TRAIN)
    assert len(train) == len(set(train)) == 1610
    folders = [entry.split("/")[0] for entry in train]
    assert all(entry.count("/") == 1 and entry.endswith("_x264.mp4") for entry in train)
    assert folders.count(UCF_TRAIN_NORMAL) == 800
    assert sum(folder in UCF_CLASSES for folder in folders) == 810
    assert set(folders) == UCF_CLASSES | {UCF_TRAIN_NORMAL}
    for entry in train:
        folder, name = entry.split("/")
        assert name.startswith("Normal_Videos" if folder == UCF_TRAIN_NORMAL else folder)


def test_ucf_crime_test_list():
    test = lines(UCF_TEST)
    assert len(test) == len(set(test)) == 290
    folders = [entry.split("/")[0] for entry in test]
    assert all(entry.count("/") == 1 and entry.endswith("_x264.mp4") for entry in test)
    assert folders.count(UCF_TEST_NORMAL) == 150
    assert sum(folder in UCF_CLASSES for folder in folders) == 140
    assert set(folders) == UCF_CLASSES | {UCF_TEST_NORMAL}


def test_ucf_crime_train_and_test_do_not_overlap():
    train = {stem(entry) for entry in lines(UCF_TRAIN)}
    test = {stem(entry) for entry in lines(UCF_TEST)}
    assert len(train) == 1610 and len(test) == 290
    assert not train & test


def test_ucf_crime_annotations_cover_the_test_list():
    rows = [line.split() for line in lines(UCF_ANNOTATIONS)]
    assert len(rows) == 290
    assert all(len(row) == 6 for row in rows)
    annotated = {row[0]: row[1] for row in rows}
    assert len(annotated) == 290
    test = lines(UCF_TEST)
    # The same 290 videos, each under its own class (normal test videos: "Normal").
    expected = {
        entry.split("/")[1]: "Normal" if entry.startswith(UCF_TEST_NORMAL) else entry.split("/")[0]
        for entry in test
    }
    assert annotated == expected


def test_ucf_crime_annotations_parse():
    annotations = parse_ucf_crime_annotations(UCF_ANNOTATIONS)
    assert len(annotations) == 290
    assert set(annotations) == {stem(entry) for entry in lines(UCF_TEST)}
    for entry in lines(UCF_TEST):
        events = annotations[stem(entry)]
        if entry.startswith(UCF_TEST_NORMAL):
            assert events == []
        else:
            assert 1 <= len(events) <= 2
            assert all(0 <= start <= end for start, end in events)
    assert annotations["Abuse028_x264"] == [(165, 240)]


def test_xd_violence_test_list():
    names = lines(XD_TEST)
    assert len(names) == len(set(names)) == 800
    assert all("/" not in name and not name.endswith((".npy", ".mp4")) for name in names)
    assert all("_label_" in name for name in names)
    normal = [name for name in names if "label_A" in name]
    assert len(normal) == 300
    assert len(names) - len(normal) == 500


def test_xd_violence_annotations_are_the_violent_test_videos():
    names = lines(XD_TEST)
    violent = {name for name in names if "label_A" not in name}
    annotations = parse_xd_violence_annotations(XD_ANNOTATIONS)
    assert len(lines(XD_ANNOTATIONS)) == 500
    assert len(annotations) == 500
    assert set(annotations) == violent
    assert all(events and all(0 <= s <= e for s, e in events) for events in annotations.values())
    assert annotations["v=S-7rRLrxnVQ__#1_label_B4-0-0"] == [(0, 1517), (1970, 3038)]
