"""The regions of the synthetic videos' injected anomalies (``synthetic.Region``): the pixels
each injection writes, recorded beside the annotations."""

import av
import numpy as np
import pytest

from headhunt_jax import synthetic
from headhunt_jax.annotations import read_annotations

SMALL = dict(segments=2, segment_length=48, size=(64, 48), event_segments=(1, 2))


@pytest.fixture(scope="module")
def generated():
    """Two videos of each kind, with their footage before the injection."""
    return list(synthetic._generate(0, 8, 2, 48, (64, 48), 7, (1, 2), keep_clean=True))


def test_a_region_is_what_its_injection_changed(generated):
    """Outside the region (and outside the event) the frames are the footage; inside, the
    intruder's pixels differ from it. A whole-frame kind changes most of the frame."""
    assert sorted({g.label for g in generated}) == sorted(synthetic.ANOMALIES)
    for g in generated:
        r = g.region
        assert (r.label, r.height, r.width) == (g.label, 48, 64)
        assert (r.frames.start, r.frames.stop) == g.events[0]
        changed = (g.frames != g.clean).any(axis=-1)  # [n, H, W]
        masks = np.stack([r.mask(f) for f in range(len(g.frames))])
        assert not changed[~masks].any(), g.name
        outside = [f for f in range(len(g.frames)) if f not in r.frames]
        assert outside and not masks[outside].any()
        inside = changed[masks]
        if r.whole_frame:
            assert masks[list(r.frames)].all() and inside.mean() > 0.5, g.name
        else:
            assert r.kind == "intruder" and inside.mean() > 0.99, g.name
            assert masks[list(r.frames)].mean() < 0.2  # a box, not the frame
            boxes = r.boxes
            assert (boxes[:, 2:] > boxes[:, :2]).all()
            assert boxes[-1, 1] > boxes[0, 1]  # it crosses the scene


def test_written_regions_match_the_videos(tmp_path):
    """``make_videos`` writes ``regions.json`` with the annotations' events; ``make_regions``
    recomputes it from the seed; in the decoded video the intruder's box is dark."""
    videos = synthetic.make_videos(tmp_path, num_normal=1, num_anomalous=4, seed=7, **SMALL)
    regions = synthetic.read_regions(tmp_path / synthetic.REGIONS_FILE)
    events = read_annotations(tmp_path / "annotations.txt")
    assert sorted(regions) == sorted(v.path.name for v in videos if v.label != "A")
    again = synthetic.make_regions(1, 4, seed=7, **SMALL)
    assert again == regions  # labels and frames (boxes below)
    assert all(np.array_equal(again[name].boxes, r.boxes) for name, r in regions.items())
    for v in videos:
        if v.label == "A":
            assert v.region is None
            continue
        r = regions[v.path.name]
        assert r == v.region and np.array_equal(r.boxes, v.region.boxes)
        assert [(r.frames.start, r.frames.stop)] == events[v.path.stem]
        if r.whole_frame:
            continue
        with av.open(str(v.path)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        for f in r.frames:
            y0, x0, y1, x1 = r.boxes[f - r.first_frame]
            core = frames[f, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].astype(float)
            assert abs(core.mean() - 20) < 10, (v.path.name, f)


def test_trees_record_regions_by_path(tmp_path, monkeypatch):
    footage = synthetic.load_footage(64, 48)  # decoded once for the four splits
    monkeypatch.setattr(synthetic, "load_footage", lambda *size: footage)
    for make in (synthetic.ucf_crime_tree, synthetic.xd_violence_tree):
        root = make(tmp_path / make.__name__, train_per_class=1, test_per_class=2, **SMALL)
        regions = synthetic.read_regions(root / synthetic.REGIONS_FILE)
        assert len(regions) == 3 and all((root / name).is_file() for name in regions)
