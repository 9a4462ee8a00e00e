"""Qwen2.5-VL's inputs for one segment, in either of two modes (part of the store spec):

- ``images`` (the default, the original's way): the segment's frames as that many images in one
  user turn, then the prompt, in the checkpoint's chat template with its default system turn and
  the generation prompt; each frame resized (Pillow bicubic) to ``smart_resize`` of the video's
  own size between ``min_pixels`` and ``max_pixels`` (the image processor's, from the
  checkpoint's ``preprocessor_config.json``), one temporal patch a frame (the frame twice).
  16 frames at 320 x 240: 252 x 308 px, 99 tokens a frame, 1,584 vision tokens; at 1280 x 720:
  728 x 1288 px, 1,196 a frame, 19,136.
- ``video``: the frames as one video, two frames a temporal patch, resized between the video
  processor's ``min_pixels`` and ``max_pixels`` (``video_preprocessor_config.json``; defaults
  128 and 768 tokens' worth), ``second_per_grid_ts`` = 2 x the seconds between sampled frames.
  16 frames at 320 x 240: 280 x 392 px, 8 x 140 = 1,120 tokens; at 1280 x 720: 560 x 1008 px,
  8 x 720 = 5,760.

Pixels are rescaled by 1/255 and normalised with the OpenAI CLIP statistics. transformers' video
processor resizes with torchvision; this module resizes videos as its image processor does, with
Pillow (``VideoReader``); the patch layout is the video processor's (``patchify_video``).
Every video is processed at its own size: one compilation per distinct size.
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

import headhunt_jax.backbones.qwen2_5_vl.processor_pixels as pp
from headhunt_jax import files
from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VLConfig
from headhunt_jax.errors import InputError
from headhunt_jax.models.tokenizer import load_tokenizer

MODES = ("images", "video")
TEMPLATE_NAME = "qwen2-vl"
# The chat template of the released Qwen2.5-VL checkpoints (chat_template.json); ``chat_text``
# renders its one-user-turn case.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28


def chat_text(prompt: str, num_frames: int, mode: str = "images") -> str:
    """``CHAT_TEMPLATE`` rendered for one user turn (``num_frames`` images, or one video, then
    the prompt) with the generation prompt; each pad token not yet expanded."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pad = IMAGE_PAD if mode == "images" else VIDEO_PAD
    vision = f"<|vision_start|>{pad}<|vision_end|>" * (num_frames if mode == "images" else 1)
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{vision}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


def pixel_limits(
    checkpoint_dir,
    name: str,
    default: tuple[int, int],
    patch_size: int = 14,
    mean=pp.OPENAI_CLIP_MEAN,
    std=pp.OPENAI_CLIP_STD,
) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a processor config file (either spelling), defaults when the
    checkpoint has none; refuses one that resizes or normalises otherwise (bicubic, 1/255,
    ``patch_size``, merge 2, temporal patch 2, ``mean`` and ``std``)."""
    file = Path(checkpoint_dir) / name
    if checkpoint_dir is None or not file.exists():
        return default
    d = files.read_json(file, "a processor config")
    size = d.get("size") or {}
    low = d.get("min_pixels", size.get("shortest_edge", default[0]))
    high = d.get("max_pixels", size.get("longest_edge", default[1]))
    problems = []
    if d.get("resample", 3) != 3:
        problems.append(f"resample {d['resample']} (expected 3, bicubic)")
    if abs(d.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        problems.append(f"rescale_factor {d['rescale_factor']} (expected 1/255)")
    for key, want in (("patch_size", patch_size), ("merge_size", 2), ("temporal_patch_size", 2)):
        if key in d and d[key] != want:
            problems.append(f"{key} {d[key]} (expected {want})")
    for key, want in (("image_mean", mean), ("image_std", std)):
        if key in d and not np.allclose(d[key], want, atol=1e-7):
            problems.append(f"{key} {d[key]}")
    if problems:
        raise ValueError(f"{file}: unsupported preprocessing: {', '.join(problems)}")
    return int(low), int(high)


def check_tokenizer(tokenizer, cfg) -> None:
    """Refuses a tokenizer whose vision tokens are not the config's (another checkpoint's)."""
    for token, want in (
        (IMAGE_PAD, cfg.image_token_id),
        (VIDEO_PAD, cfg.video_token_id),
        ("<|vision_start|>", cfg.vision_start_token_id),
    ):
        got = tokenizer.token_to_id(token)
        if got != want:
            raise ValueError(
                f"the tokenizer maps {token} to {got}, the backbone expects {want}: not this "
                "checkpoint's tokenizer"
            )


@dataclasses.dataclass(frozen=True)
class QwenProcessor:
    """The family's ``Processor`` (see the module docstring for the two modes)."""

    cfg: Qwen25VLConfig
    tokenizer: Any
    mode: str = "images"
    min_pixels: int = pp.MIN_PIXELS
    max_pixels: int = pp.MAX_PIXELS

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Qwen2.5-VL mode must be one of {MODES}, got {self.mode!r}")
        check_tokenizer(self.tokenizer, self.cfg)

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """The size every frame of a ``height`` x ``width`` video is resized to."""
        return pp.smart_resize(
            height, width, self.cfg.vision.factor, self.min_pixels, self.max_pixels
        )

    timed = False  # the prompt does not write the frames' times

    @property
    def frames(self) -> dict:
        return {
            "image_size": self.frame_size,
            "mean": pp.OPENAI_CLIP_MEAN,
            "std": pp.OPENAI_CLIP_STD,
        }

    @property
    def spec(self) -> dict:
        return {
            "mode": self.mode,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "factor": self.cfg.vision.factor,
            "mean": pp.OPENAI_CLIP_MEAN,
            "std": pp.OPENAI_CLIP_STD,
            "template": TEMPLATE_NAME,
        }

    def _grid(self, num_frames: int, size) -> tuple[int, int, int]:
        v = self.cfg.vision
        h, w = size
        if h % v.factor or w % v.factor:
            raise ValueError(f"frames of {h} x {w} px: both sides must be multiples of {v.factor}")
        t = 1 if self.mode == "images" else -(-num_frames // v.temporal_patch_size)
        return t, h // v.patch_size, w // v.patch_size

    def prompt_ids(self, prompt: str, num_frames: int, size=None, frame_seconds=None) -> np.ndarray:
        """input_ids [T] int32 of ``chat_text`` with each pad expanded to its grid's tokens;
        ``size``: the processed frames' (height, width)."""
        if num_frames < 1:
            raise ValueError(f"a segment needs at least one frame, got {num_frames}")
        if size is None:
            raise ValueError("Qwen2.5-VL prompts depend on the frame size: give size=(h, w)")
        t, h, w = self._grid(num_frames, size)
        n = t * h * w // self.cfg.vision.merge_unit
        pad = IMAGE_PAD if self.mode == "images" else VIDEO_PAD
        text = chat_text(prompt, num_frames, self.mode).replace(pad, pad * n)
        ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)
        frames = num_frames if self.mode == "images" else 1
        token = self.cfg.image_token_id if self.mode == "images" else self.cfg.video_token_id
        other = self.cfg.video_token_id if self.mode == "images" else self.cfg.image_token_id
        if int((ids == token).sum()) != n * frames or (ids == other).any():
            raise ValueError("the prompt text itself contains <|image_pad|> or <|video_pad|>")
        return ids

    def vision_inputs(self, pixels: np.ndarray, frame_seconds=None) -> dict[str, np.ndarray]:
        """Normalised segments [B, F, 3, H, W] -> the HF keyword inputs: every frame one image
        (``pixel_values``, ``image_grid_thw``), or every segment one video
        (``pixel_values_videos``, ``video_grid_thw``, ``second_per_grid_ts`` from
        ``frame_seconds`` [B], the seconds between a segment's sampled frames)."""
        b, f = pixels.shape[:2]
        v = self.cfg.vision
        grid = self._grid(f, pixels.shape[-2:])
        if self.mode == "images":
            rows = [pp.patchify(v, frame) for frame in pixels.reshape(-1, *pixels.shape[2:])]
            return {
                "pixel_values": np.concatenate(rows),
                "image_grid_thw": np.tile(np.asarray(grid, np.int64), (b * f, 1)),
            }
        if frame_seconds is None:
            raise ValueError("video mode needs the seconds between sampled frames")
        rows = [pp.patchify_video(v, segment) for segment in pixels]
        seconds = np.asarray(frame_seconds, np.float32).reshape(b) * v.temporal_patch_size
        return {
            "pixel_values_videos": np.concatenate(rows),
            "video_grid_thw": np.tile(np.asarray(grid, np.int64), (b, 1)),
            "second_per_grid_ts": seconds,
        }


def check_options(name: str, image_size, mode: str, options: dict) -> None:
    """Refuses what a Qwen processor (``name``) does not take: options besides ``mode``, another
    mode, an ``image_size`` (each video keeps its own resolution)."""
    if options:
        raise InputError(f"{name}'s processor takes mode only, not {', '.join(options)}")
    if mode not in MODES:
        raise InputError(f"{name}'s processor mode must be one of {', '.join(MODES)}, got {mode!r}")
    if image_size is not None:
        raise ValueError(
            f"{name} sizes each video by its own resolution (min_pixels / max_pixels in the "
            "checkpoint's preprocessor_config.json), not by image_size"
        )


def processor(cfg: Qwen25VLConfig, checkpoint_dir, image_size=None, mode="images", **options):
    """The processor of a checkpoint directory; ``mode``: 'images' or 'video'."""
    check_options("Qwen2.5-VL", image_size, mode, options)
    if mode == "images":
        limits = pixel_limits(
            checkpoint_dir, "preprocessor_config.json", (pp.MIN_PIXELS, pp.MAX_PIXELS)
        )
    else:
        limits = pixel_limits(
            checkpoint_dir, "video_preprocessor_config.json", (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
        )
    return QwenProcessor(cfg, load_tokenizer(checkpoint_dir), mode, *limits)
