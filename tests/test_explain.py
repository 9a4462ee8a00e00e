"""Explanations of detected events: the peak segment's frames decoded again, one prefix for
every question about them, the answers stored with the events."""

import types

import numpy as np
import pytest
from test_extract import write_clip

from headhunt_jax import explain, tiny_checkpoints
from headhunt_jax.backbone import load_backbone
from headhunt_jax.generation import generate
from headhunt_jax.models.tokenizer import load_tokenizer
from headhunt_jax.video import VideoReader

QUESTIONS = ["Describe the abnormal event in these frames.", "Is anyone hurt?"]
NEW = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    bb = load_backbone(
        tiny_checkpoints.write("internvl3", tmp / "backbone", QUESTIONS, image_size=56)
    )
    clip = write_clip(tmp / "clip.mp4", 150)
    processor = bb.processor()
    with VideoReader(clip, **processor.frames) as reader:
        segments = list(reader)
        fps = reader.fps
    return bb, processor, clip, segments, fps


def test_events_get_the_answers_about_their_peak_segment(setup):
    bb, processor, clip, segments, fps = setup
    spans = [[s.start_frame, s.end_frame] for s in segments]
    results = [
        {"path": str(clip), "segment_frames": spans, "events": [{"peak_segment": 1}]},
        {
            "path": str(clip.with_name("gone.mp4")),
            "segment_frames": spans,
            "events": [{"peak_segment": 0}],
        },
    ]
    detector = types.SimpleNamespace(processor_options={})
    explain.explain_events(bb, detector, results, QUESTIONS, NEW, progress=False)
    event = results[0]["events"][0]
    assert isinstance(event["explanation"], list) and len(event["explanation"]) == 2
    assert event["explanation_note"] == explain.RANDOM_NOTE  # the tiny backbone is random
    assert "gone.mp4" in results[1]["events"][0]["explanation_error"]

    # Each answer equals a whole-prompt generation on the peak segment's frames (the shared
    # prefix changes nothing), independently of the reader pass that explain made.
    seg = segments[1]
    seconds = np.float32((seg.frame_indices[-1] - seg.frame_indices[0]) / 15 / fps)
    vision = processor.vision_inputs(seg.pixels[None], np.asarray([seconds]))
    tok = load_tokenizer(bb.path)
    for question, answer in zip(QUESTIONS, event["explanation"], strict=True):
        ids = processor.prompt_ids(question, len(seg.pixels), seg.pixels.shape[-2:])[None]
        want = generate(bb, ids, NEW, tokenizer=tok, **vision)
        assert answer == want.text[0]
    # one question: the answer is a string
    one = [{"path": str(clip), "segment_frames": spans, "events": [{"peak_segment": 1}]}]
    explain.explain_events(bb, detector, one, QUESTIONS[0], NEW, progress=False)
    assert one[0]["events"][0]["explanation"] == event["explanation"][0]
    with pytest.raises(ValueError, match="non-empty"):
        explain.explain_events(bb, detector, one, [" "], NEW, progress=False)


def test_detect_explains_events_from_the_kept_keys_and_values(setup, tmp_path):
    """The extraction pass keeps the frames' keys and values of the segments that may become a
    peak: the scores equal plain detection's, every event is explained from them, and the
    answers equal explaining afterwards from the frames decoded again."""
    import dataclasses

    from headhunt_jax import detection
    from headhunt_jax.detector import Detector
    from headhunt_jax.locator import localize
    from headhunt_jax.scorer import fit_scorer
    from headhunt_jax.store import FeatureStore

    bb, *_ = setup
    clip = write_clip(tmp_path / "long.mp4", 48 * 16, seed=3)  # 16 segments
    rng = np.random.default_rng(0)
    heads = np.asarray([[1, 0], [3, 2]])
    x = rng.standard_normal((40, 2 * bb.head_dim)).astype(np.float32)
    scorer = fit_scorer(x, (x[:, 0] > 0).astype(int))
    detector = Detector(heads, scorer, sigma=1.0, tau=0.5, backbone=bb.name, prompt=QUESTIONS[1])
    plain, _ = detection.detect(bb, detector, [clip], tmp_path / "plain", progress=False)
    smoothed = np.asarray(plain[0]["smoothed_scores"])
    # a threshold with a run that ends while the video goes on (its peak explained during the
    # pass, 3 = the kernel's half width) and more than one run if there is one
    half = 3

    def runs(tau):
        return localize(smoothed, None, tau)

    taus = [
        t for t in np.unique(smoothed)[:-1] if any(e + half < len(smoothed) for _, e in runs(t))
    ]
    tau = float(max(taus, key=lambda t: len(runs(t))))
    detector = dataclasses.replace(detector, tau=tau)
    plain = detection.detections(detector, FeatureStore(tmp_path / "plain"), [plain[0]["video"]])
    assert plain[0]["events"]

    explainer = explain.Explainer(bb, detector, QUESTIONS[0], NEW)
    got, _ = detection.detect(
        bb, detector, [clip], tmp_path / "explained", explainer=explainer, progress=False
    )
    np.testing.assert_allclose(got[0]["segment_scores"], plain[0]["segment_scores"], atol=1e-5)
    events = got[0]["events"]
    assert [(e["start_segment"], e["end_segment"]) for e in events] == [
        (e["start_segment"], e["end_segment"]) for e in plain[0]["events"]
    ]
    assert explainer.reused == len(events)  # none decoded again
    assert any(e["end_segment"] + half < len(smoothed) for e in events)  # one during the pass
    again = explain.explain_events(bb, detector, plain, QUESTIONS[0], NEW, progress=False)
    assert [e["explanation"] for e in events] == [e["explanation"] for e in again[0]["events"]]
    assert all(isinstance(e["explanation"], str) for e in events)
    # memory: no video's keys and values are left once it ended
    assert not explainer.videos


def test_a_hidden_state_detector_scores_alike_in_detect_explain_and_watch(setup, tmp_path):
    """A detector of one layer's hidden state extracts only that layer, and detection, the
    explaining pass and watch's scorer give it the same scores."""
    from headhunt_jax import detection, stream
    from headhunt_jax.detector import Detector
    from headhunt_jax.scorer import fit_scorer
    from headhunt_jax.store import FeatureStore

    bb, processor, *_ = setup
    clip = write_clip(tmp_path / "clip.mp4", 48 * 4, seed=5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, bb.text_config.hidden_size)).astype(np.float32)
    scorer = fit_scorer(x, (x[:, 0] > 0).astype(int))
    detector = Detector(
        None, scorer, sigma=1.0, tau=0.5, backbone=bb.name, prompt=QUESTIONS[1], layer=2
    )
    plain, _ = detection.detect(bb, detector, [clip], tmp_path / "plain", progress=False)
    spec = FeatureStore(tmp_path / "plain").spec
    assert spec.kinds == ("hidden",) and spec.hidden_layers == (2,) and spec.layers == ()
    want = plain[0]["segment_scores"]
    explainer = explain.Explainer(bb, detector, QUESTIONS[0], NEW)
    got, _ = detection.detect(
        bb, detector, [clip], tmp_path / "explained", explainer=explainer, progress=False
    )
    np.testing.assert_allclose(got[0]["segment_scores"], want, atol=1e-5)
    with VideoReader(clip, **processor.frames) as reader:
        segments = [(s, reader.fps) for s in reader]
    watched = stream.SegmentScorer(bb, detector, len(segments))(segments)
    np.testing.assert_allclose(watched, want, atol=1e-5)
