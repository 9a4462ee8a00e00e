"""Datasets and videos on a bucket (a local S3 server, tests/buckets.py): the listings of a tree
uploaded to ``s3://`` equal those of the same tree on disk, a video read from a bucket gives the
pixels of the local file, and what is missing is a one-line error naming its URL."""

import dataclasses

import numpy as np
import pytest
from test_datasets import ANNOTATION_NAME, UCF_TEST, UCF_TRAIN, touch, write_ucf_annotation

from headhunt_jax import files, paths, synthetic
from headhunt_jax.annotations import read_annotations
from headhunt_jax.datasets import DatasetError, ucf_crime, xd_violence
from headhunt_jax.video import VideoError, VideoReader

s3fs = pytest.importorskip("s3fs")

# A demo-shaped tree kept tiny: one normal and one anomalous video a split, two segments each.
TREE = dict(train_per_class=1, test_per_class=1, segments=2, event_segments=(1, 1), size=(48, 32))


@pytest.fixture(scope="module")
def xd(tmp_path_factory):
    return synthetic.xd_violence_tree(tmp_path_factory.mktemp("xd") / "XD", **TREE)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    """The UCF-Crime download's layout (placeholder videos: listing decodes nothing): a test
    normal repeated in Normal_Videos_event, the split lists in Anomaly_Detection_splits, one
    video in neither list (a warning)."""
    root = tmp_path_factory.mktemp("ucf") / "UCF_Crimes"
    extra = ["Normal_Videos_event/Normal_Videos_003_x264.mp4", "Abuse/Abuse099_x264.mp4"]
    for name in UCF_TRAIN + UCF_TEST + extra:
        touch(root / "Videos" / name)
    write_ucf_annotation(root)
    splits = root / "Anomaly_Detection_splits"
    splits.mkdir()
    (splits / "Anomaly_Train.txt").write_text("".join(f"{v}\n" for v in UCF_TRAIN))
    test = UCF_TEST[:3] + ["Normal_Videos_003_x264.mp4"]
    (splits / "Anomaly_Test.txt").write_text("".join(f"{v}\n" for v in test))
    return root


def upload(local, url):
    """The folder ``local`` as ``url`` (its contents directly under it); returns the URL."""
    s3fs.S3FileSystem().put(f"{local}/", url.removeprefix("s3://") + "/", recursive=True)
    return url


def described(listing, root):
    """A listing with its root written as ROOT: equal for the same tree anywhere."""
    root = str(root)
    items = [
        (str(i.path).replace(root, "ROOT"), i.video_id, i.label, i.class_name, i.events, i.split)
        for i in listing
    ]
    return items, [w.replace(root, "ROOT") for w in listing.warnings]


def same_listings(function, local, url, **options):
    for split in ("train", "test", "all"):
        here, there = function(local, split, **options), function(url, split, **options)
        assert described(there, url) == described(here, local)
        assert all(paths.is_url(i.path) and str(i.path).startswith(url + "/") for i in there)
    return there


def test_xd_violence_from_a_bucket_lists_as_from_a_folder(xd, bucket):
    url = upload(xd, f"{bucket}/XD")
    test = same_listings(xd_violence, xd, url)
    assert {i.label for i in test} == {0, 1} and any(i.events for i in test)
    assert read_annotations(f"{url}/annotations.txt") == read_annotations(xd / "annotations.txt")
    # A trailing slash on the root changes nothing.
    assert described(xd_violence(url + "/"), url) == described(xd_violence(xd), xd)


def test_ucf_crime_from_a_bucket_lists_as_from_a_folder(ucf, bucket):
    url = upload(ucf, f"{bucket}/data/UCF_Crimes")
    test = same_listings(ucf_crime, ucf, url, official=False)
    assert "Videos/Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4" in [
        i.video_id for i in test
    ]
    warned = " ".join(test.warnings)
    assert "neither split list" in warned and f"{url}/Videos" in warned
    # The annotation and split lists named explicitly, as URLs.
    lists = {
        s: f"{url}/Anomaly_Detection_splits/Anomaly_{s.title()}.txt" for s in ("train", "test")
    }
    explicit = ucf_crime(
        url, "all", annotation_file=f"{url}/{ANNOTATION_NAME}", split_lists=lists, official=False
    )
    assert described(explicit, url) == described(ucf_crime(ucf, "all", official=False), ucf)


def test_missing_roots_objects_and_folders_are_one_line_errors_naming_the_url(ucf, bucket):
    url = upload(ucf, f"{bucket}/UCF")
    for root in (f"{bucket}/nowhere", "s3://no-such-bucket-here/UCF"):
        with pytest.raises(DatasetError) as caught:
            ucf_crime(root)
        assert str(caught.value) == f"{root}: no such directory (the UCF-Crime root)"
    with pytest.raises(DatasetError, match=f"^{url}/nowhere.txt: no such file$"):
        ucf_crime(url, annotation_file=f"{url}/nowhere.txt")
    with pytest.raises(DatasetError, match=f"^{url}/Videos: no Videos folder"):
        ucf_crime(f"{url}/Videos")
    with pytest.raises(files.MissingFile, match=f"^{url}/absent.txt: no such file"):
        files.read_text(f"{url}/absent.txt")
    with pytest.raises(files.InputError, match=f"^{url}/Videos: a directory, not a file$"):
        files.read_text(f"{url}/Videos")
    for name, problem in [
        ("Videos/Abuse/absent.mp4", "no such file or object"),
        ("Videos/Abuse", "not a regular file"),
        ("Videos/Abuse/Abuse028_x264.mp4", "empty file"),  # a placeholder
    ]:
        with pytest.raises(VideoError) as caught:
            VideoReader(f"{url}/{name}")
        assert str(caught.value) == f"{url}/{name}: {problem}"
    with pytest.raises(VideoError, match="^s3://no-such-bucket-here/a.mp4: no such file"):
        VideoReader("s3://no-such-bucket-here/a.mp4")


def read_all(path, **options):
    with VideoReader(path, **options) as reader:
        segments = list(reader)
    return reader, segments


@pytest.mark.parametrize("clip", ["segment", "video"])
def test_a_video_from_a_bucket_reads_as_the_local_file(xd, bucket, clip):
    url = upload(xd / "test", f"{bucket}/clips")
    video = sorted((xd / "test").glob("*.mp4"))[0]
    options = dict(image_size=32, clip=clip, thumbnail_height=16)
    local, here = read_all(video, **options)
    remote, there = read_all(f"{url}/{video.name}", **options)
    assert str(remote.path) == f"{url}/{video.name}" and paths.is_url(remote.path)
    assert remote.metadata == dataclasses.replace(local.metadata, path=str(remote.path))
    assert len(there) == len(here) == (2 if clip == "segment" else 1)
    for a, b in zip(here, there, strict=True):
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert (a.index, a.start_frame, a.end_frame, a.thumbnail) == (
            b.index,
            b.start_frame,
            b.end_frame,
            b.thumbnail,
        )


def test_a_whole_video_clip_from_a_bucket_in_two_passes_closes_its_streams(
    tmp_path, bucket, monkeypatch
):
    """Matroska states no frame count: the clip takes a second pass on the object opened
    afresh; every stream opened on the object is closed with the reader."""
    frames = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), np.uint8)
    video = synthetic.write_h264(tmp_path / "clip.mkv", frames, 25)
    url = f"{bucket}/clip.mkv"
    s3fs.S3FileSystem().put_file(str(video), url.removeprefix("s3://"))
    opened, open_for_reading = [], paths.open_for_reading

    def recording(p):
        opened.append(open_for_reading(p))
        return opened[-1]

    monkeypatch.setattr(paths, "open_for_reading", recording)
    _, (clip,) = read_all(url, image_size=32, clip="video")
    _, (expected,) = read_all(video, image_size=32, clip="video")
    np.testing.assert_array_equal(clip.pixels, expected.pixels)
    assert len(opened) == 2 and all(f.closed for f in opened)


def test_a_listing_sees_what_the_bucket_holds_now(xd, bucket):
    """The listings that s3fs cached in an earlier listing do not hide a folder that another
    client (its own s3fs instance here, another process in practice) added since."""
    url = f"{bucket}/XD"
    fs = s3fs.S3FileSystem()
    for name in ("test", "annotations.txt"):
        fs.put(str(xd / name), f"{url}/{name}".removeprefix("s3://"), recursive=True)
    assert len(xd_violence(url, "test")) == 2
    with pytest.raises(DatasetError, match="no train/ folder"):
        xd_violence(url, "train")
    other = s3fs.S3FileSystem(skip_instance_cache=True)
    other.put(f"{xd}/train/", f"{url}/train/".removeprefix("s3://"), recursive=True)
    assert described(xd_violence(url, "all"), url) == described(xd_violence(xd, "all"), xd)
