"""A tiny LLaVA-OneVision backbone for the demo and the tests: a small config and a small
byte-level BPE tokenizer (``tiny_checkpoints`` gives them fixed-seed random weights): the
pipeline runs for real, the weights are not."""

from headhunt_jax.backbones.llava_onevision.config import LlavaOnevisionConfig, SiglipConfig
from headhunt_jax.backbones.llava_onevision.processor import VIDEO_TOKEN, chat_text
from headhunt_jax.backbones.registry import TinyBackbone
from headhunt_jax.models.decoder import tiny_decoder
from headhunt_jax.models.tokenizer import tiny_tokenizer

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<image>", VIDEO_TOKEN)


def tiny_backbone(prompts, image_size: int = 112) -> TinyBackbone:
    """A tiny LLaVA-OneVision-architecture backbone (SigLIP, projector, 2x2 pooling and newline,
    Qwen2) with a tokenizer for ``prompts``."""
    tok = tiny_tokenizer([chat_text(p) for p in prompts], SPECIAL_TOKENS)
    cfg = LlavaOnevisionConfig(
        vision=SiglipConfig(
            hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=image_size
        ),
        text=tiny_decoder(tok.get_vocab_size()),
        image_token_id=tok.token_to_id("<image>"),
        video_token_id=tok.token_to_id(VIDEO_TOKEN),
    )
    return TinyBackbone(cfg, tok, "tiny-llava-onevision-random")
