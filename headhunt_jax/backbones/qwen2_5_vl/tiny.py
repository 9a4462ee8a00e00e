"""A tiny Qwen2.5-VL backbone with fixed-seed random weights and a small byte-level BPE
tokenizer, for the demo and the tests: the pipeline runs for real, the weights are not."""

import json
from pathlib import Path

from headhunt_jax import files
from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VisionConfig, Qwen25VLConfig
from headhunt_jax.backbones.qwen2_5_vl.processor import (
    IMAGE_PAD,
    SPECIAL_TOKENS,
    VIDEO_PAD,
    chat_text,
)
from headhunt_jax.models.decoder import tiny_decoder
from headhunt_jax.models.tokenizer import tiny_tokenizer

# 16 merged tokens a frame at most (a 4:3 frame: 112 x 140 px, 4 x 5 tokens... rounded down)
TINY_MAX_PIXELS = 16 * 28 * 28


def tiny_backbone(out_dir, prompts, image_size=None, seed: int = 0) -> Path:
    """Writes a tiny Qwen2.5-VL-architecture backbone (windowed tower with a full-attention
    block, patch merger, Qwen2 with M-RoPE; random weights, fixed seed) to ``out_dir`` as a
    converted checkpoint with its tokenizer and a ``preprocessor_config.json`` that keeps frames
    small (at most 16 tokens each); returns the directory. ``image_size`` is unused (frames keep
    their aspect)."""
    from headhunt_jax import backbone

    out_dir = Path(out_dir)
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
    model = backbone.make_model(cfg)
    params = backbone.random_params(model, seed)
    bb = backbone.Backbone(model, params, "tiny-qwen2.5-vl-random")
    backbone.save_converted(bb, out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    files.write_manifest(out_dir)  # the tokenizer too, not only what save_converted wrote
    limits = {"min_pixels": 4 * 28 * 28, "max_pixels": TINY_MAX_PIXELS}
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        (out_dir / name).write_text(json.dumps(limits, indent=2))
    return out_dir
