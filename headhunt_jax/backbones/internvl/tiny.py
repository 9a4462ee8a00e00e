"""Tiny InternVL backbones with fixed-seed random weights and a small byte-level BPE tokenizer, for
the demo and the tests: the pipeline runs for real, the weights are not."""

from pathlib import Path

from headhunt_jax import files
from headhunt_jax.backbones.internvl.config import InternVLConfig
from headhunt_jax.backbones.internvl.prompt import IMG_CONTEXT, IMG_END, IMG_START, SYSTEM_MESSAGE
from headhunt_jax.backbones.internvl.vision import VisionConfig
from headhunt_jax.models.decoder import tiny_decoder
from headhunt_jax.models.tokenizer import tiny_tokenizer

SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    IMG_START,
    IMG_END,
    IMG_CONTEXT,
)


def tiny_backbone(
    out_dir, prompts, image_size: int = 112, seed: int = 0, text_model: str = "qwen2"
) -> Path:
    """Writes a tiny InternVL-architecture backbone (random weights, fixed seed; a Qwen2 decoder
    as InternVL3's, or with ``text_model="qwen3"`` a Qwen3 one as InternVL3.5's) to ``out_dir``
    as a converted checkpoint with its tokenizer; returns the directory."""
    from headhunt_jax import backbone

    out_dir = Path(out_dir)
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
    model = backbone.make_model(cfg)
    name = {"qwen2": "tiny-internvl3-random", "qwen3": "tiny-internvl3.5-random"}[text_model]
    bb = backbone.Backbone(model, backbone.random_params(model, seed), name)
    backbone.save_converted(bb, out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    files.write_manifest(out_dir)  # the tokenizer too, not only what save_converted wrote
    return out_dir
