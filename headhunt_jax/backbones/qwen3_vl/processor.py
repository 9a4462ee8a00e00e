"""Qwen3-VL's inputs for one segment, in either of two modes (part of the store spec):

- ``images`` (the default, the original's way): the segment's frames as that many images in one
  user turn, then the prompt, in the released chat template (no default system turn) with the
  generation prompt; each frame resized (Pillow bicubic) to ``smart_resize`` of the video's own
  size, factor 32, between the image processor's ``min_pixels`` and ``max_pixels`` (the
  checkpoint's ``preprocessor_config.json``; released: 256 x 256 and 4096 x 4096), one temporal
  patch a frame (the frame twice). 16 frames at 320 x 240: 256 x 320 px, 80 tokens a frame,
  1,280 vision tokens; at 1280 x 720: 704 x 1280 px, 880 a frame, 14,080.
- ``video``: the frames as one video, two frames a temporal patch, each patch's run of video
  tokens after its time as ``Qwen3VLProcessor`` writes it (``<0.1 seconds>``): the frames'
  times from the seconds between them, the segment's first sampled frame at 0 s (the segment
  as a clip of its own, as Qwen2.5-VL's video mode places it in time). Frames are resized by
  the video processor's limits on the whole segment (``video_preprocessor_config.json``;
  released: 4096 and 768 x 32^3 pixels), each frame capped at 768 tokens' worth as
  qwen-vl-utils does (``processor_pixels``). 16 frames at 320 x 240: 256 x 320 px, 8 x 80 =
  640 tokens; at 1280 x 720: 640 x 1152 px, 8 x 720 = 5,760.

Pixels are rescaled by 1/255 and normalised with mean and std 0.5, in Qwen2.5-VL's patch layout
(``qwen2_5_vl.processor_pixels``) with patch 16. Every video is processed at its own size: one
compilation per distinct size. In video mode the prompt holds the frames' times, so segments of
another frame spacing take other input_ids (``timed``).
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

import headhunt_jax.backbones.qwen2_5_vl.processor_pixels as qpp
import headhunt_jax.backbones.qwen3_vl.processor_pixels as pp
from headhunt_jax import files
from headhunt_jax.backbones.qwen2_5_vl.processor import (
    IMAGE_PAD,
    MODES,
    VIDEO_PAD,
    check_options,
    check_tokenizer,
    pixel_limits,
)
from headhunt_jax.backbones.qwen3_vl.config import Qwen3VLConfig
from headhunt_jax.models.tokenizer import load_tokenizer

TEMPLATE_NAME = "qwen3-vl"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
# The frames a segment (the method's F) for the video processor's limits on a whole video;
# with the per-frame cap a frame's size is the same for any even count from 4 to 32.
SEGMENT_FRAMES = 16


def chat_text(prompt: str, num_frames: int, mode: str = "images") -> str:
    """The released chat template rendered for one user turn (``num_frames`` images, or one
    video, then the prompt) with the generation prompt; each pad token not yet expanded."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pad = IMAGE_PAD if mode == "images" else VIDEO_PAD
    vision = f"{VISION_START}{pad}{VISION_END}" * (num_frames if mode == "images" else 1)
    return f"<|im_start|>user\n{vision}{prompt}<|im_end|>\n<|im_start|>assistant\n"


def video_text(times: list[str], tokens: int) -> str:
    """A video's placeholder text as ``Qwen3VLProcessor`` expands the template's one: each
    temporal patch's time, then its ``tokens`` video pads between the vision markers."""
    return "".join(f"{t}{VISION_START}{VIDEO_PAD * tokens}{VISION_END}" for t in times)


def _video_cap(checkpoint_dir) -> bool:
    """Whether the video processor caps each frame's pixels (``cap_pixels_per_frame``; the
    reference's way when the checkpoint does not say)."""
    file = Path(checkpoint_dir) / "video_preprocessor_config.json"
    if checkpoint_dir is None or not file.exists():
        return True
    d = files.read_json(file, "a processor config")
    tokens = d.get("max_video_tokens", pp.MAX_VIDEO_TOKENS)
    if tokens != pp.MAX_VIDEO_TOKENS:
        raise ValueError(f"{file}: unsupported max_video_tokens {tokens} (expected 768)")
    return bool(d.get("cap_pixels_per_frame", True))


@dataclasses.dataclass(frozen=True)
class Qwen3VLProcessor:
    """The family's ``Processor`` (see the module docstring for the two modes)."""

    cfg: Qwen3VLConfig
    tokenizer: Any
    mode: str = "images"
    min_pixels: int = pp.IMAGE_MIN_PIXELS
    max_pixels: int = pp.IMAGE_MAX_PIXELS
    cap_frames: bool = True  # video mode: each frame's pixels capped (processor_pixels)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Qwen3-VL mode must be one of {MODES}, got {self.mode!r}")
        check_tokenizer(self.tokenizer, self.cfg)

    @property
    def timed(self) -> bool:
        """Whether input_ids depend on the seconds between frames (video mode's timestamps)."""
        return self.mode == "video"

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """The size every frame of a ``height`` x ``width`` video is resized to."""
        v = self.cfg.vision
        if self.mode == "images":
            return qpp.smart_resize(height, width, v.factor, self.min_pixels, self.max_pixels)
        return pp.video_frame_size(
            v, SEGMENT_FRAMES, height, width, self.min_pixels, self.max_pixels, self.cap_frames
        )

    @property
    def frames(self) -> dict:
        return {"image_size": self.frame_size, "mean": pp.MEAN, "std": pp.STD}

    @property
    def spec(self) -> dict:
        spec = {
            "mode": self.mode,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "factor": self.cfg.vision.factor,
            "mean": pp.MEAN,
            "std": pp.STD,
            "template": TEMPLATE_NAME,
        }
        if self.mode == "video":
            spec["cap_pixels_per_frame"] = self.cap_frames
        return spec

    def _grid(self, num_frames: int, size) -> tuple[int, int, int]:
        v = self.cfg.vision
        h, w = size
        if h % v.factor or w % v.factor:
            raise ValueError(f"frames of {h} x {w} px: both sides must be multiples of {v.factor}")
        t = 1 if self.mode == "images" else -(-num_frames // v.temporal_patch_size)
        return t, h // v.patch_size, w // v.patch_size

    def prompt_ids(self, prompt: str, num_frames: int, size=None, frame_seconds=None) -> np.ndarray:
        """input_ids [T] int32 of ``chat_text`` with each pad expanded to its grid's tokens
        (video mode: a run a temporal patch, after its time); ``size``: the processed frames'
        (height, width); ``frame_seconds`` (video mode): the seconds between sampled frames."""
        if num_frames < 1:
            raise ValueError(f"a segment needs at least one frame, got {num_frames}")
        if size is None:
            raise ValueError("Qwen3-VL prompts depend on the frame size: give size=(h, w)")
        t, h, w = self._grid(num_frames, size)
        n = h * w // self.cfg.vision.merge_unit
        text = chat_text(prompt, num_frames, self.mode)
        if self.mode == "images":
            text = text.replace(IMAGE_PAD, IMAGE_PAD * n)
            token, count = self.cfg.image_token_id, n * num_frames
        else:
            if frame_seconds is None:
                raise ValueError(
                    "Qwen3-VL's video prompts write the frames' times: give frame_seconds"
                )
            times = pp.timestamps(
                num_frames, float(frame_seconds), self.cfg.vision.temporal_patch_size
            )
            text = text.replace(f"{VISION_START}{VIDEO_PAD}{VISION_END}", video_text(times, n))
            token, count = self.cfg.video_token_id, n * t
        ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)
        pads = np.isin(ids, (self.cfg.image_token_id, self.cfg.video_token_id))
        if int((ids == token).sum()) != count or pads.sum() != count:
            raise ValueError("the prompt text itself contains <|image_pad|> or <|video_pad|>")
        return ids

    def vision_inputs(self, pixels: np.ndarray, frame_seconds=None) -> dict[str, np.ndarray]:
        """Normalised segments [B, F, 3, H, W] -> the HF keyword inputs: every frame one image
        (``pixel_values``, ``image_grid_thw``), or every segment one video
        (``pixel_values_videos``, ``video_grid_thw``; its times are in the prompt)."""
        b, f = pixels.shape[:2]
        v = self.cfg.vision
        grid = np.asarray(self._grid(f, pixels.shape[-2:]), np.int64)
        if self.mode == "images":
            rows = [qpp.patchify(v, frame) for frame in pixels.reshape(-1, *pixels.shape[2:])]
            return {
                "pixel_values": np.concatenate(rows),
                "image_grid_thw": np.tile(grid, (b * f, 1)),
            }
        rows = [qpp.patchify_video(v, segment) for segment in pixels]
        return {
            "pixel_values_videos": np.concatenate(rows),
            "video_grid_thw": np.tile(grid, (b, 1)),
        }


def processor(cfg: Qwen3VLConfig, checkpoint_dir, image_size=None, mode="images", **options):
    """The processor of a checkpoint directory; ``mode``: 'images' or 'video'."""
    check_options("Qwen3-VL", image_size, mode, options)
    norm = {"patch_size": cfg.vision.patch_size, "mean": pp.MEAN, "std": pp.STD}
    tokenizer = load_tokenizer(checkpoint_dir)
    if mode == "images":
        limits = (pp.IMAGE_MIN_PIXELS, pp.IMAGE_MAX_PIXELS)
        limits = pixel_limits(checkpoint_dir, "preprocessor_config.json", limits, **norm)
        return Qwen3VLProcessor(cfg, tokenizer, mode, *limits)
    limits = (pp.VIDEO_MIN_PIXELS, pp.VIDEO_MAX_PIXELS)
    limits = pixel_limits(checkpoint_dir, "video_preprocessor_config.json", limits, **norm)
    return Qwen3VLProcessor(cfg, tokenizer, mode, *limits, _video_cap(checkpoint_dir))
