"""A tiny Qwen3-VL backbone for the demo and the tests: a small config and a small byte-level
BPE tokenizer (``tiny_checkpoints`` gives them fixed-seed random weights): the pipeline runs for
real, the weights are not."""

import json

from headhunt_jax.backbones.qwen3_vl.config import (
    Qwen3VLConfig,
    Qwen3VLVisionConfig,
    interleaved_sections,
)
from headhunt_jax.backbones.registry import TinyBackbone
from headhunt_jax.models.decoder import tiny_decoder
from headhunt_jax.models.tokenizer import tiny_tokenizer

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")

# 16 merged tokens a frame at most (patch 16, merge 2: 32 px a merged token)
TINY_MAX_PIXELS = 16 * 32 * 32
TINY_MIN_PIXELS = 4 * 32 * 32


def _corpus(prompt: str) -> list[str]:
    """Text like the chat turns the tokenizer will see: frames as images, and as a video with
    a timestamp before each temporal patch."""
    frame = "<|vision_start|><|image_pad|><|vision_end|>"
    video = "".join(
        f"<{t:.1f} seconds><|vision_start|><|video_pad|><|vision_end|>" for t in (0, 1.5)
    )
    return [
        f"<|im_start|>user\n{vision}{prompt}<|im_end|>\n<|im_start|>assistant\n"
        for vision in (frame * 2, video)
    ]


def tiny_backbone(prompts, image_size=None) -> TinyBackbone:
    """A tiny Qwen3-VL-architecture backbone (a 3-block tower with a 4 x 4 position table and two
    DeepStack levels, patch merger, Qwen3 with interleaved M-RoPE) with a tokenizer for
    ``prompts`` and image and video ``preprocessor_config.json`` files that keep frames small (at
    most 16 tokens each). ``image_size`` is unused (frames keep their aspect)."""
    corpus = [text for p in prompts for text in _corpus(p)]
    tok = tiny_tokenizer(corpus, (*SPECIAL_TOKENS, IMAGE_PAD, VIDEO_PAD))
    cfg = Qwen3VLConfig(
        vision=Qwen3VLVisionConfig(
            depth=3,
            hidden_size=64,
            intermediate_size=96,
            num_heads=4,
            out_hidden_size=128,
            num_position_embeddings=16,
            deepstack_visual_indexes=(0, 1),
        ),
        text=tiny_decoder(
            tok.get_vocab_size(),
            attention_bias=False,
            qk_norm=True,
            rope_theta=5_000_000.0,
            mrope_section=interleaved_sections((6, 5, 5), 16),  # head_dim 32
        ),
        image_token_id=tok.token_to_id(IMAGE_PAD),
        video_token_id=tok.token_to_id(VIDEO_PAD),
        vision_start_token_id=tok.token_to_id("<|vision_start|>"),
        vision_end_token_id=tok.token_to_id("<|vision_end|>"),
    )
    limits = {
        "min_pixels": TINY_MIN_PIXELS,
        "max_pixels": TINY_MAX_PIXELS,
        "size": {"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS},
    }
    text = json.dumps(limits, indent=2)
    files = {name: text for name in ("preprocessor_config.json", "video_preprocessor_config.json")}
    return TinyBackbone(cfg, tok, "tiny-qwen3-vl-random", files)
