"""Dataset listings on tiny fake UCF-Crime and XD-Violence trees, the calibration subset, and the
tfds builders (skipped without tensorflow-datasets)."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest

from headhunt_jax.annotations import AnnotationError
from headhunt_jax.datasets import (
    DatasetError,
    SplitNotFoundError,
    VideoItem,
    calibration_subset,
    load_dataset,
    ucf_crime,
    xd_violence,
)
from headhunt_jax.synthetic import write_h264
from headhunt_jax.video import segment_frame_indices

UCF_TRAIN = [
    "Abuse/Abuse001_x264.mp4",
    "Arson/Arson002_x264.mp4",
    "Training_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4",
    "Training_Normal_Videos_Anomaly/Normal_Videos002_x264.mp4",
]
UCF_TEST = [
    "Abuse/Abuse028_x264.mp4",
    "Abuse/Abuse030_x264.mp4",
    "Arson/Arson011_x264.mp4",
    "Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4",
]
UCF_ANNOTATION = {
    "Abuse028_x264": "Abuse  165  240  -1  -1",
    "Abuse030_x264": "Abuse  1275  1360  1600  1700",
    "Arson011_x264": "Arson  150  420  -1  -1",
    "Normal_Videos_003_x264": "Normal  -1  -1  -1  -1",
}
ANNOTATION_NAME = "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def write_ucf_annotation(root, annotation=UCF_ANNOTATION):
    write_lines(root / ANNOTATION_NAME, [f"{k}.mp4  {v}" for k, v in annotation.items()])


@pytest.fixture
def ucf(tmp_path):
    """Placeholder videos (listing decodes nothing), the annotation and the official lists; the
    event-recognition folder repeats a test normal, and the test list names it without a folder,
    as the official one does."""
    for name in UCF_TRAIN + UCF_TEST + ["Normal_Videos_event/Normal_Videos_003_x264.mp4"]:
        touch(tmp_path / "Videos" / name)
    write_ucf_annotation(tmp_path)
    write_lines(tmp_path / "Anomaly_Train.txt", UCF_TRAIN)
    write_lines(tmp_path / "Anomaly_Test.txt", UCF_TEST[:3] + ["Normal_Videos_003_x264.mp4"])
    return tmp_path


def ids(listing):
    return [item.video_id for item in listing]


def test_ucf_crime_test_split_from_the_lists(ucf):
    listing = ucf_crime(ucf, "test")
    assert ids(listing) == sorted(f"Videos/{v}" for v in UCF_TEST)
    by_key = {item.key: item for item in listing}
    assert by_key["Abuse030_x264"].events == ((1275, 1360), (1600, 1700))
    assert by_key["Abuse030_x264"].label == 1
    assert by_key["Abuse030_x264"].class_name == "Abuse"
    assert by_key["Abuse030_x264"].path == ucf / "Videos/Abuse/Abuse030_x264.mp4"
    assert by_key["Normal_Videos_003_x264"].label == 0
    assert by_key["Normal_Videos_003_x264"].class_name == "Normal"
    assert by_key["Normal_Videos_003_x264"].events == ()
    assert {item.split for item in listing} == {"test"}
    assert listing.warnings == ()
    assert (listing.name, listing.root, listing.split, len(listing)) == (
        "ucf_crime",
        ucf,
        "test",
        4,
    )


def test_ucf_crime_train_and_all(ucf):
    train = ucf_crime(ucf, "train")
    assert ids(train) == sorted(f"Videos/{v}" for v in UCF_TRAIN)
    assert [(i.label, i.class_name, i.events) for i in train] == [
        (1, "Abuse", ()),
        (1, "Arson", ()),
        (0, "Normal", ()),
        (0, "Normal", ()),
    ]
    # The training split needs no annotation when the lists say which videos it holds.
    (ucf / ANNOTATION_NAME).unlink()
    assert ucf_crime(ucf, "train", official=False) == train
    write_ucf_annotation(ucf)
    everything = ucf_crime(ucf, "all")
    assert ids(everything) == sorted(ids(train) + ids(ucf_crime(ucf, "test")))
    assert load_dataset("ucf_crime", ucf, "all") == everything


def test_ucf_crime_without_lists_splits_by_annotation(ucf):
    (ucf / "Anomaly_Train.txt").unlink()
    (ucf / "Anomaly_Test.txt").unlink()
    test = ucf_crime(ucf, "test", official=False)
    assert ids(test) == sorted(f"Videos/{v}" for v in UCF_TEST)
    assert test.items[0].events == ((165, 240),)
    train = ucf_crime(ucf, "train", official=False)
    assert ids(train) == sorted(f"Videos/{v}" for v in UCF_TRAIN)
    # The event-recognition copy of a test normal is left out of training, and said so.
    (warning,) = train.warnings
    assert "Normal_Videos_event/Normal_Videos_003_x264.mp4" in warning


def test_ucf_crime_normal_is_a_word_in_the_folder_name(ucf):
    touch(ucf / "Videos/Abnormal/Abnormal001_x264.mp4")
    touch(ucf / "Videos/Normal-Extra/Normal_Videos900_x264.mp4")
    write_lines(ucf / "Anomaly_Train.txt", UCF_TRAIN + ["Abnormal/Abnormal001_x264.mp4"])
    write_lines(ucf / "Anomaly_Test.txt", UCF_TEST + ["Normal-Extra/Normal_Videos900_x264.mp4"])
    write_ucf_annotation(ucf, dict(UCF_ANNOTATION, Normal_Videos900_x264="Normal -1 -1 -1 -1"))
    labels = {i.key: (i.label, i.class_name) for i in ucf_crime(ucf, "all")}
    assert labels["Abnormal001_x264"] == (1, "Abnormal")
    assert labels["Normal_Videos900_x264"] == (0, "Normal")


def test_ucf_crime_download_layout_resolves_list_entries_by_name(tmp_path):
    # The downloads nest classes in part folders and name the training normals' folder otherwise.
    for name in UCF_TRAIN + UCF_TEST:
        folder, file = name.split("/")
        part = "Training-Normal-Videos-Part-1" if "Normal" in folder else f"Part-1/{folder}"
        touch(tmp_path / "Videos" / part / file)
    write_ucf_annotation(tmp_path)
    write_lines(tmp_path / "Anomaly_Detection_splits/Anomaly_Train.txt", UCF_TRAIN)
    write_lines(tmp_path / "Anomaly_Detection_splits/Anomaly_Test.txt", UCF_TEST)
    train = ucf_crime(tmp_path, "train")
    assert [i.class_name for i in train] == ["Abuse", "Arson", "Normal", "Normal"]
    assert [i.label for i in train] == [1, 1, 0, 0]
    assert "Videos/Training-Normal-Videos-Part-1/Normal_Videos001_x264.mp4" in ids(train)
    assert len(ucf_crime(tmp_path, "test")) == 4


def test_ucf_crime_warnings(ucf):
    touch(ucf / "Videos/Abuse/Abuse099_x264.mp4")
    annotation = dict(UCF_ANNOTATION, Arson011_x264="Explosion  -1  -1  -1  -1")
    write_ucf_annotation(ucf, annotation)
    listing = ucf_crime(ucf, "all")
    assert "Abuse099" not in " ".join(ids(listing))
    unlisted, renamed, no_event = listing.warnings
    assert "neither split list" in unlisted and "Abuse099_x264.mp4" in unlisted
    assert "Arson011_x264 is annotated Explosion, in Arson/" in renamed
    assert "Arson011_x264 has no event" in no_event


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: (r / ANNOTATION_NAME).unlink(), "no temporal annotation file"),
        (lambda r: (r / "Anomaly_Train.txt").unlink(), "found without Anomaly_Train.txt"),
        (lambda r: (r / "Videos/Abuse/Abuse030_x264.mp4").unlink(), r"Anomaly_Test.txt: 1 listed"),
        (
            lambda r: write_ucf_annotation(
                r, {k: v for k, v in UCF_ANNOTATION.items() if k != "Arson011_x264"}
            ),
            "1 test videos have no line: Arson011_x264",
        ),
        (
            lambda r: write_ucf_annotation(
                r, dict(UCF_ANNOTATION, Ghost001_x264="Abuse 1 2 -1 -1")
            ),
            "1 annotated videos have no file under .*: Ghost001_x264",
        ),
        (
            lambda r: write_ucf_annotation(
                r, dict(UCF_ANNOTATION, Normal_Videos_003_x264="Abuse 1 2 -1 -1")
            ),
            r"annotated against their folder's label: Normal_Videos_003_x264 \(Abuse",
        ),
        (
            lambda r: write_ucf_annotation(
                r, dict(UCF_ANNOTATION, Normal_Videos_003_x264="Normal 1 2 -1 -1")
            ),
            "are normal and have events: Normal_Videos_003_x264",
        ),
        (
            lambda r: write_lines(r / "Anomaly_Train.txt", UCF_TRAIN + UCF_TEST[:1]),
            "both list 1 videos: Abuse028_x264",
        ),
        (
            lambda r: write_lines(r / "Anomaly_Test.txt", UCF_TEST + UCF_TEST[:1]),
            "Anomaly_Test.txt: 1 videos listed twice: Abuse028_x264",
        ),
        (lambda r: touch(r / "Videos/Abuse028_x264.mp4"), "outside a class folder"),
        (lambda r: touch(r / "Videos/Other/Normal_Videos_003_x264.mp4"), "match several files"),
    ],
)
def test_ucf_crime_errors_name_the_file_and_the_videos(ucf, change, message):
    change(ucf)
    with pytest.raises(DatasetError, match=message):
        ucf_crime(ucf, "test", official=False)


def test_ucf_crime_errors_without_lists(ucf):
    (ucf / "Anomaly_Train.txt").unlink()
    (ucf / "Anomaly_Test.txt").unlink()
    (ucf / "Videos/Arson/Arson011_x264.mp4").unlink()
    with pytest.raises(DatasetError, match=f"{ANNOTATION_NAME}: 1 annotated .*Arson011_x264"):
        ucf_crime(ucf, "test", official=False)
    (ucf / ANNOTATION_NAME).unlink()
    with pytest.raises(DatasetError, match="needed for listing without the split lists"):
        ucf_crime(ucf, "train", official=False)


def test_ucf_crime_official_lists_stand_in_for_missing_ones(ucf):
    """A folder of the official release's videos without its lists: the packaged official files
    are used, and the official videos the folder lacks are left out with a warning."""
    for name in ("Anomaly_Train.txt", "Anomaly_Test.txt", ANNOTATION_NAME):
        (ucf / name).unlink()
    test = ucf_crime(ucf, "test")
    # Arson011 has two events in the official file (the fixture annotates it with none).
    assert {i.key: i.events for i in test}["Arson011_x264"] == ((150, 420), (680, 1267))
    assert {i.key for i in test} == {"Abuse028_x264", "Abuse030_x264", "Arson011_x264"} | {
        i.key for i in test if i.label == 0
    }
    text = " ".join(test.warnings)
    assert "using the official" in text and "listed videos are missing" in text
    train = ucf_crime(ucf, "train")
    assert [i.key for i in train] == [Path(v).stem for v in sorted(UCF_TRAIN)]


def test_other_videos_in_the_layout_keep_their_own_lists(tmp_path):
    touch(tmp_path / "Videos/Fighting/Mine001.mp4")
    with pytest.raises(DatasetError, match="no temporal annotation file"):
        ucf_crime(tmp_path, "test")


def test_ucf_crime_bad_root_and_arguments(ucf, tmp_path):
    with pytest.raises(DatasetError, match="missing: no such directory"):
        ucf_crime(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no Videos folder"):
        ucf_crime(ucf / "Videos")
    with pytest.raises(DatasetError, match="nowhere.txt: no such file"):
        ucf_crime(ucf, annotation_file=ucf / "nowhere.txt")
    with pytest.raises(ValueError, match="split must be"):
        ucf_crime(ucf, "val")
    with pytest.raises(ValueError, match="unknown dataset 'shanghaitech'"):
        load_dataset("shanghaitech", ucf)
    (ucf / ANNOTATION_NAME).write_text("Abuse028_x264.mp4 Abuse 10\n")
    with pytest.raises(AnnotationError, match=f"{ANNOTATION_NAME}:1"):
        ucf_crime(ucf)


XD_TEST = {
    "A.Movie.2001__#00-01-45_00-02-50_label_A": None,
    "Fight.Club.1999__#01-00-00_01-01-00_label_B1-0-0": "10 50",
    "Bad.Boys.2003__#00-06-42_00-10-00_label_B2-G-0": "0 30 60 90",
}
XD_TRAIN = ["part-1/Calm__#1_label_A", "part-2/Blast__#2_label_G-0-0"]


def write_xd(root, test_folder="videos", videos=XD_TEST, annotation_dir=None):
    for name in videos:
        touch(root / test_folder / f"{name}.mp4")
    for name in XD_TRAIN:
        touch(root / "train" / f"{name}.mp4")
    lines = [f"{k}.mp4 {v}" for k, v in videos.items() if v is not None]
    write_lines((annotation_dir or root) / "annotations.txt", lines)


def test_xd_violence_splits(tmp_path):
    write_xd(tmp_path)
    test = xd_violence(tmp_path)
    assert ids(test) == sorted(f"videos/{k}.mp4" for k in XD_TEST)
    assert [(i.label, i.class_name, i.events) for i in test] == [
        (0, "Normal", ()),
        (1, "Shooting", ((0, 30), (60, 90))),
        (1, "Fighting", ((10, 50),)),
    ]
    train = xd_violence(tmp_path, "train")
    assert ids(train) == [f"train/{n}.mp4" for n in XD_TRAIN]
    assert [(i.label, i.class_name, i.events, i.split) for i in train] == [
        (0, "Normal", (), "train"),
        (1, "Explosion", (), "train"),
    ]
    assert ids(load_dataset("xd_violence", tmp_path, "all")) == sorted(ids(test) + ids(train))


def test_xd_violence_test_folder_holds_the_annotations(tmp_path):
    write_xd(tmp_path, "Test", annotation_dir=tmp_path / "Test")
    assert len(xd_violence(tmp_path, "test")) == 3
    (tmp_path / "Test/annotations.txt").write_text(f"{next(iter(XD_TEST))}.mp4 -1 -1\n")
    with pytest.raises(DatasetError, match="normal .label_A. test videos are annotated"):
        xd_violence(tmp_path)


def test_xd_violence_warns_of_an_anomaly_without_events(tmp_path):
    write_xd(tmp_path, videos=dict(XD_TEST, **{"Riot__#3_label_B4-0-0": "-1 -1"}))
    listing = xd_violence(tmp_path)
    assert listing.warnings == (
        f"{tmp_path / 'annotations.txt'}: anomalous test video Riot__#3_label_B4-0-0 has no event",
    )
    assert listing.items[-1].class_name == "Riot"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: (r / "annotations.txt").unlink(), "no annotations.txt"),
        (
            lambda r: (r / "annotations.txt").write_text("Ghost_label_B1.mp4 1 2\n"),
            "annotated videos have no file in .*videos: Ghost_label_B1",
        ),
        (
            lambda r: (r / "annotations.txt").write_text(
                "Fight.Club.1999__#01-00-00_01-01-00_label_B1-0-0.mp4 1 5\n"
            ),
            "1 anomalous test videos have no line: Bad.Boys",
        ),
        (lambda r: touch(r / "videos/unnamed.mp4"), "without `label_`.*unnamed.mp4"),
        (lambda r: touch(r / "test/x_label_A.mp4"), "both test/ and videos/"),
        (
            lambda r: touch(r / "videos/sub/A.Movie.2001__#00-01-45_00-02-50_label_A.mp4"),
            "share a name",
        ),
    ],
)
def test_xd_violence_errors(tmp_path, change, message):
    write_xd(tmp_path)
    change(tmp_path)
    with pytest.raises(DatasetError, match=message):
        xd_violence(tmp_path, "all")


def test_xd_violence_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="no such directory .the XD-Violence root"):
        xd_violence(tmp_path / "missing")
    (tmp_path / "videos").mkdir()
    with pytest.raises(DatasetError, match="videos: no videos in the test split"):
        xd_violence(tmp_path)
    with pytest.raises(SplitNotFoundError, match="no train/ folder"):
        xd_violence(tmp_path, "train")


def fake_items(counts, split="train"):
    return [
        VideoItem(
            Path(f"{c}{i:03d}.mp4"), f"Videos/{c}/{c}{i:03d}.mp4", int(c != "Normal"), c, (), split
        )
        for c, n in counts.items()
        for i in range(n)
    ]


def test_calibration_subset_is_seeded_per_class_and_covers_every_class():
    items = fake_items({"Normal": 250, "Abuse": 40, "Arson": 100, "Riot": 7})
    subset = calibration_subset(items, fraction=0.01, seed=0)
    counts = {
        c: sum(i.class_name == c for i in subset) for c in ("Normal", "Abuse", "Arson", "Riot")
    }
    assert counts == {"Normal": 3, "Abuse": 1, "Arson": 1, "Riot": 1}
    assert [i.video_id for i in subset] == sorted(i.video_id for i in subset)
    shuffled = random.Random(1).sample(items, len(items))
    assert calibration_subset(shuffled, fraction=0.01, seed=0) == subset
    assert calibration_subset(items, fraction=0.01, seed=1) != subset
    # A class's draw does not depend on the other classes.
    alone = calibration_subset([i for i in items if i.class_name == "Normal"], 0.01, seed=0)
    assert alone == tuple(i for i in subset if i.class_name == "Normal")
    assert len(calibration_subset(items, fraction=1.0)) == len(items)


def test_calibration_subset_from_a_listing(ucf):
    subset = calibration_subset(ucf_crime(ucf, "train"))
    assert sorted(i.class_name for i in subset) == ["Abuse", "Arson", "Normal"]
    with pytest.raises(ValueError, match="from the training split; 4 are from another"):
        calibration_subset(ucf_crime(ucf, "test"))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_calibration_subset_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="fraction must be in"):
        calibration_subset(fake_items({"Normal": 3}), fraction)
    with pytest.raises(ValueError, match="no videos"):
        calibration_subset([])


def test_tfds_builders_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.delitem(sys.modules, "headhunt_jax.tfds_builders", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'headhunt-jax\[datasets\]'"):
        import headhunt_jax.tfds_builders  # noqa: F401


def build(name, config, manual_dir, data_dir):
    """Builds the tfds dataset of builder class ``name``; returns {split: data source}."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from headhunt_jax import tfds_builders

    builder = getattr(tfds_builders, name)(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder.as_data_source()


def read_back(source):
    return sorted(
        (
            {k: v.decode() if isinstance(v, bytes) else v for k, v in source[i].items()}
            for i in range(len(source))
        ),
        key=lambda e: e["video_id"],
    )


def test_ucf_crime_tfds_paths_build_and_read_back(ucf, tmp_path):
    sources = build("UcfCrime", "paths", ucf, tmp_path / "tfds")
    assert set(sources) == {"train", "test"}
    for split, source in sources.items():
        listing = ucf_crime(ucf, split)
        examples = read_back(source)
        assert [e["video_id"] for e in examples] == ids(listing)
        assert [e["label"] for e in examples] == [i.label for i in listing]
        assert [e["class_name"] for e in examples] == [i.class_name for i in listing]
        for e, item in zip(examples, listing, strict=True):
            np.testing.assert_array_equal(e["events"], np.reshape(item.events, (-1, 2)))
    assert list((tmp_path / "tfds/ucf_crime/paths/1.0.0").glob("ucf_crime-test.array_record-*"))


def test_xd_violence_tfds_segments_match_the_reader(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    lengths = {"Calm_label_A": 30, "Fight_label_B1-0-0": 100}
    (tmp_path / "data/videos").mkdir(parents=True)
    for name, frames in lengths.items():
        write_h264(
            tmp_path / f"data/videos/{name}.mp4", np.zeros((frames, 16, 16, 3), np.uint8), 25
        )
    write_lines(tmp_path / "data/annotations.txt", ["Fight_label_B1-0-0.mp4 20 70"])
    sources = build("XdViolence", "segments", tmp_path / "data", tmp_path / "tfds")
    assert set(sources) == {"test"}  # no train/ folder: no training split
    calm, fight = read_back(sources["test"])
    assert (calm["num_frames"], fight["num_frames"]) == (30, 100)
    assert fight["fps"] == pytest.approx(25.0)
    np.testing.assert_array_equal(fight["events"], [[20, 70]])
    np.testing.assert_array_equal(fight["segments"], [[0, 48], [48, 96]])
    np.testing.assert_array_equal(
        fight["frame_indices"], [segment_frame_indices(s, 100) for s in range(2)]
    )
    np.testing.assert_array_equal(calm["segments"], [[0, 30]])
    np.testing.assert_array_equal(calm["frame_indices"], [segment_frame_indices(0, 30)])
    assert calm["events"].shape == (0, 2)


def test_xd_violence_official_annotations_stand_in_for_a_missing_file(tmp_path):
    official = {
        "A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_A": None,
        "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6": "1 2",
    }
    write_xd(tmp_path, "test", official)
    (tmp_path / "annotations.txt").unlink()
    test = xd_violence(tmp_path)
    events = {i.key: i.events for i in test}
    assert events["Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6"] == (
        (157, 180), (185, 244), (250, 360), (582, 810),
    )  # fmt: skip
    missing, packaged = test.warnings
    assert "798 of the 800 official test videos are missing" in missing
    assert "using the official" in packaged
    with pytest.raises(DatasetError, match="no annotations.txt"):
        xd_violence(tmp_path, official=False)
