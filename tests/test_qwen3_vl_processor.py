"""Qwen3-VL's processor against transformers' processors configured as the released checkpoints
(``Qwen2VLImageProcessorPil`` with patch 16, ``Qwen3VLVideoProcessor``'s sizes and
``Qwen3VLProcessor``'s timestamp text; its video resize needs torchvision, so the video pixels
are checked through the image layout), the released chat template, the README's token counts,
and extraction and detection with the demo's tiny checkpoint in both modes."""

import types

import numpy as np
import pytest
from numerics import rel_err
from test_qwen2_5_vl import _clips, _decoded

transformers = pytest.importorskip("transformers")

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (  # noqa: E402
    smart_resize as hf_smart_resize,
)
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import (  # noqa: E402
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen3_vl.video_processing_qwen3_vl import (  # noqa: E402
    smart_resize as hf_video_smart_resize,
)

from headhunt_jax.backbones.qwen2_5_vl import processor_pixels as qpp  # noqa: E402
from headhunt_jax.backbones.qwen3_vl import processor as qp  # noqa: E402
from headhunt_jax.backbones.qwen3_vl import processor_pixels as pp  # noqa: E402
from headhunt_jax.backbones.qwen3_vl.config import PRESETS  # noqa: E402

PROMPT = "Anything odd here?"
VISION = PRESETS["Qwen3-VL-8B"].vision
# The released preprocessor_config.json, as transformers' image processor takes it.
IMAGE_CONFIG = dict(
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
    size={"shortest_edge": 65536, "longest_edge": 16777216},
)
VIDEO_SIZE = {"shortest_edge": 4096, "longest_edge": 25165824}
# The released chat template (Qwen3-VL Instruct) without its tools branch: what renders a
# conversation of system, user and assistant turns.
CHAT_TEMPLATE = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].content is string %}
        {{- messages[0].content }}
    {%- else %}
        {%- for content in messages[0].content %}
            {%- if 'text' in content %}
                {{- content.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    """The demo's tiny Qwen3-VL checkpoint (frames of at most 16 tokens)."""
    import headhunt_jax as hh
    from headhunt_jax import tiny_checkpoints

    path = tmp_path_factory.mktemp("tiny_qwen3") / "ckpt"
    tiny_checkpoints.write("qwen3-vl", path, [PROMPT])
    return hh.load_backbone(path)


def _hf_video_processor(cap=True):
    return Qwen3VLVideoProcessor(size=VIDEO_SIZE, cap_pixels_per_frame=cap)


# --- sizes and token counts -------------------------------------------------------------------


def test_smart_resize_matches_transformers_and_token_counts():
    """Images: transformers' ``smart_resize`` by 32 between the released limits; videos: its
    Qwen3-VL video ``smart_resize`` on the whole segment, with and without the per-frame cap
    (``get_num_of_video_patches``); the README's figures (16 frames a segment)."""
    rng = np.random.default_rng(0)
    sizes = [(240, 320), (720, 1280), (20, 150), (27, 29), *rng.integers(20, 4000, (40, 2))]
    image = {"min_pixels": pp.IMAGE_MIN_PIXELS, "max_pixels": pp.IMAGE_MAX_PIXELS}
    for h, w in map(lambda s: tuple(map(int, s)), sizes):
        assert qpp.smart_resize(h, w, 32, **image) == hf_smart_resize(h, w, 32, **image)
        for frames in (2, 5, 16):
            assert pp.video_smart_resize(frames, h, w) == hf_video_smart_resize(
                frames, h, w, factor=32, min_pixels=4096, max_pixels=25165824
            )
    for cap in (True, False):
        hf = _hf_video_processor(cap)
        for frames, h, w in [(16, 240, 320), (16, 720, 1280), (4, 1080, 1920), (15, 90, 4000)]:
            t, n = pp.video_tokens(VISION, frames, h, w, cap=cap)
            assert t * n == hf.get_num_of_video_patches(frames, h, w) // 4, (cap, frames, h, w)
    hf_image = transformers.Qwen2VLImageProcessorPil(**IMAGE_CONFIG)
    for h, w in [(240, 320), (720, 1280)]:
        assert pp.image_tokens(VISION, h, w) == hf_image.get_number_of_image_patches(h, w, {}) // 4
    # the README's figures: 16 frames, as images and as one video
    assert 16 * pp.image_tokens(VISION, 240, 320) == 16 * 80  # 256 x 320 px
    assert 16 * pp.image_tokens(VISION, 720, 1280) == 16 * 880  # 704 x 1280 px
    assert pp.video_tokens(VISION, 16, 240, 320) == (8, 80)  # 256 x 320 px
    assert pp.video_tokens(VISION, 16, 720, 1280) == (8, 720)  # 640 x 1152 px
    assert pp.video_tokens(VISION, 16, 720, 1280, cap=False) == (8, 880)
    assert pp.video_frame_size(VISION, 16, 720, 1280) == (640, 1152)
    with pytest.raises(ValueError, match="aspect ratio"):
        pp.video_smart_resize(16, 32, 7000)


def test_timestamps_follow_the_processor_formula():
    """Each temporal patch at the mean time of its first and last frame (an odd count repeats
    the last frame), one decimal: by hand, and ``Qwen3VLProcessor._calculate_timestamps``."""
    # 5 frames 1/3 s apart: patches (0, 1/3), (2/3, 1), (4/3, 4/3)
    assert pp.timestamps(5, 1 / 3) == ["<0.2 seconds>", "<0.8 seconds>", "<1.3 seconds>"]
    # 4 frames 0.5 s apart: 0.25 and 1.25 exactly, which format rounds half to even
    assert pp.timestamps(4, 0.5) == ["<0.2 seconds>", "<1.2 seconds>"]
    # the README's: 16 of 48 frames at 30 fps
    seconds = [0.1, 0.2, 0.5, 0.6, 0.9, 1.1, 1.2, 1.4]
    assert pp.timestamps(16, 3 / 30) == [f"<{t} seconds>" for t in seconds]
    calc = Qwen3VLProcessor._calculate_timestamps
    for frames, seconds in [(16, 0.1), (16, 3 / 30), (16, 3 / 24), (7, 2.5), (16, 1.001)]:
        want = [f"<{t:.1f} seconds>" for t in calc(None, list(range(frames)), 1 / seconds, 2)]
        assert pp.timestamps(frames, seconds) == want
    with pytest.raises(ValueError, match="positive"):
        pp.timestamps(4, 0)


# --- pixels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "clip, limits",
    [
        ("bigbuckbunny.mp4", {}),  # 1280 x 720: 704 x 1280, under the released max
        ("bikes.mp4", {"max_pixels": 128 * 32 * 32}),  # 640 x 272 scaled down to the max
        ("carphone_pristine.mp4", {}),  # 176 x 144 scaled up to the released min
    ],
)
def test_image_pixels_match_the_transformers_image_processor(clip, limits):
    frames = _decoded(clip, 2)
    config = dict(IMAGE_CONFIG)
    if limits:
        config["size"] = {
            "shortest_edge": pp.IMAGE_MIN_PIXELS,
            "longest_edge": limits["max_pixels"],
        }
    want = transformers.Qwen2VLImageProcessorPil(**config)(images=list(frames), return_tensors="np")
    bounds = {"min_pixels": pp.IMAGE_MIN_PIXELS, "max_pixels": pp.IMAGE_MAX_PIXELS, **limits}
    pixels, grid = qpp.image_pixels(frames, VISION, **bounds, mean=pp.MEAN, std=pp.STD)
    np.testing.assert_array_equal(grid, want["image_grid_thw"])
    assert pixels.shape == want["pixel_values"].shape
    err = np.abs(pixels - want["pixel_values"]).max()
    print(f"pixels {clip} {frames.shape[1:3]} -> grid {grid[0].tolist()}: max abs err {err:.1e}")
    assert err <= 1e-6


def test_reader_pixels_match_the_transformers_image_processor(tiny_qwen3):
    """Frames of a real clip as ``VideoReader`` resizes and normalises them by the processor's
    rule, through ``vision_inputs``: transformers' image processor with the checkpoint's
    limits on the same decoded frames."""
    from headhunt_jax.synthetic import footage_dir
    from headhunt_jax.video import VideoReader

    proc = tiny_qwen3.processor()
    path = footage_dir() / "bikes.mp4"
    with VideoReader(path, frames_per_segment=4, segment_length=48, **proc.frames) as reader:
        seg = next(iter(reader))
    frames = _decoded("bikes.mp4", 48, stride=1)[seg.frame_indices]
    config = {
        **IMAGE_CONFIG,
        "size": {"shortest_edge": proc.min_pixels, "longest_edge": proc.max_pixels},
    }
    want = transformers.Qwen2VLImageProcessorPil(**config)(images=list(frames), return_tensors="np")
    got = tiny_qwen3.processor().vision_inputs(seg.pixels[None])
    np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
    assert np.abs(got["pixel_values"] - want["pixel_values"]).max() <= 1e-6


def test_video_mode_pairs_frames_into_temporal_patches(tiny_qwen3):
    """A video whose frames come in equal pairs has the patches of its even frames as images
    (the image layout, checked against transformers above); an odd count repeats the last
    frame; the grid has one temporal patch per pair; no second_per_grid_ts (times are text)."""
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((1, 3, 3, 64, 96)).astype(np.float32)
    pairs = np.repeat(frames, 2, axis=1)  # 6 frames: 3 equal pairs
    video = tiny_qwen3.processor(mode="video").vision_inputs(pairs, np.asarray([0.1]))
    images = tiny_qwen3.processor().vision_inputs(frames)
    np.testing.assert_array_equal(video["pixel_values_videos"], images["pixel_values"])
    assert video["video_grid_thw"].tolist() == [[3, 4, 6]] and set(video) == {
        "pixel_values_videos",
        "video_grid_thw",
    }
    odd = tiny_qwen3.processor(mode="video").vision_inputs(pairs[:, :5], np.asarray([0.1]))
    np.testing.assert_array_equal(odd["pixel_values_videos"], images["pixel_values"])


# --- prompts ----------------------------------------------------------------------------------


def _hf_tokenizer(bb):
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bb.processor().tokenizer)


def test_prompt_ids_follow_the_chat_template(tiny_qwen3):
    """Images: transformers' ``apply_chat_template`` with the released template (no system
    turn), each pad expanded to its grid's tokens, tokenized. Video: that text with the video
    expanded by ``Qwen3VLProcessor.replace_video_token`` (given the grid and the frames' times
    as video metadata)."""
    from transformers.video_utils import VideoMetadata

    tok = _hf_tokenizer(tiny_qwen3)
    for mode, content in (("images", [{"type": "image"}] * 3), ("video", [{"type": "video"}])):
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": PROMPT}]}]
        text = tok.apply_chat_template(
            messages, chat_template=CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        assert text == qp.chat_text(PROMPT, 3, mode) and not text.startswith("<|im_start|>system")
    text = qp.chat_text(PROMPT, 3)
    ids = tiny_qwen3.processor().prompt_ids(PROMPT, 3, (64, 96))  # 2 x 3 merged tokens a frame
    assert ids.tolist() == tok(text.replace(qp.IMAGE_PAD, qp.IMAGE_PAD * 6))["input_ids"]

    # Qwen3VLProcessor's expansion of one video (its constructor looks for torchvision's video
    # classes: its method runs on the attributes it reads), put where the template's
    # vision-start, video pad, vision-end are (its text replacement drops those markers)
    hf = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
        video_token=qp.VIDEO_PAD,
        vision_start_token=qp.VISION_START,
        vision_end_token=qp.VISION_END,
    )
    hf._calculate_timestamps = types.MethodType(Qwen3VLProcessor._calculate_timestamps, hf)
    seconds = 0.125  # 8 frames a second: 5 frames in 3 temporal patches
    meta = VideoMetadata(total_num_frames=5, fps=1 / seconds, frames_indices=np.arange(5))
    video = {"video_grid_thw": np.asarray([[3, 4, 6]]), "video_metadata": [meta]}
    expanded = Qwen3VLProcessor.replace_video_token(hf, video, 0)
    wrapper = f"{qp.VISION_START}{qp.VIDEO_PAD}{qp.VISION_END}"
    text = qp.chat_text(PROMPT, 5, "video").replace(wrapper, expanded)
    assert text.count("seconds>") == 3 and "<0.1 seconds><|vision_start|>" in text
    ids = tiny_qwen3.processor(mode="video").prompt_ids(PROMPT, 5, (64, 96), seconds)
    assert ids.tolist() == tok(text)["input_ids"]
    assert int((ids == tiny_qwen3.config.video_token_id).sum()) == 3 * 6


def test_prompts_that_do_not_fit_are_refused(tiny_qwen3):
    proc = tiny_qwen3.processor(mode="video")
    assert proc.timed and not tiny_qwen3.processor().timed
    with pytest.raises(ValueError, match="give frame_seconds"):
        proc.prompt_ids(PROMPT, 4, (64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_qwen3.processor().prompt_ids(PROMPT, 3, (56, 84))
    with pytest.raises(ValueError, match="contains <|image_pad|>"):
        tiny_qwen3.processor().prompt_ids("odd <|video_pad|>", 2, (64, 64))
    with pytest.raises(ValueError, match="takes mode only"):
        tiny_qwen3.processor(frames=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        tiny_qwen3.processor(mode="clips")
    with pytest.raises(ValueError, match="not by image_size"):
        tiny_qwen3.processor(448)


def test_processor_configs_are_read_and_checked(tiny_qwen3, tmp_path):
    """The released defaults without config files; the checkpoint's limits and cap when it has
    them; a config that normalises otherwise is refused."""
    import json

    from headhunt_jax.backbones.qwen3_vl.processor import processor

    cfg = tiny_qwen3.config
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tiny_qwen3.path / name).exists():
            (ckpt / name).write_bytes((tiny_qwen3.path / name).read_bytes())
    images, video = processor(cfg, ckpt), processor(cfg, ckpt, mode="video")
    assert (images.min_pixels, images.max_pixels) == (256 * 256, 4096 * 4096)
    assert (video.min_pixels, video.max_pixels, video.cap_frames) == (4096, 25165824, True)
    assert video.frame_size(720, 1280) == (640, 1152) and images.frame_size(720, 1280) == (
        704,
        1280,
    )
    (ckpt / "video_preprocessor_config.json").write_text(
        json.dumps({"size": VIDEO_SIZE, "cap_pixels_per_frame": False, "image_mean": [0.5] * 3})
    )
    video = processor(cfg, ckpt, mode="video")
    assert not video.cap_frames and video.frame_size(720, 1280) == (704, 1280)
    assert video.spec["cap_pixels_per_frame"] is False
    (ckpt / "preprocessor_config.json").write_text(json.dumps({"patch_size": 14}))
    with pytest.raises(ValueError, match="patch_size 14"):
        processor(cfg, ckpt)


# --- extraction and detection -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["images", "video"])
def test_extract_videos_of_two_sizes(tmp_path, tiny_qwen3, mode):
    """Two clips (other sizes in images mode; in video mode one size, other frame rates, so
    other times): a batch each; the stored features are those of ``head_features`` on the
    processor's inputs for each segment's own spacing."""
    import headhunt_jax as hh
    from headhunt_jax.extract import extract_features, frame_seconds
    from headhunt_jax.store import FeatureStore
    from headhunt_jax.video import VideoReader

    paths = _clips(tmp_path, rates=(24, 24) if mode == "images" else (10, 24))
    report = extract_features(
        tiny_qwen3,
        paths,
        PROMPT,
        tmp_path / "store",
        frames_per_segment=4,
        segment_length=48,
        batch_size=2,
        processor_options={"mode": mode},
        progress=False,
    )
    assert report.written == ("small.mp4", "wide.mp4") and report.batches == 2
    store = FeatureStore(tmp_path / "store")
    assert dict(store.spec.processor)["mode"] == mode and store.spec.image_size == 0
    proc = tiny_qwen3.processor(mode=mode)
    for path in paths:
        with VideoReader(path, frames_per_segment=4, segment_length=48, **proc.frames) as reader:
            seg = next(iter(reader))
            step = frame_seconds(seg.frame_indices, reader.fps)
        ids = proc.prompt_ids(PROMPT, 4, seg.pixels.shape[-2:], step)[None]
        vision = proc.vision_inputs(seg.pixels[None], np.asarray([step]))
        want = np.asarray(hh.head_features(tiny_qwen3, ids, **vision))[0]
        got = store.read(path.name).features[0]
        assert rel_err(got, want) <= 1e-5


def test_detector_extracts_with_the_mode_it_was_fitted_on(tmp_path, tiny_qwen3):
    from headhunt_jax import detection, fitting
    from headhunt_jax.extract import extract_features
    from headhunt_jax.store import FeatureStore

    paths = _clips(tmp_path, rates=(10, 24))
    kw = dict(frames_per_segment=4, segment_length=48, batch_size=2, progress=False)
    extract_features(
        tiny_qwen3,
        paths,
        PROMPT,
        tmp_path / "train",
        labels={"small.mp4": 0, "wide.mp4": 1},
        processor_options={"mode": "video"},
        **kw,
    )
    detector = fitting.fit(FeatureStore(tmp_path / "train"), [[1, 0], [2, 3]])
    detector.save(tmp_path / "detector")
    detector = type(detector).load(tmp_path / "detector")
    assert detector.processor_options == {"mode": "video"}
    results, failures = detection.detect(
        tiny_qwen3, detector, paths, tmp_path / "work", progress=False
    )
    assert len(results) == 2 and not failures
    work = FeatureStore(next(p for p in (tmp_path / "work").rglob("store.json")).parent)
    assert dict(work.spec.processor)["mode"] == "video"
    # streaming: segments of two frame rates in one call are scored as each alone
    from headhunt_jax.stream import SegmentScorer
    from headhunt_jax.video import Segment

    scorer = SegmentScorer(tiny_qwen3, detector, batch_size=2)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 16, 3, 32, 64)).astype(np.float32)
    segments = [
        (Segment(0, 0, 48, np.arange(1, 48, 3), p), fps)
        for p, fps in zip(pixels, (10, 30), strict=True)
    ]
    together = scorer(segments)
    alone = [scorer([s])[0] for s in segments]
    np.testing.assert_allclose(together, alone, rtol=1e-5)


@pytest.mark.slow
def test_detect_explains_video_mode_events_as_explaining_afterwards(tmp_path, tiny_qwen3):
    """detect --explain in video mode: the timestamped prompt of each segment's frame spacing,
    the scores of plain detection, and the answers of explaining afterwards."""
    from headhunt_jax import detection, explain
    from headhunt_jax.detector import Detector
    from headhunt_jax.scorer import fit_scorer
    from headhunt_jax.store import FeatureStore

    clip = _clips(tmp_path, rates=(24, 12))[1]  # wide.mp4, 12 fps
    rng = np.random.default_rng(1)
    heads = np.asarray([[1, 0], [2, 1]])
    x = rng.standard_normal((40, 2 * tiny_qwen3.head_dim)).astype(np.float32)
    detector = Detector(
        heads,
        fit_scorer(x, (x[:, 0] > 0).astype(int)),
        sigma=1.0,
        tau=0.0,  # every segment in one event
        backbone=tiny_qwen3.name,
        prompt=PROMPT,
        processor_options={"mode": "video"},
    )
    kw = dict(progress=False)
    plain, _ = detection.detect(tiny_qwen3, detector, [clip], tmp_path / "plain", **kw)
    explainer = explain.Explainer(tiny_qwen3, detector, ["What happens?"], 4)
    got, _ = detection.detect(
        tiny_qwen3, detector, [clip], tmp_path / "explained", explainer=explainer, **kw
    )
    np.testing.assert_allclose(got[0]["segment_scores"], plain[0]["segment_scores"], atol=1e-5)
    (event,) = got[0]["events"]
    again = explain.explain_events(
        tiny_qwen3, detector, plain, ["What happens?"], 4, progress=False
    )
    assert event["explanation"] == again[0]["events"][0]["explanation"]
    work = tmp_path / "explained"
    assert (
        dict(FeatureStore(next(work.rglob("store.json")).parent).spec.processor)["mode"] == "video"
    )
