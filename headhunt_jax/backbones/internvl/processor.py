"""InternVL's inputs for a segment: each frame one ``image_size`` tile (bicubic, ImageNet
statistics), the prompt in the token sequence InternVL's ``chat()`` builds (``prompt.py``)."""

import dataclasses
from typing import Any

import numpy as np

from headhunt_jax.backbones.internvl.config import InternVLConfig
from headhunt_jax.backbones.internvl.prompt import build_prompt_ids
from headhunt_jax.errors import InputError
from headhunt_jax.models.tokenizer import load_tokenizer
from headhunt_jax.video import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class InternVLProcessor:
    cfg: InternVLConfig
    tokenizer: Any
    image_size: int
    timed = False  # the prompt does not write the frames' times

    @property
    def tokens_per_frame(self) -> int:
        return self.cfg.image_tokens(self.image_size)

    @property
    def frames(self) -> dict:
        return {"image_size": self.image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    @property
    def spec(self) -> dict:
        return {**self.frames, "tokens_per_frame": self.tokens_per_frame, "template": "internvl2_5"}

    def prompt_ids(self, prompt: str, num_frames: int, size=None, frame_seconds=None) -> np.ndarray:
        return build_prompt_ids(
            self.tokenizer, prompt, num_frames, self.tokens_per_frame, self.cfg.image_token_id
        )

    def vision_inputs(self, pixels: np.ndarray, frame_seconds=None) -> dict[str, np.ndarray]:
        """[B, F, 3, S, S] -> ``pixel_values`` [B * F, 3, S, S]: every frame one image."""
        return {"pixel_values": pixels.reshape(-1, *pixels.shape[2:])}


def processor(cfg: InternVLConfig, checkpoint_dir, image_size: int | None = None, **options):
    if options:
        raise InputError(f"InternVL's processor has no options (got {', '.join(options)})")
    return InternVLProcessor(
        cfg, load_tokenizer(checkpoint_dir), image_size or cfg.vision.image_size
    )
