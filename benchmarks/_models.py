"""Shared pieces of the extraction benchmarks: the same mid-size model of a family for
headhunt_jax and transformers, synthetic segments, and the FLOP count of one extraction."""

import dataclasses
import time

import numpy as np

from headhunt_jax.backbones.internvl.config import InternVLConfig, VisionConfig
from headhunt_jax.backbones.llava_onevision.config import LlavaOnevisionConfig, SiglipConfig
from headhunt_jax.backbones.qwen2_5_vl.config import Qwen25VisionConfig, Qwen25VLConfig
from headhunt_jax.backbones.qwen3_vl.config import (
    Qwen3VLConfig,
    Qwen3VLVisionConfig,
    interleaved_sections,
)
from headhunt_jax.models.decoder import DecoderConfig

# A mid-size model that a 2-core CPU runs in seconds: 224 px frames (64 image tokens each).
MID = InternVLConfig(
    vision=VisionConfig(
        hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4, image_size=224
    ),
    text=DecoderConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1408,
        num_layers=8,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
    ),
    image_token_id=8000,
)


# The same decoder behind a SigLIP tower at 224 px (patch 14: 256 patches, 64 pooled tokens a
# frame, as MID's 64 image tokens).
MID_LLAVA = LlavaOnevisionConfig(
    vision=SiglipConfig(
        hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4, image_size=224
    ),
    text=MID.text,
    image_token_id=8000,
    video_token_id=8001,
)


# The same decoder (with M-RoPE) behind a Qwen2.5-VL tower: 224 x 224 frames are 16 x 16
# patches, 64 merged tokens each (as MID's); 4 x 4-token windows, blocks 1 and 3 full.
MID_QWEN = Qwen25VLConfig(
    vision=Qwen25VisionConfig(
        depth=4,
        hidden_size=256,
        intermediate_size=1024,
        num_heads=4,
        fullatt_block_indexes=(1, 3),
        out_hidden_size=MID.text.hidden_size,
    ),
    text=dataclasses.replace(MID.text, mrope_section=(16, 8, 8)),
    image_token_id=8000,
    video_token_id=8001,
    vision_start_token_id=8002,
    vision_end_token_id=8003,
)


# The same decoder with q/k norms and interleaved M-RoPE behind a Qwen3-VL tower (patch 16):
# 256 x 256 frames are 16 x 16 patches, 64 merged tokens each (as MID's); a 16 x 16 learned
# position table, DeepStack from blocks 1 and 2.
MID_QWEN3_SECTION = (12, 10, 10)  # transformers' mrope_section: head_dim 64 / 2
MID_QWEN3 = Qwen3VLConfig(
    vision=Qwen3VLVisionConfig(
        depth=4,
        hidden_size=256,
        intermediate_size=1024,
        num_heads=4,
        out_hidden_size=MID.text.hidden_size,
        num_position_embeddings=256,
        deepstack_visual_indexes=(1, 2),
    ),
    text=dataclasses.replace(
        MID.text,
        qk_norm=True,
        rope_theta=5_000_000.0,
        mrope_section=interleaved_sections(MID_QWEN3_SECTION, MID.text.head_dim // 2),
    ),
    image_token_id=8000,
    video_token_id=8001,
    vision_start_token_id=8002,
    vision_end_token_id=8003,
)


def hf_qwen3_config(cfg: Qwen3VLConfig, attn: str):
    """transformers' Qwen3VLConfig with MID_QWEN3's shapes."""
    import transformers

    v, t = cfg.vision, cfg.text
    text = _hf_text(t)
    del text["model_type"]
    text.update(head_dim=t.head_dim, attention_bias=False)
    text["rope_parameters"].update(mrope_section=list(MID_QWEN3_SECTION), mrope_interleaved=True)
    config = transformers.Qwen3VLConfig(
        vision_config=dict(
            depth=v.depth,
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_heads=v.num_heads,
            patch_size=v.patch_size,
            out_hidden_size=v.out_hidden_size,
            num_position_embeddings=v.num_position_embeddings,
            deepstack_visual_indexes=list(v.deepstack_visual_indexes),
        ),
        text_config=text,
        image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=t.tie_word_embeddings,
    )
    config._attn_implementation = attn
    return config


def hf_qwen_config(cfg: Qwen25VLConfig, attn: str):
    """transformers' Qwen2_5_VLConfig with the same shapes."""
    import transformers

    v, t = cfg.vision, cfg.text
    text = _hf_text(t)
    text["rope_parameters"]["mrope_section"] = list(t.mrope_section)
    config = transformers.Qwen2_5_VLConfig(
        vision_config=dict(
            depth=v.depth,
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_heads=v.num_heads,
            patch_size=v.patch_size,
            window_size=v.window_size,
            fullatt_block_indexes=list(v.fullatt_block_indexes),
            out_hidden_size=v.out_hidden_size,
            tokens_per_second=v.tokens_per_second,
        ),
        text_config=text,
        image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=t.tie_word_embeddings,
    )
    config._attn_implementation = attn
    return config


def qwen_inputs(cfg, frames: int, batch: int, size=(224, 224), seed: int = 0):
    """(input_ids [batch, T], the HF keyword inputs) of segments of ``frames`` images of
    ``size`` px, shaped like the Qwen2.5-VL or Qwen3-VL prompt: text, the images, a prompt."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    vocab = min(cfg.text.vocab_size, cfg.image_token_id)
    gh, gw = size[0] // v.patch_size, size[1] // v.patch_size
    tokens = gh * gw // v.merge_unit
    row = list(rng.integers(0, vocab, 20))
    for _ in range(frames):
        row += [cfg.vision_start_token_id] + [cfg.image_token_id] * tokens
        row += [cfg.vision_end_token_id]
    row += list(rng.integers(0, vocab, 30))
    ids = np.asarray([row] * batch, np.int32)
    n = batch * frames
    inputs = {
        "pixel_values": rng.standard_normal((n * gh * gw, v.patch_dim), np.float32),
        "image_grid_thw": np.tile(np.asarray([[1, gh, gw]], np.int64), (n, 1)),
    }
    return ids, inputs


def _hf_text(t: DecoderConfig) -> dict:
    """transformers' Qwen2 config dict with the decoder's shapes."""
    return dict(
        model_type="qwen2",
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
        rms_norm_eps=t.rms_norm_eps,
        tie_word_embeddings=t.tie_word_embeddings,
    )


def hf_llava_config(cfg: LlavaOnevisionConfig, attn: str):
    """transformers' LlavaOnevisionConfig with the same shapes."""
    import transformers

    v, t = cfg.vision, cfg.text
    config = transformers.LlavaOnevisionConfig(
        vision_config=dict(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            vision_use_head=False,
        ),
        text_config=_hf_text(t),
        image_token_index=cfg.image_token_id,
        video_token_index=cfg.video_token_id,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        image_grid_pinpoints=[[v.image_size, v.image_size]],
        tie_word_embeddings=t.tie_word_embeddings,
    )
    config._attn_implementation = attn
    return config


def video_ids(cfg: LlavaOnevisionConfig, frames: int, batch: int, seed: int = 0) -> np.ndarray:
    """[batch, T] ids shaped like the LLaVA-OneVision prompt: a user turn's opening, one video,
    a prompt and the assistant turn's opening."""
    rng = np.random.default_rng(seed)
    vocab = min(cfg.text.vocab_size, cfg.image_token_id)
    video = [cfg.video_token_id] * cfg.video_tokens(frames)
    rows = [list(rng.integers(0, vocab, 4)) + video + list(rng.integers(0, vocab, 30))]
    return np.asarray(rows * batch, np.int32)


def hf_config(cfg: InternVLConfig, attn: str):
    """transformers' InternVLConfig with the same shapes."""
    import transformers

    v, t = cfg.vision, cfg.text
    config = transformers.InternVLConfig(
        vision_config=dict(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            norm_type=v.norm_type,
            attention_bias=v.attention_bias,
            use_qk_norm=v.use_qk_norm,
            layer_norm_eps=v.layer_norm_eps,
        ),
        text_config=_hf_text(t),
        image_token_id=cfg.image_token_id,
        downsample_ratio=cfg.downsample_ratio,
        tie_word_embeddings=t.tie_word_embeddings,
    )
    config._attn_implementation = attn
    return config


def segment_ids(cfg: InternVLConfig, frames: int, batch: int, seed: int = 0) -> np.ndarray:
    """[batch, T] ids shaped like the InternVL3 prompt: a system turn, frames, a prompt."""
    rng = np.random.default_rng(seed)
    vocab = min(cfg.text.vocab_size, cfg.image_token_id)
    rows = []
    for _ in range(batch):
        row = list(rng.integers(0, vocab, 40))
        for _ in range(frames):
            row += (
                list(rng.integers(0, vocab, 5)) + [cfg.image_token_id] * cfg.tokens_per_image + [1]
            )
        rows.append(row + list(rng.integers(0, vocab, 30)))
    return np.asarray(rows, np.int32)


def extraction_flops(cfg: InternVLConfig, seq_len: int, frames: int) -> float:
    """Matmul FLOPs of one segment's extraction as headhunt_jax runs it (all layers' heads;
    the last layer's MLP and all but its last query are skipped; causal attention counted half)."""
    v, t = cfg.vision, cfg.text
    n_vis = (v.image_size // v.patch_size) ** 2 + 1
    e = v.hidden_size
    vis_layer = 2 * n_vis * (4 * e * e + 2 * e * v.intermediate_size) + 4 * n_vis * n_vis * e
    patch = 2 * n_vis * e * v.num_channels * v.patch_size**2
    d = e * int(1 / cfg.downsample_ratio) ** 2
    proj = 2 * cfg.tokens_per_image * (d * t.hidden_size + t.hidden_size**2)
    vision = frames * (v.num_layers * vis_layer + patch + proj)
    h, q, kv = t.hidden_size, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    qkvo = 2 * seq_len * h * (2 * q + 2 * kv)
    mlp = 2 * seq_len * 3 * h * t.intermediate_size
    attn = 2 * seq_len * seq_len * q  # QK^T and PV, causal half of 4*T^2*q
    last = 2 * seq_len * h * 2 * kv + 2 * h * 2 * q + 4 * seq_len * q
    return float(vision + (t.num_layers - 1) * (qkvo + mlp + attn) + last)


def median_time(fn, sync, repeats=5, warmup=1):
    """Median wall time of ``sync(fn())`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timed(fn, sync):
    start = time.perf_counter()
    out = fn()
    sync(out)
    return time.perf_counter() - start, out


class TorchHooks:
    """o_proj forward pre-hooks keeping the last position of every layer (the original's way)."""

    def __init__(self, model):
        self.captured = {}
        layers = model.model.language_model.layers
        self.handles = [
            layer.self_attn.o_proj.register_forward_pre_hook(self._hook(i))
            for i, layer in enumerate(layers)
        ]

    def _hook(self, i):
        def hook(module, args):
            self.captured[i] = args[0][:, -1].detach()

        return hook

    def features(self, heads):
        import torch

        stacked = torch.stack([self.captured[i] for i in sorted(self.captured)], 1)
        return stacked.reshape(*stacked.shape[:2], heads, -1)


def hf_model(cfg, attn: str):
    """The transformers model of a config of any family, random weights (torch's default dtype
    and device)."""
    import transformers

    if isinstance(cfg, Qwen25VLConfig):
        return transformers.Qwen2_5_VLForConditionalGeneration(hf_qwen_config(cfg, attn))
    if isinstance(cfg, Qwen3VLConfig):
        return transformers.Qwen3VLForConditionalGeneration(hf_qwen3_config(cfg, attn))
    if isinstance(cfg, LlavaOnevisionConfig):
        return transformers.LlavaOnevisionForConditionalGeneration(hf_llava_config(cfg, attn))
    return transformers.InternVLForConditionalGeneration(hf_config(cfg, attn))


def segments(cfg, frames: int, batch: int, seed: int = 0):
    """(input_ids [batch, T], the vision inputs under the HF model's keyword names, the extra
    inputs transformers needs) of ``batch`` synthetic segments of ``frames`` frames, shaped like
    each family's prompt."""
    rng = np.random.default_rng(seed + 1)
    if isinstance(cfg, Qwen25VLConfig | Qwen3VLConfig):
        size = QWEN_SIZES[type(cfg)][0]
        ids, inputs = qwen_inputs(cfg, frames, batch, size, seed=seed)
        # without them transformers gives 1-D positions
        return ids, inputs, {"mm_token_type_ids": (ids == cfg.image_token_id).astype(np.int64)}
    if isinstance(cfg, LlavaOnevisionConfig):
        s = cfg.image_size
        pixels = rng.standard_normal((batch, frames, 3, s, s), np.float32)
        return video_ids(cfg, frames, batch, seed), {"pixel_values_videos": pixels}, {}
    s = cfg.vision.image_size
    pixels = rng.standard_normal((batch * frames, 3, s, s), np.float32)
    return segment_ids(cfg, frames, batch, seed), {"pixel_values": pixels}, {}


MIDS = {"mid": MID, "mid-llava": MID_LLAVA, "mid-qwen": MID_QWEN, "mid-qwen3": MID_QWEN3}
# Two frame sizes of each Qwen family (multiples of its patch x merge): 64 tokens, then 66.
QWEN_SIZES = {Qwen25VLConfig: [(224, 224), (168, 308)], Qwen3VLConfig: [(256, 256), (192, 352)]}
