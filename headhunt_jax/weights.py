"""Hugging Face safetensors checkpoints -> Flax parameter trees.

One table maps each HF key (after the layout prefix is normalised) to a path in the params tree
and a transform. Every tensor is checked: a missing, unexpected or wrongly shaped one is an error
that names it.
"""

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or tensor."""


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) from one .safetensors file, memory-mapped (bf16 via ml_dtypes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{path}: not a safetensors file (shorter than its 8-byte header)"
            )
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors header")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    data_size = max((meta["data_offsets"][1] for meta in header.values()), default=0)
    if 8 + n + data_size > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes, its header needs {8 + n + data_size})"
        )
    mm = (
        np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(data_size,))
        if data_size
        else None
    )
    for name, meta in header.items():
        if meta["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        dtype = np.dtype(_DTYPES[meta["dtype"]])
        yield name, mm[start:end].view(dtype).reshape(meta["shape"])


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, sharded (with its index) or single."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
        return [directory / s for s in shards]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no .safetensors weight files")
    return files


# ---------------------------------------------------------------------------------------------
# Transforms: each maps an HF tensor to the param's layout, and says which HF shape it expects
# for a given param shape (so a wrong shape is caught before reshaping).


def _linear(w, shape):
    return w.T


def _heads_in(w, shape):  # [N*H, E] -> [E, N, H]
    return w.T.reshape(shape)


def _heads_out(w, shape):  # [E, N*H] -> [N, H, E]
    return w.T.reshape(shape)


def _reshape(w, shape):
    return w.reshape(shape)


def _conv(w, shape):  # [E, C, p, q] -> [C, p, q, E]
    return w.transpose(1, 2, 3, 0)


_HF_SHAPE: dict[Callable, Callable] = {
    _linear: lambda s: (s[1], s[0]),
    _heads_in: lambda s: (s[1] * s[2], s[0]),
    _heads_out: lambda s: (s[2], s[0] * s[1]),
    _conv: lambda s: (s[3], s[0], s[1], s[2]),
}

_LM = "language_model"
_TABLE: list[tuple[str, str, Callable | None]] = [
    # decoder
    (r"lm\.embed_tokens\.weight", f"{_LM}/embed_tokens", None),
    (
        r"lm\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight",
        _LM + r"/layers_\1/attn/\2_proj/kernel",
        _heads_in,
    ),
    (
        r"lm\.layers\.(\d+)\.self_attn\.([qkv])_proj\.bias",
        _LM + r"/layers_\1/attn/\2_proj/bias",
        _reshape,
    ),
    (
        r"lm\.layers\.(\d+)\.self_attn\.o_proj\.weight",
        _LM + r"/layers_\1/attn/o_proj/kernel",
        _heads_out,
    ),
    (  # Qwen3's per-head q/k RMSNorms, [head_dim]
        r"lm\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight",
        _LM + r"/layers_\1/attn/\2_norm/scale",
        None,
    ),
    (
        r"lm\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight",
        _LM + r"/layers_\1/mlp/\2_proj/kernel",
        _linear,
    ),
    (
        r"lm\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.bias",
        _LM + r"/layers_\1/mlp/\2_proj/bias",
        None,
    ),
    (r"lm\.layers\.(\d+)\.input_layernorm\.weight", _LM + r"/layers_\1/input_norm/scale", None),
    (
        r"lm\.layers\.(\d+)\.post_attention_layernorm\.weight",
        _LM + r"/layers_\1/post_attention_norm/scale",
        None,
    ),
    (r"lm\.norm\.weight", f"{_LM}/norm/scale", None),
    (r"lm_head\.weight", f"{_LM}/lm_head/kernel", _linear),
    # vision tower
    (r"vision\.embeddings\.cls_token", "vision/cls_token", _reshape),
    (r"vision\.embeddings\.position_embeddings", "vision/position_embeddings", _reshape),
    (
        r"vision\.embeddings\.patch_embeddings\.projection\.weight",
        "vision/patch_embed/kernel",
        _conv,
    ),
    (r"vision\.embeddings\.patch_embeddings\.projection\.bias", "vision/patch_embed/bias", None),
    (
        r"vision\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.weight",
        r"vision/layers_\1/attn/\2_proj/kernel",
        _heads_in,
    ),
    (
        r"vision\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.bias",
        r"vision/layers_\1/attn/\2_proj/bias",
        _reshape,
    ),
    (
        r"vision\.encoder\.layer\.(\d+)\.attention\.projection_layer\.weight",
        r"vision/layers_\1/attn/o_proj/kernel",
        _heads_out,
    ),
    (
        r"vision\.encoder\.layer\.(\d+)\.attention\.projection_layer\.bias",
        r"vision/layers_\1/attn/o_proj/bias",
        None,
    ),
    (
        r"vision\.encoder\.layer\.(\d+)\.attention\.([qk])_norm\.weight",
        r"vision/layers_\1/attn/\2_norm/scale",
        None,
    ),
    (
        r"vision\.encoder\.layer\.(\d+)\.layernorm_before\.weight",
        r"vision/layers_\1/norm1/scale",
        None,
    ),
    (
        r"vision\.encoder\.layer\.(\d+)\.layernorm_before\.bias",
        r"vision/layers_\1/norm1/bias",
        None,
    ),
    (
        r"vision\.encoder\.layer\.(\d+)\.layernorm_after\.weight",
        r"vision/layers_\1/norm2/scale",
        None,
    ),
    (r"vision\.encoder\.layer\.(\d+)\.layernorm_after\.bias", r"vision/layers_\1/norm2/bias", None),
    (r"vision\.encoder\.layer\.(\d+)\.(lambda_[12])", r"vision/layers_\1/\2", None),
    (
        r"vision\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.weight",
        r"vision/layers_\1/\2/kernel",
        _linear,
    ),
    (r"vision\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.bias", r"vision/layers_\1/\2/bias", None),
    (r"vision\.layernorm\.weight", "vision/final_norm/scale", None),
    (r"vision\.layernorm\.bias", "vision/final_norm/bias", None),
    # projector
    (r"proj\.layer_norm\.weight", "projector/norm/scale", None),
    (r"proj\.layer_norm\.bias", "projector/norm/bias", None),
    (r"proj\.(linear_[12])\.weight", r"projector/\1/kernel", _linear),
    (r"proj\.(linear_[12])\.bias", r"projector/\1/bias", None),
]
_COMPILED = [(re.compile(pattern + "$"), target, fn) for pattern, target, fn in _TABLE]

# Both InternVL key layouts (transformers v5 and v4) and the plain causal-LM layout.
_PREFIXES = [
    ("model.language_model.", "lm."),
    ("language_model.model.", "lm."),
    ("language_model.lm_head.", "lm_head."),
    ("model.vision_tower.", "vision."),
    ("vision_tower.", "vision."),
    ("model.multi_modal_projector.", "proj."),
    ("multi_modal_projector.", "proj."),
    ("model.", "lm."),
    ("lm_head.", "lm_head."),
]
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def normalize_key(key: str) -> str:
    for prefix, short in _PREFIXES:
        if key.startswith(prefix):
            return short + key[len(prefix) :]
    return key


def map_key(key: str) -> tuple[str, Callable | None] | None:
    """HF key -> (param path 'a/b/c', transform), or None if the table has no rule for it."""
    short = normalize_key(key)
    for pattern, target, fn in _COMPILED:
        m = pattern.match(short)
        if m:
            return m.expand(target), fn
    return None


def convert(
    tensors: Iterator[tuple[str, np.ndarray]],
    expected: dict[str, tuple[int, ...]],
    dtype,
    source: str,
    tied_embeddings: bool = False,
    place: Callable[[str, np.ndarray], Any] | None = None,
) -> dict[str, Any]:
    """Maps HF tensors onto the expected flat param shapes {path: shape}; raises on any mismatch.

    ``place(path, array)``, when given, receives each converted tensor as soon as it is ready
    (e.g. to put it on its devices) and its result is kept instead, so the host holds one
    converted tensor at a time, not the whole tree.
    """
    out: dict[str, Any] = {}
    unexpected = []
    for key, w in tensors:
        if _IGNORED.match(key):
            continue
        mapped = map_key(key)
        if mapped is None or mapped[0] not in expected:
            if tied_embeddings and normalize_key(key) == "lm_head.weight":
                continue  # a tied head saved explicitly is the embedding again
            unexpected.append(key)
            continue
        path, fn = mapped
        shape = tuple(expected[path])
        want = (
            _HF_SHAPE[fn](shape) if fn in _HF_SHAPE else tuple(w.shape) if fn is _reshape else shape
        )
        if tuple(w.shape) != tuple(want) or (fn is _reshape and w.size != int(np.prod(shape))):
            raise CheckpointError(
                f"{source}: tensor {key} has shape {tuple(w.shape)}, expected {tuple(want)}"
            )
        w = np.asarray(fn(w, shape) if fn else w).astype(dtype)
        out[path] = w if place is None else place(path, w)
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensors: {', '.join(unexpected[:8])}"
            + (" ..." if len(unexpected) > 8 else "")
        )
    missing = sorted(set(expected) - set(out))
    if missing:
        raise CheckpointError(
            f"{source}: missing tensors for parameters: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "")
        )
    return out
