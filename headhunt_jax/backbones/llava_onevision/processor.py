"""LLaVA-OneVision's inputs for one segment, as ``LlavaOnevisionProcessor`` builds them for a
video: the chat template's single user turn (the ``<video>`` placeholder, then the prompt) with
the generation prompt, the placeholder expanded to ``video_tokens(F)`` ids, and every frame
resized to the base resolution (bicubic, whole frame, aspect ratio not kept), scaled by 1/255
and normalised (mean = std = 0.5 for the released checkpoints).

Pixels: transformers' video processor resizes with torchvision (on CPU, torch's native uint8
antialiased bicubic); this module resizes with Pillow's bicubic, as transformers' PIL image
processor and ``headhunt_jax.video.VideoReader`` do. The two resizes agree to within a level or
two of 255 on some pixels (torch's uint8 kernel rounds between its two passes differently).
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headhunt_jax import files
from headhunt_jax.backbones.llava_onevision.config import PRESETS, LlavaOnevisionConfig
from headhunt_jax.errors import InputError
from headhunt_jax.models.tokenizer import load_tokenizer

VIDEO_TOKEN = "<video>"
TEMPLATE_NAME = "llava-onevision-qwen2"
# The chat template of the llava-hf LLaVA-OneVision checkpoints (transformers'
# convert_llava_onevision_weights_to_hf.py writes it into the processor); ``chat_text`` renders
# its one-user-turn case.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
_DEFAULT_CFG = PRESETS["llava-onevision-qwen2-0.5b-ov"]  # every release: 384 px, 196 tokens


def chat_text(prompt: str) -> str:
    """``CHAT_TEMPLATE`` rendered for one user turn [video, text] with the generation prompt."""
    return f"<|im_start|>user\n{VIDEO_TOKEN}\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def prompt_ids(
    tokenizer, prompt: str, num_frames: int, cfg: LlavaOnevisionConfig = _DEFAULT_CFG
) -> np.ndarray:
    """input_ids [T] int32: ``chat_text(prompt)`` with its ``<video>`` expanded to
    ``cfg.video_tokens(num_frames)`` video tokens. ``tokenizer``: a ``tokenizers.Tokenizer`` or
    a path for ``load_tokenizer``; it must map ``<video>`` to ``cfg.video_token_id``."""
    if isinstance(tokenizer, str | Path):
        tokenizer = load_tokenizer(tokenizer)
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    for token in ("<|im_start|>", "<|im_end|>", VIDEO_TOKEN):
        if tokenizer.token_to_id(token) is None:
            raise ValueError(f"the tokenizer has no {token} token: not a LLaVA-OneVision tokenizer")
    video_id = tokenizer.token_to_id(VIDEO_TOKEN)
    if video_id != cfg.video_token_id:
        raise ValueError(
            f"the tokenizer maps {VIDEO_TOKEN} to {video_id}, the backbone expects "
            f"{cfg.video_token_id}"
        )
    n = cfg.video_tokens(num_frames)
    text = chat_text(prompt).replace(VIDEO_TOKEN, VIDEO_TOKEN * n, 1)
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int32)
    if int((ids == video_id).sum()) != n or (ids == cfg.image_token_id).any():
        raise ValueError("the prompt text itself contains <video> or <image> tokens")
    return ids


def preprocess_frames(frames: np.ndarray, image_size: int = 384, mean=MEAN, std=STD) -> np.ndarray:
    """Decoded frames uint8 [F, H, W, 3] -> float32 [F, 3, S, S]: each whole frame resized to
    S x S (Pillow bicubic), then ``(level / 255 - mean) / std`` in float32."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 [F, H, W, 3] (RGB), got {frames.dtype} {frames.shape}"
        )
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    table = (levels[None] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[
        :, None
    ]
    out = np.empty((len(frames), 3, image_size, image_size), np.float32)
    for i, frame in enumerate(frames):
        tile = np.asarray(
            Image.fromarray(frame).resize((image_size, image_size), Image.Resampling.BICUBIC)
        )
        for c in range(3):
            out[i, c] = table[c][tile[..., c]]
    return out


def process(
    frames: np.ndarray,
    prompt: str,
    tokenizer,
    cfg: LlavaOnevisionConfig = _DEFAULT_CFG,
    mean=MEAN,
    std=STD,
) -> dict[str, Any]:
    """One segment's decoded frames uint8 [F, H, W, 3] and a prompt -> ``input_ids`` int32 [T],
    ``pixel_values_videos`` float32 [1, F, 3, S, S] and ``spec`` (what to store with the
    features)."""
    pixels = preprocess_frames(frames, cfg.image_size, mean, std)
    return {
        "input_ids": prompt_ids(tokenizer, prompt, len(pixels), cfg),
        "pixel_values_videos": pixels[None],
        "spec": {**_spec(cfg, mean, std), "frames": len(pixels)},
    }


def _spec(cfg, mean, std) -> dict:
    return {
        "image_size": cfg.image_size,
        "mean": tuple(mean),
        "std": tuple(std),
        "tokens_per_frame": cfg.tokens_per_frame,
        "template": TEMPLATE_NAME,
    }


def read_video_processor_config(checkpoint_dir, cfg: LlavaOnevisionConfig) -> tuple:
    """(mean, std) from the checkpoint's ``video_preprocessor_config.json`` (or
    ``preprocessor_config.json``), defaults when it has neither; refuses a processor config
    that does something else (another size, resample, crop or rescale factor)."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        file = Path(checkpoint_dir) / name
        if file.exists():
            break
    else:
        return MEAN, STD
    d = files.read_json(file, "a processor config")
    s = cfg.image_size
    size = d.get("size", {"height": s, "width": s})
    problems = []
    if size != {"height": s, "width": s} or not d.get("do_resize", True):
        problems.append(f"size {size} (expected {s} x {s})")
    if d.get("resample", 3) != 3:
        problems.append(f"resample {d['resample']} (expected 3, bicubic)")
    if d.get("do_center_crop"):
        problems.append("a center crop")
    if abs(d.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12 or not d.get("do_rescale", True):
        problems.append(f"rescale_factor {d.get('rescale_factor')} (expected 1/255)")
    if problems:
        raise ValueError(f"{file}: unsupported preprocessing: {', '.join(problems)}")
    if not d.get("do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return tuple(d.get("image_mean", MEAN)), tuple(d.get("image_std", STD))


@dataclasses.dataclass(frozen=True)
class OnevisionProcessor:
    """The family's ``Processor``: frames as ``VideoReader`` prepares them (``frames``), prompt
    ids, and the segments' pixels as ``pixel_values_videos``."""

    cfg: LlavaOnevisionConfig
    tokenizer: Any
    mean: tuple = MEAN
    std: tuple = STD

    timed = False  # the prompt does not write the frames' times

    @property
    def frames(self) -> dict:
        return {"image_size": self.cfg.image_size, "mean": self.mean, "std": self.std}

    @property
    def spec(self) -> dict:
        return _spec(self.cfg, self.mean, self.std)

    def prompt_ids(self, prompt: str, num_frames: int, size=None, frame_seconds=None) -> np.ndarray:
        return prompt_ids(self.tokenizer, prompt, num_frames, self.cfg)

    def vision_inputs(self, pixels: np.ndarray, frame_seconds=None) -> dict[str, np.ndarray]:
        """[B, F, 3, S, S] -> ``pixel_values_videos``: every segment one video."""
        return {"pixel_values_videos": pixels}


def processor(cfg: LlavaOnevisionConfig, checkpoint_dir, image_size: int | None = None, **options):
    if options:
        raise InputError(f"LLaVA-OneVision's processor has no options (got {', '.join(options)})")
    if image_size not in (None, cfg.image_size):
        raise ValueError(
            f"LLaVA-OneVision takes frames at {cfg.image_size} px only (SigLIP's position "
            f"embeddings are not interpolated), not {image_size}"
        )
    mean, std = read_video_processor_config(checkpoint_dir, cfg)
    return OnevisionProcessor(cfg, load_tokenizer(checkpoint_dir), mean, std)
