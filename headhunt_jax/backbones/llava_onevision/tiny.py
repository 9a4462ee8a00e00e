"""A tiny LLaVA-OneVision backbone with fixed-seed random weights and a small byte-level BPE
tokenizer, for the demo and the tests: the pipeline runs for real, the weights are not."""

from pathlib import Path

from headhunt_jax import files
from headhunt_jax.backbones.llava_onevision.config import LlavaOnevisionConfig, SiglipConfig
from headhunt_jax.backbones.llava_onevision.processor import VIDEO_TOKEN, chat_text
from headhunt_jax.models.decoder import tiny_decoder
from headhunt_jax.models.tokenizer import tiny_tokenizer

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<image>", VIDEO_TOKEN)


def tiny_backbone(out_dir, prompts, image_size: int = 112, seed: int = 0) -> Path:
    """Writes a tiny LLaVA-OneVision-architecture backbone (SigLIP, projector, 2x2 pooling and
    newline, Qwen2; random weights, fixed seed) to ``out_dir`` as a converted checkpoint with
    its tokenizer; returns the directory."""
    from headhunt_jax import backbone

    out_dir = Path(out_dir)
    tok = tiny_tokenizer([chat_text(p) for p in prompts], SPECIAL_TOKENS)
    cfg = LlavaOnevisionConfig(
        vision=SiglipConfig(
            hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=image_size
        ),
        text=tiny_decoder(tok.get_vocab_size()),
        image_token_id=tok.token_to_id("<image>"),
        video_token_id=tok.token_to_id(VIDEO_TOKEN),
    )
    model = backbone.make_model(cfg)
    params = backbone.random_params(model, seed)
    bb = backbone.Backbone(model, params, "tiny-llava-onevision-random")
    backbone.save_converted(bb, out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    files.write_manifest(out_dir)  # the tokenizer too, not only what save_converted wrote
    return out_dir
