"""LLaVA-OneVision: parity with transformers' ``LlavaOnevisionForConditionalGeneration`` on tiny
random checkpoints written by ``save_pretrained`` and read by the family's loader, and its
processor against transformers' tokenizer, chat template, token counts and image processor.

Error measure: max |jax - torch| / max |torch| over the whole output (float32, eager attention).
Per-head features are the ``o_proj`` inputs at the last position, captured by forward pre-hooks.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from numerics import rel_err

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("hf_reference")

import headhunt_jax as hh  # noqa: E402
from headhunt_jax.backbones.llava_onevision import inputs as lov_inputs  # noqa: E402
from headhunt_jax.backbones.llava_onevision import processor as lov_processor  # noqa: E402
from headhunt_jax.backbones.llava_onevision.config import (  # noqa: E402
    PRESETS,
    LlavaOnevisionConfig,
)
from headhunt_jax.backbones.llava_onevision.inputs import check_inputs  # noqa: E402
from headhunt_jax.backbones.llava_onevision.modeling import (  # noqa: E402
    LlavaOnevision,
    bilinear_weights,
)
from headhunt_jax.models import stack  # noqa: E402

TOL = 1e-4
VOCAB = 300
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
IMAGE_ID, VIDEO_ID = VOCAB - 2, VOCAB - 1  # the tiny tokenizer's last two ids
SIZE, PATCH = 35, 7  # a 5 x 5 patch grid: pooling goes to ceil(5 / 2) = 3, not an exact halving
TEXT_IDS = VOCAB - len(SPECIAL)  # random text ids stay below the special tokens


def tiny_config(vision_feature_layer=-1, kv_heads=2, strategy="full", **kw):
    vision = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=SIZE,
        patch_size=PATCH,
        vision_use_head=False,  # as the released checkpoints
    )
    text = dict(
        model_type="qwen2",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    return transformers.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_ID,
        video_token_index=VIDEO_ID,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_grid_pinpoints=[[SIZE, SIZE], [SIZE, 2 * SIZE], [2 * SIZE, SIZE]],
        **kw,
    )


def load(path):
    """(module, params) of a checkpoint read by ``load_backbone``, as users read it."""
    bb = hh.load_backbone(path)
    return bb.model, bb.params


def build(config, seed=0):
    """The torch model with every parameter random (norms around 1)."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = transformers.LlavaOnevisionForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def reference(model, input_ids, **vision):
    """(o_proj inputs at the last position [B, L, N, H], logits) of the torch model."""
    captured = {}
    layers = model.model.language_model.layers
    hooks = []
    for i, layer in enumerate(layers):

        def hook(module, args, i=i):
            captured[i] = args[0][:, -1].detach().float().clone()

        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            kwargs = {k: torch.as_tensor(np.asarray(v)) for k, v in vision.items()}
            out = model(input_ids=torch.as_tensor(np.asarray(input_ids)), **kwargs)
    finally:
        for h in hooks:
            h.remove()
    heads = model.config.text_config.num_attention_heads
    feats = torch.stack([captured[i] for i in range(len(layers))], 1)
    return feats.reshape(feats.shape[0], len(layers), heads, -1).numpy(), out.logits.numpy()


def jax_outputs(model, params, input_ids, **vision):
    """(head features [B, L, N, H], logits) of the Flax model, one jitted function (the vision
    inputs traced, image_sizes included): the head-features pass and the full pass."""
    layers = tuple(range(model.cfg.text.num_layers))

    @jax.jit
    def run(params, ids, vision):
        variables = {"params": params}
        heads = model.apply(variables, ids, len(layers), method="features", **vision)["heads"]
        logits = model.apply(variables, ids, method="logits", **vision)
        return heads.astype(jnp.float32), logits

    vision = {k: jnp.asarray(v) for k, v in vision.items()}
    return run(params, jnp.asarray(input_ids, jnp.int32), vision)


def check_parity(model, params, torch_model, input_ids, **vision):
    check_inputs(model.cfg, input_ids, vision)
    want_heads, want_logits = reference(torch_model, input_ids, **vision)
    got_heads, got_logits = jax_outputs(model, params, input_ids, **vision)
    assert got_heads.shape == want_heads.shape and got_heads.dtype == np.float32
    errors = rel_err(got_heads, want_heads), rel_err(got_logits, want_logits)
    assert max(errors) <= TOL, errors
    return errors


def video_ids(rng, cfg, batch, frames):
    """Per sample: text, the video's tokens, text (as the chat template lays them out)."""
    n = cfg.video_tokens(frames)
    rows = [
        [*rng.integers(0, TEXT_IDS, 3), *[VIDEO_ID] * n, *rng.integers(0, TEXT_IDS, 4)]
        for _ in range(batch)
    ]
    return np.asarray(rows)


@pytest.mark.parametrize(
    "vision_feature_layer, kv_heads, frame_counts",
    # GQA 4:1 / 2:1; the list takes the embeddings and the last layer
    [(-1, 1, (1, 3)), ([0, -1], 2, (2,))],
)
def test_video_parity(tmp_path, rng, vision_feature_layer, kv_heads, frame_counts):
    torch_model = build(tiny_config(vision_feature_layer, kv_heads))
    torch_model.save_pretrained(tmp_path / "ckpt")
    model, params = load(tmp_path / "ckpt")
    assert model.cfg.text.num_kv_heads == kv_heads
    for frames in frame_counts:
        ids = video_ids(rng, model.cfg, batch=2, frames=frames)
        videos = rng.standard_normal((2, frames, 3, SIZE, SIZE)).astype(np.float32)
        check_parity(model, params, torch_model, ids, pixel_values_videos=videos)


def test_video_parity_with_the_tower_in_groups_of_frames(tmp_path, rng, monkeypatch):
    """On a CPU the tower runs its frames a group at a time (``stack.over_images``). With two
    frames a step, 6 frames run in 3 steps (each step every third frame) and both kept layers
    still match transformers."""
    steps = []
    lax_map = jax.lax.map
    monkeypatch.setattr(stack, "CPU_IMAGE_TOKENS_PER_STEP", 2 * (SIZE // PATCH) ** 2)
    monkeypatch.setattr(jax.lax, "map", lambda f, xs: steps.append(len(xs)) or lax_map(f, xs))
    torch_model = build(tiny_config([0, -1], 2))
    torch_model.save_pretrained(tmp_path / "ckpt")
    model, params = load(tmp_path / "ckpt")
    ids = video_ids(rng, model.cfg, batch=2, frames=3)
    videos = rng.standard_normal((2, 3, 3, SIZE, SIZE)).astype(np.float32)
    check_parity(model, params, torch_model, ids, pixel_values_videos=videos)
    assert steps and set(steps) == {3}


def image_ids(rng, cfg, sizes):
    rows = [
        [*rng.integers(0, TEXT_IDS, 2), *[IMAGE_ID] * cfg.image_tokens(h, w), 5, 6]
        for h, w in sizes
    ]
    width = max(map(len, rows))
    return np.asarray([[7] * (width - len(r)) + r for r in rows])


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    torch_model = build(tiny_config(-2), seed=1)  # -2: the tower's last layer is not run
    path = tmp_path_factory.mktemp("lov_image") / "ckpt"
    torch_model.save_pretrained(path)
    return torch_model, path


@pytest.mark.parametrize(
    "sizes",
    [
        [(SIZE, SIZE), (20, SIZE)],  # square: the whole tile; wide: rows unpadded
        [(SIZE, 12), (7, 9)],  # tall: columns unpadded; small
    ],
)
def test_base_size_image_parity(image_model, rng, sizes):
    """One image a sample, no larger than the base resolution: transformers' base view + one
    unpadded tile with a newline a row; image_sizes traced under jit."""
    torch_model, path = image_model
    model, params = load(path)
    ids = image_ids(rng, model.cfg, sizes)
    pixels = rng.standard_normal((len(sizes), 2, 3, SIZE, SIZE)).astype(np.float32)
    check_parity(
        model, params, torch_model, ids, pixel_values=pixels, image_sizes=np.asarray(sizes)
    )


def test_image_and_video_in_one_batch(image_model, rng):
    torch_model, path = image_model
    model, params = load(path)
    cfg = model.cfg
    row = [1, *[IMAGE_ID] * cfg.image_tokens(20, SIZE), 2, *[VIDEO_ID] * cfg.video_tokens(2), 3]
    pixels = rng.standard_normal((1, 2, 3, SIZE, SIZE)).astype(np.float32)
    videos = rng.standard_normal((1, 2, 3, SIZE, SIZE)).astype(np.float32)
    check_parity(
        model,
        params,
        torch_model,
        np.asarray([row]),
        pixel_values=pixels,
        image_sizes=np.asarray([[20, SIZE]]),
        pixel_values_videos=videos,
    )


def test_larger_image_and_token_counts_refused(image_model, rng):
    _, path = image_model
    model, _ = load(path)
    pixels = np.zeros((1, 2, 3, SIZE, SIZE), np.float32)
    ids = image_ids(rng, model.cfg, [(SIZE, SIZE)])
    with pytest.raises(ValueError, match="anyres tiling is not implemented"):
        check_inputs(
            model.cfg, ids, {"pixel_values": pixels, "image_sizes": np.asarray([[SIZE + 1, SIZE]])}
        )
    with pytest.raises(ValueError, match="image tokens"):
        check_inputs(
            model.cfg,
            ids[:, 3:],
            {"pixel_values": pixels, "image_sizes": np.asarray([[SIZE, SIZE]])},
        )
    videos = np.zeros((2, 3, 3, SIZE, SIZE), np.float32)
    with pytest.raises(ValueError, match=r"hold 28 video tokens .* need 56"):
        check_inputs(model.cfg, video_ids(rng, model.cfg, 1, 3), {"pixel_values_videos": videos})


def test_default_select_strategy(tmp_path, rng):
    """SigLIP has no CLS token: 'default' drops a patch, and transformers' own video pooling
    then fails to reshape the grid; ``from_hf`` refuses it with the reason."""
    config = tiny_config(strategy="default")
    torch_model = build(config)
    videos = torch.zeros(1, 1, 3, SIZE, SIZE)
    n = 3 * 3 + 1
    with pytest.raises(RuntimeError), torch.no_grad():
        torch_model(input_ids=torch.full((1, n), VIDEO_ID), pixel_values_videos=videos)
    with pytest.raises(ValueError, match="SigLIP has no CLS token"):
        LlavaOnevisionConfig.from_hf(config.to_dict())


def test_bilinear_pooling_matches_torch():
    for size in (2, 3, 5, 27):
        out = -(-size // 2)
        x = torch.randn(1, 1, size, size)
        want = torch.nn.functional.interpolate(x, size=(out, out), mode="bilinear")[0, 0]
        w = bilinear_weights(size, out)
        np.testing.assert_allclose(w @ x[0, 0].numpy() @ w.T, want.numpy(), atol=1e-5)


def test_key_layouts(tmp_path, image_model, rng):
    """save_pretrained writes the legacy layout (language_model.model.*, language_model.lm_head,
    vision_tower.*); the hub's v4 files add SigLIP's vision_model.; transformers v5 in memory
    says model.language_model.*, lm_head, model.vision_tower.*, model.image_newline. All load
    to the same parameters, in two shards with an index."""
    from safetensors.torch import load_file

    torch_model, path = image_model
    tensors = load_file(path / "model.safetensors")
    assert "image_newline" in tensors and "language_model.lm_head.weight" in tensors
    assert any(k.startswith("language_model.model.") for k in tensors)
    layouts = {
        "v4": [("vision_tower.", "vision_tower.vision_model.")],
        "v5": [
            ("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("vision_tower.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."),
            ("image_newline", "model.image_newline"),
        ],
    }
    _, want = load(path)
    for name, renames in layouts.items():
        hf.save_shards(tensors, renames, tmp_path / name, path)
        _, got = load(tmp_path / name)
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_tied_head_and_registry(tmp_path, rng):
    """A tied head (the text config's flag, which transformers forwards to the top level),
    read through the registry: ``load_backbone`` + ``head_features`` with a video."""

    config = tiny_config(-1)
    config.text_config.tie_word_embeddings = True
    config.tie_word_embeddings = True
    torch_model = build(config, seed=2)
    torch_model.save_pretrained(tmp_path / "ckpt")
    model, params = load(tmp_path / "ckpt")
    assert model.cfg.text.tie_word_embeddings and "lm_head" not in params["language_model"]
    ids = video_ids(rng, model.cfg, batch=2, frames=2)
    videos = rng.standard_normal((2, 2, 3, SIZE, SIZE)).astype(np.float32)
    check_parity(model, params, torch_model, ids, pixel_values_videos=videos)
    bb = hh.load_backbone(tmp_path / "ckpt")
    want, _ = reference(torch_model, ids, pixel_values_videos=videos)
    assert rel_err(hh.head_features(bb, ids, pixel_values_videos=videos), want) <= TOL


def test_config_from_hf_and_back():
    cfg = LlavaOnevisionConfig.from_hf(tiny_config([0, -1]).to_dict())
    assert cfg.vision_feature_layer == (0, -1) and cfg.feature_layers == (0, 2)
    assert (cfg.image_token_id, cfg.video_token_id) == (IMAGE_ID, VIDEO_ID)
    assert cfg.vision_token_ids == (IMAGE_ID, VIDEO_ID)
    assert LlavaOnevisionConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    bad = [
        ({"vision_feature_layer": 3}, "out of range"),
        ({"image_grid_pinpoints": [[SIZE, 2 * SIZE]]}, "image_grid_pinpoints"),
        ({"vision_aspect_ratio": "pad"}, "vision_aspect_ratio"),
        ({"projector_hidden_act": "relu"}, "projector_hidden_act"),
    ]
    for change, match in bad:
        d = {**tiny_config().to_dict(), **change}
        with pytest.raises(ValueError, match=match):
            LlavaOnevisionConfig.from_hf(d)
    d = tiny_config().to_dict()
    d["vision_config"]["vision_use_head"] = True
    with pytest.raises(ValueError, match="pooling head"):
        LlavaOnevisionConfig.from_hf(d)


def test_presets():
    small, big = PRESETS["llava-onevision-qwen2-0.5b-ov"], PRESETS["llava-onevision-qwen2-7b-ov"]
    for cfg in (small, big):
        assert cfg.image_size == 384 and cfg.vision.grid == 27 and cfg.tokens_per_frame == 196
        assert cfg.video_tokens(16) == 16 * 196 + 1
        assert cfg.image_tokens(384, 384) == 729 + 27 * 28
    assert (small.text.hidden_size, small.text.num_heads, small.text.num_kv_heads) == (896, 14, 2)
    assert (big.text.hidden_size, big.text.num_heads, big.text.num_kv_heads) == (3584, 28, 4)
    # shapes only: the 7B tree is never materialised
    model = LlavaOnevision(small)
    inputs = lov_inputs.init_inputs(small)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert 0.85e9 < n < 0.95e9  # ~0.89B: SigLIP-so400m (26 layers) + projector + Qwen2-0.5B


# --- processor ---------------------------------------------------------------------------------


def tiny_tokenizer():
    """A byte-level BPE with the llava-onevision special tokens on the last ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    learnt = VOCAB - len(SPECIAL)
    corpus = ["user\nassistant\n", "Identify any abnormal events or safety hazards in this video."]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=learnt, initial_alphabet=alphabet)
    )
    tok.add_tokens([f"<filler{i}>" for i in range(learnt - tok.get_vocab_size())])
    tok.add_special_tokens(SPECIAL)
    assert (tok.token_to_id("<image>"), tok.token_to_id("<video>")) == (IMAGE_ID, VIDEO_ID)
    return tok


@pytest.fixture(scope="module")
def checkpoint_tokenizer(tmp_path_factory):
    """A checkpoint directory's tokenizer files, the chat template in tokenizer_config.json."""
    path = tmp_path_factory.mktemp("lov_tokenizer")
    tiny_tokenizer().save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Qwen2Tokenizer",
                "chat_template": lov_processor.CHAT_TEMPLATE,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "bos_token": None,
            }
        )
    )
    return path


def smooth_frames(rng, n, height, width):
    """Video-like frames: smooth patterns with a little noise, uint8."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        base = 127 + 90 * np.sin(x / (11.0 + i)) * np.cos(y / 17.0)
        frames.append(base[..., None] + rng.normal(0, 6, (height, width, 3)))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_prompt_ids_match_transformers(checkpoint_tokenizer):
    """The chat template through transformers' tokenizer, the <video> placeholder expanded by
    ``LlavaOnevisionProcessor.replace_video_token`` (its own count), then tokenized."""
    from types import SimpleNamespace

    cfg = LlavaOnevisionConfig.from_hf(tiny_config().to_dict())
    hf_tok = transformers.AutoTokenizer.from_pretrained(checkpoint_tokenizer)
    prompt = "Identify any abnormal events or safety hazards in this video."
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == lov_processor.chat_text(prompt)
    hf_processor = SimpleNamespace(num_image_tokens=cfg.vision.num_patches, video_token="<video>")
    for frames in (1, 2, 5):
        videos = {"pixel_values_videos": [np.zeros((frames, 3, SIZE, SIZE), np.float32)]}
        expanded = transformers.LlavaOnevisionProcessor.replace_video_token(hf_processor, videos, 0)
        assert len(expanded) // len("<video>") == cfg.video_tokens(frames)
        want = hf_tok(text.replace("<video>", expanded)).input_ids
        got = lov_processor.prompt_ids(checkpoint_tokenizer, prompt, frames, cfg)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="backbone expects"):
        other = dataclasses.replace(cfg, video_token_id=5)
        lov_processor.prompt_ids(checkpoint_tokenizer, prompt, 2, other)
    with pytest.raises(ValueError, match="prompt text itself"):
        lov_processor.prompt_ids(checkpoint_tokenizer, "a <video> b", 2, cfg)


def test_pixels_match_image_processor(checkpoint_tokenizer, rng):
    """Frames vs transformers' PIL ``LlavaOnevisionImageProcessor`` doing the same: its base
    view (the whole image resized to 384 x 384, bicubic) with mean = std = 0.5. The video
    processor itself needs torchvision; its CPU computation (torch's native uint8 antialiased
    bicubic, then (x - 127.5) / 127.5) is rebuilt with torch for a bound."""
    frames = np.concatenate(
        [smooth_frames(rng, 2, 240, 320), smooth_frames(rng, 1, 240, 320)[:, ::-1]]
    )
    out = lov_processor.process(frames, "Describe.", checkpoint_tokenizer, release_vision_config())
    pixels = out["pixel_values_videos"]
    assert pixels.shape == (1, 3, 3, 384, 384) and pixels.dtype == np.float32
    image_processor = transformers.LlavaOnevisionImageProcessorPil(
        image_mean=[0.5] * 3, image_std=[0.5] * 3, image_grid_pinpoints=[[384, 384]]
    )
    want = image_processor(list(frames), return_tensors="np")["pixel_values"]  # one image each
    np.testing.assert_allclose(pixels[0], want[:, 0], rtol=0, atol=1e-6)
    torch_u8 = torch.nn.functional.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2),
        size=(384, 384),
        mode="bicubic",
        antialias=True,
    )
    video_processor_cpu = ((torch_u8.float() - 127.5) / 127.5).numpy()
    levels = np.abs(pixels[0] - video_processor_cpu) * 127.5
    assert levels.max() <= 2.01 and (levels > 0.5).mean() < 0.01
    assert out["spec"] == {
        "image_size": 384,
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "tokens_per_frame": 196,
        "template": "llava-onevision-qwen2",
        "frames": 3,
    }
    ids = out["input_ids"]
    assert int((ids == VIDEO_ID).sum()) == 3 * 196 + 1


def release_vision_config():
    """The 384 px vision of the releases with the tiny tokenizer's token ids."""
    return dataclasses.replace(
        PRESETS["llava-onevision-qwen2-0.5b-ov"], image_token_id=IMAGE_ID, video_token_id=VIDEO_ID
    )


def test_family_processor(tmp_path, checkpoint_tokenizer, rng):
    """The registry's ``Processor``: VideoReader settings, ids, pixel_values_videos; mean/std
    from the checkpoint's video_preprocessor_config.json, other preprocessing refused."""
    import shutil

    for f in checkpoint_tokenizer.iterdir():
        shutil.copy(f, tmp_path / f.name)
    config = {
        "size": {"height": 384, "width": 384},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(config))
    cfg = release_vision_config()
    proc = lov_processor.processor(cfg, tmp_path)
    assert proc.frames == {"image_size": 384, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert proc.spec["tokens_per_frame"] == 196
    np.testing.assert_array_equal(
        proc.prompt_ids("Describe.", 4), lov_processor.prompt_ids(tmp_path, "Describe.", 4, cfg)
    )
    pixels = np.zeros((2, 4, 3, 384, 384), np.float32)
    assert proc.vision_inputs(pixels)["pixel_values_videos"] is pixels
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({**config, "resample": 2}))
    with pytest.raises(ValueError, match="resample"):
        lov_processor.processor(cfg, tmp_path)
    with pytest.raises(ValueError, match="384 px only"):
        lov_processor.processor(cfg, checkpoint_tokenizer, image_size=448)


def test_prefix_reuse_and_early_exit_on_the_demo_checkpoint(tmp_path):
    """Two prompts after the same video share its prefix: their features equal separate full
    passes; a layer subset equals the slice of all layers (the forward stops early)."""
    from headhunt_jax import tiny_checkpoints
    from headhunt_jax.features import head_features_prompts

    prompts = ["Anything odd here?", "Describe any violent activity or accident in the video."]
    tiny_checkpoints.write("llava-onevision", tmp_path / "ckpt", prompts, image_size=28)
    bb = hh.load_backbone(tmp_path / "ckpt")
    processor = bb.processor()
    ids = [np.tile(processor.prompt_ids(p, 3)[None], (2, 1)) for p in prompts]
    videos = np.random.default_rng(2).standard_normal((2, 3, 3, 28, 28)).astype(np.float32)
    vision = processor.vision_inputs(videos)
    assert set(vision) == {"pixel_values_videos"}
    shared = np.asarray(head_features_prompts(bb, ids, **vision))
    for m, prompt_ids in enumerate(ids):
        full = np.asarray(hh.head_features(bb, prompt_ids, **vision))
        np.testing.assert_allclose(shared[m], full, rtol=1e-5, atol=1e-6)
        part = np.asarray(hh.head_features(bb, prompt_ids, layers=[2, 0], **vision))
        np.testing.assert_allclose(part, full[:, [2, 0]], rtol=1e-5, atol=1e-6)


def test_converted_round_trip(image_model, tmp_path, rng):
    """``headhunt-jax convert``'s orbax checkpoint of the family gives the same features."""
    from headhunt_jax import backbone

    _, path = image_model
    bb = hh.load_backbone(path)
    out = backbone.save_converted(bb, tmp_path / "converted")
    again = hh.load_backbone(out)
    assert again.family.name == "llava_onevision" and again.fingerprint == bb.fingerprint
    sizes = [(SIZE, SIZE)]
    ids = image_ids(rng, bb.config, sizes)
    pixels = rng.standard_normal((1, 2, 3, SIZE, SIZE)).astype(np.float32)
    vision = dict(pixel_values=pixels, image_sizes=np.asarray(sizes))
    np.testing.assert_array_equal(
        np.asarray(hh.head_features(again, ids, **vision)),
        np.asarray(hh.head_features(bb, ids, **vision)),
    )
