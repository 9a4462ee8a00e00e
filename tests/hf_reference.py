"""Tiny random Hugging Face models, saved with ``save_pretrained``, and their reference outputs.

The PyTorch models are the reference: per-head features come from forward pre-hooks on
``o_proj`` (the original's way), in float32 with eager attention.
"""

import numpy as np
import torch
import transformers
from numerics import rel_err

import headhunt_jax as hh
from headhunt_jax import features

IMAGE_TOKEN = 299


def tiny_text_config(family="qwen2", **kw):
    base = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    base.update(kw)
    if family == "qwen2":
        return transformers.Qwen2Config(**base)
    if family == "qwen3":
        return transformers.Qwen3Config(**base)
    return transformers.LlamaConfig(**base)


def tiny_internvl_config(norm_type="layer_norm", use_qk_norm=False, text=None, image_size=56, **kw):
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
        norm_type=norm_type,
        use_qk_norm=use_qk_norm,
        attention_bias=True,
        layer_scale_init_value=0.1,
    )
    vision.update(kw.pop("vision", {}))
    text = text or tiny_text_config().to_dict()
    return transformers.InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, **kw
    )


QWEN_VL_TOKENS = dict(
    image_token_id=295, video_token_id=296, vision_start_token_id=297, vision_end_token_id=298
)


def tiny_qwen2_5_vl_config(text=None, vision=None, **kw):
    """Qwen2.5-VL: a 3-block tower (patch 2, 8-px windows: 2 x 2 merged tokens, block 1 full)
    and a GQA Qwen2 decoder with M-RoPE sections (4, 2, 2) of head_dim 16."""
    text_cfg = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 1e4},
    )
    text_cfg.update(text or {})
    vision_cfg = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=40,
        num_heads=4,
        patch_size=2,
        window_size=8,
        fullatt_block_indexes=[1],
        out_hidden_size=text_cfg["hidden_size"],
        tokens_per_second=2,
    )
    vision_cfg.update(vision or {})
    return transformers.Qwen2_5_VLConfig(
        text_config=text_cfg, vision_config=vision_cfg, **{**QWEN_VL_TOKENS, **kw}
    )


def tiny_qwen3_vl_config(text=None, vision=None, **kw):
    """Qwen3-VL: a 3-block tower (patch 2, a 4 x 4 learned position table, DeepStack from blocks
    0 and 2) and a GQA Qwen3 decoder (head_dim 16 != 64 / 4, q/k norms) with interleaved M-RoPE
    sections (2, 3, 3)."""
    text_cfg = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
            "rope_theta": 1e4,
        },
    )
    text_cfg.update(text or {})
    vision_cfg = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=40,
        num_heads=4,
        patch_size=2,
        out_hidden_size=text_cfg["hidden_size"],
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 2],
    )
    vision_cfg.update(vision or {})
    return transformers.Qwen3VLConfig(
        text_config=text_cfg, vision_config=vision_cfg, **{**QWEN_VL_TOKENS, **kw}
    )


def build(config, seed=0):
    """A model from config with all parameters random (incl. norms, Qwen3's q/k norms and layer
    scales)."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    if isinstance(config, transformers.InternVLConfig):
        model = transformers.InternVLForConditionalGeneration(config)
    elif isinstance(config, transformers.Qwen2_5_VLConfig):
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    elif isinstance(config, transformers.Qwen3VLConfig):
        model = transformers.Qwen3VLForConditionalGeneration(config)
    elif isinstance(config, transformers.LlamaConfig):
        model = transformers.LlamaForCausalLM(config)
    elif isinstance(config, transformers.Qwen3Config):
        model = transformers.Qwen3ForCausalLM(config)
    else:
        model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name or "ln_q" in name) and name.endswith("weight") or "lambda" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def save(model, path, dtype=None, **kw):
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path, **kw)
    return path


def check_parity(tmp_path, model, ids, pixels=None, tol=1e-4, **load_kw):
    """``model`` saved and read back by ``hh.load_backbone``: its head features and logits
    within ``tol`` (``rel_err``) of the model's own; returns the backbone."""
    path = save(model, tmp_path / "ckpt")
    bb = hh.load_backbone(path, **load_kw)
    want, want_logits = reference_head_features(model, ids, pixels)
    got = hh.head_features(bb, ids, pixels)
    assert got.shape == want.shape and got.dtype == np.float32
    assert rel_err(got, want) <= tol
    assert rel_err(features.logits(bb, ids, pixels), want_logits) <= tol
    return bb


def save_shards(tensors, renames, out, config_from):
    """Writes ``tensors`` (name -> torch tensor) to the new directory ``out`` with the first
    matching prefix of each name replaced by ``renames`` [(old, new)], in two shards and their
    index (as large checkpoints are), and ``config_from``'s config.json; returns the new names."""
    import json

    from safetensors.torch import save_file

    renamed = {}
    for k, v in tensors.items():
        for old, new in renames:
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        renamed[k] = v.contiguous()
    out.mkdir()
    keys = sorted(renamed)
    shards = {"a.safetensors": keys[::2], "b.safetensors": keys[1::2]}
    for shard, ks in shards.items():
        save_file({k: renamed[k] for k in ks}, out / shard)
    weight_map = {k: shard for shard, ks in shards.items() for k in ks}
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (out / "config.json").write_text((config_from / "config.json").read_text())
    return list(renamed)


def decoder_layers(model):
    inner = model.model
    return inner.language_model.layers if hasattr(inner, "language_model") else inner.layers


def reference_head_features(model, input_ids, pixel_values=None, **inputs):
    """[B, L, heads, head_dim] o_proj inputs at the last position, and the logits; ``inputs``:
    the model's other keyword inputs, as arrays."""
    captured = {}
    layers = decoder_layers(model)
    hooks = []
    for i, layer in enumerate(layers):

        def hook(module, args, i=i):
            captured[i] = args[0][:, -1].detach().float().clone()

        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            kwargs = {"input_ids": torch.as_tensor(np.asarray(input_ids), dtype=torch.long)}
            if pixel_values is not None:
                kwargs["pixel_values"] = torch.as_tensor(np.asarray(pixel_values))
            kwargs.update({k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()})
            logits = model(**kwargs).logits.float().numpy()
    finally:
        for h in hooks:
            h.remove()
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    feats = torch.stack([captured[i] for i in range(len(layers))], 1)
    return feats.reshape(feats.shape[0], len(layers), heads, -1).numpy(), logits


def tiny_internvl35_config(**kw):
    """InternVL3.5's layout: a Qwen3 text config (GQA, head_dim 24 != 64 / 4, q/k norms) and, as
    the released checkpoints have it, an untied head; ``kw`` go to ``tiny_internvl_config``."""
    text = tiny_text_config("qwen3", head_dim=24).to_dict()
    kw.setdefault("tie_word_embeddings", False)
    return tiny_internvl_config(text=text, **kw)


def random_ids(rng, batch, length, vocab=IMAGE_TOKEN):
    return rng.integers(0, vocab, size=(batch, length))


def multimodal_ids(rng, batch, images_per_sample, tokens_per_image, text_between=3):
    """input_ids with runs of image tokens between random text, and the image count."""
    rows = []
    for _ in range(batch):
        row = list(rng.integers(0, IMAGE_TOKEN - 1, size=2))
        for _ in range(images_per_sample):
            row += [IMAGE_TOKEN] * tokens_per_image
            row += list(rng.integers(0, IMAGE_TOKEN - 1, size=text_between))
        rows.append(row)
    return np.asarray(rows), batch * images_per_sample


INTERNVL_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]


def tiny_internvl_tokenizer(vocab_size=IMAGE_TOKEN + 1):
    """A byte-level BPE ``tokenizers.Tokenizer`` for InternVL prompts whose last id, the
    ``<IMG_CONTEXT>`` token, is ``vocab_size - 1`` (the tiny configs' image token id).

    A few merges learnt from the prompt texts keep sequences short; filler tokens pad the learnt
    vocabulary so that the special tokens land on the last ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from headhunt_jax.backbones.internvl.prompt import SYSTEM_MESSAGE, chat_query
    from headhunt_jax.prompts import DEFAULT_PROMPTS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    learnt = vocab_size - len(INTERNVL_SPECIAL_TOKENS)
    corpus = [SYSTEM_MESSAGE, chat_query(DEFAULT_PROMPTS[1], 16, 0), *DEFAULT_PROMPTS]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=learnt, initial_alphabet=alphabet)
    )
    tok.add_tokens([f"<filler{i}>" for i in range(learnt - tok.get_vocab_size())])
    tok.add_special_tokens(INTERNVL_SPECIAL_TOKENS)
    assert tok.token_to_id("<IMG_CONTEXT>") == vocab_size - 1
    return tok


def save_tiny_internvl(path, seed=0, **config_kw):
    """A complete tiny InternVL checkpoint directory (random weights, config, tokenizer.json), as
    ``load_backbone`` and ``build_prompt_ids`` read it; ``config_kw`` go to
    ``tiny_internvl_config``."""
    config = tiny_internvl_config(**config_kw)
    save(build(config, seed), path)
    vocab = config.get_text_config().vocab_size
    if config.image_token_id != vocab - 1:
        raise ValueError("the tiny tokenizer puts <IMG_CONTEXT> on the last id of the vocabulary")
    tiny_internvl_tokenizer(vocab).save(str(path / "tokenizer.json"))
    return path
