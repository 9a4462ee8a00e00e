"""A tiny Qwen2.5-VL backbone for the demo and the tests: a small config and a small byte-level
BPE tokenizer (``tiny_checkpoints`` gives them fixed-seed random weights): the pipeline runs for
real, the weights are not."""

import json

from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VisionConfig, Qwen25VLConfig
from headhunt_jax.backbones.qwen2_5_vl.processor import (
    IMAGE_PAD,
    SPECIAL_TOKENS,
    VIDEO_PAD,
    chat_text,
)
from headhunt_jax.backbones.registry import TinyBackbone
from headhunt_jax.models.decoder import tiny_decoder
from headhunt_jax.models.tokenizer import tiny_tokenizer

# 16 merged tokens a frame at most (a 4:3 frame: 112 x 140 px, 4 x 5 tokens... rounded down)
TINY_MAX_PIXELS = 16 * 28 * 28


def tiny_backbone(prompts, image_size=None) -> TinyBackbone:
    """A tiny Qwen2.5-VL-architecture backbone (windowed tower with a full-attention block,
    patch merger, Qwen2 with M-RoPE) with a tokenizer for ``prompts`` and a
    ``preprocessor_config.json`` that keeps frames small (at most 16 tokens each).
    ``image_size`` is unused (frames keep their aspect)."""
    corpus = [chat_text(p, 1, mode) for p in prompts for mode in ("images", "video")]
    tok = tiny_tokenizer(corpus, (*SPECIAL_TOKENS, IMAGE_PAD, VIDEO_PAD))
    cfg = Qwen25VLConfig(
        vision=Qwen25VisionConfig(
            depth=2,
            hidden_size=64,
            intermediate_size=96,
            num_heads=4,
            window_size=56,  # 2 x 2 merged tokens
            fullatt_block_indexes=(1,),
            out_hidden_size=128,
        ),
        text=tiny_decoder(tok.get_vocab_size(), mrope_section=(8, 4, 4)),
        image_token_id=tok.token_to_id(IMAGE_PAD),
        video_token_id=tok.token_to_id(VIDEO_PAD),
        vision_start_token_id=tok.token_to_id("<|vision_start|>"),
        vision_end_token_id=tok.token_to_id("<|vision_end|>"),
    )
    limits = json.dumps({"min_pixels": 4 * 28 * 28, "max_pixels": TINY_MAX_PIXELS}, indent=2)
    files = {
        name: limits for name in ("preprocessor_config.json", "video_preprocessor_config.json")
    }
    return TinyBackbone(cfg, tok, "tiny-qwen2.5-vl-random", files)
