"""Tiny InternVL backbones for the demo and the tests: a small config and a small byte-level BPE
tokenizer (``tiny_checkpoints`` gives them fixed-seed random weights): the pipeline runs for
real, the weights are not."""

from headhunt_jax.backbones.internvl.config import InternVLConfig, VisionConfig
from headhunt_jax.backbones.internvl.prompt import IMG_CONTEXT, IMG_END, IMG_START, SYSTEM_MESSAGE
from headhunt_jax.backbones.registry import TinyBackbone
from headhunt_jax.models.decoder import tiny_decoder
from headhunt_jax.models.tokenizer import tiny_tokenizer

SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    IMG_START,
    IMG_END,
    IMG_CONTEXT,
)


def tiny_backbone(prompts, image_size: int = 112, text_model: str = "qwen2") -> TinyBackbone:
    """A tiny InternVL-architecture backbone (a Qwen2 decoder as InternVL3's, or with
    ``text_model="qwen3"`` a Qwen3 one as InternVL3.5's) with a tokenizer for ``prompts``."""
    corpus = [SYSTEM_MESSAGE, "system user assistant Frame1: Frame16:", *prompts]
    tok = tiny_tokenizer(corpus, SPECIAL_TOKENS)
    cfg = InternVLConfig(
        vision=VisionConfig(
            hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=image_size
        ),
        text=tiny_decoder(
            tok.get_vocab_size(),
            attention_bias=text_model == "qwen2",
            qk_norm=text_model == "qwen3",
        ),
        image_token_id=tok.token_to_id(IMG_CONTEXT),
    )
    name = {"qwen2": "tiny-internvl3-random", "qwen3": "tiny-internvl3.5-random"}[text_model]
    return TinyBackbone(cfg, tok, name)
