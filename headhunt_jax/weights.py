"""Hugging Face safetensors checkpoints -> Flax parameter trees.

Each family's ``KeyTable`` maps each HF key (after its layout prefix is shortened) to a path in the
params tree and a transform; the shared decoder's rows are ``DECODER_ROWS``. Every tensor is
checked: a missing, unexpected or wrongly shaped one is an error that names it.

Layers: the tree stacks each stack's layers on a leading axis (a subtree named ``layers``,
``models/stack.py``), while a checkpoint holds one tensor a layer. The tables address layer N's
tensors as ``.../layers_N/...`` (the layout of 0.1.0's trees), and ``convert`` puts each into
slice N of its stacked parameter (``layer_slot``, ``unstack_shapes``, ``stack_layers``).
"""

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from headhunt_jax import files
from headhunt_jax.errors import InputError

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


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded; the message names the file or tensor."""


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) from one .safetensors file, memory-mapped (bf16 via ml_dtypes). The
    header is checked whole before the first tensor: a file cut short or a damaged header is a
    ``CheckpointError`` naming the file (the format has no checksum of the tensors' bytes)."""
    path = Path(path)
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
        raw = f.read(n)
    header = files.parse_json(raw, path, "a safetensors header", error=CheckpointError)
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    tensors = [(name, _tensor_entry(path, name, meta)) for name, meta in header.items()]
    needed = max((end for _, (_, _, _, end) in tensors), default=0)
    if needed > data_size:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes, its header needs {8 + n + needed})"
        )
    mm = (
        np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(needed,)) if needed else None
    )
    for name, (dtype, shape, start, end) in tensors:
        yield name, mm[start:end].view(dtype).reshape(shape)


def _tensor_entry(path, name, meta) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of a header's entry, checked: a known dtype, a shape of
    non-negative integers and a byte range that holds exactly it."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (entry {name!r})")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype}")
    ok = (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    )
    if not ok:
        raise CheckpointError(f"{path}: corrupt safetensors header (tensor {name})")
    dt = np.dtype(_DTYPES[dtype])
    start, end = offsets
    if end - start != math.prod(shape) * dt.itemsize:
        raise CheckpointError(
            f"{path}: corrupt safetensors header (tensor {name}: {end - start} bytes for "
            f"{dtype} {shape})"
        )
    return dt, tuple(shape), start, end


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, sharded (with its index) or single."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        record = files.read_json(index, "a safetensors index", error=CheckpointError)
        weight_map = record.get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(s, str) and s for s in weight_map.values()
        ):
            raise CheckpointError(f"{index}: no weight_map of tensor names to shard file names")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
        return [directory / s for s in shards]
    files_ = sorted(directory.glob("*.safetensors"))
    if not files_:
        raise CheckpointError(f"{directory}: no .safetensors weight files")
    return files_


# ---------------------------------------------------------------------------------------------
# Transforms: each maps an HF tensor to the param's layout, and says which HF shape it expects
# for a given param shape (so a wrong shape is caught before reshaping).


def linear(w, shape):
    return w.T


def heads_in(w, shape):  # [N*H, E] -> [E, N, H]
    return w.T.reshape(shape)


def heads_out(w, shape):  # [E, N*H] -> [N, H, E]
    return w.T.reshape(shape)


def reshape(w, shape):
    return w.reshape(shape)


def conv(w, shape):  # [E, C, p, q] -> [C, p, q, E] (and [E, C, t, p, q] -> [C, t, p, q, E])
    return w.transpose(*range(1, w.ndim), 0)


def fused_heads_in(w, shape):  # [3*N*H, E] (q | k | v rows) -> [E, 3, N, H]
    return w.reshape(shape[1:] + shape[:1]).transpose(3, 0, 1, 2)


_HF_SHAPE: dict[Callable, Callable] = {
    linear: lambda s: (s[1], s[0]),
    heads_in: lambda s: (s[1] * s[2], s[0]),
    heads_out: lambda s: (s[2], s[0] * s[1]),
    conv: lambda s: (s[-1], *s[:-1]),
    fused_heads_in: lambda s: (s[1] * s[2] * s[3], s[0]),
}

_LM = "language_model"
# The shared decoder's keys (models/decoder.py), after a family's prefixes shorten its layout to
# "lm." (and "lm_head.").
DECODER_ROWS: list[tuple[str, str, Callable | None]] = [
    (r"lm\.embed_tokens\.weight", f"{_LM}/embed_tokens", None),
    (
        r"lm\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight",
        _LM + r"/layers_\1/attn/\2_proj/kernel",
        heads_in,
    ),
    (
        r"lm\.layers\.(\d+)\.self_attn\.([qkv])_proj\.bias",
        _LM + r"/layers_\1/attn/\2_proj/bias",
        reshape,
    ),
    (
        r"lm\.layers\.(\d+)\.self_attn\.o_proj\.weight",
        _LM + r"/layers_\1/attn/o_proj/kernel",
        heads_out,
    ),
    (  # Qwen3's per-head q/k RMSNorms, [head_dim]
        r"lm\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight",
        _LM + r"/layers_\1/attn/\2_norm/scale",
        None,
    ),
    (
        r"lm\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight",
        _LM + r"/layers_\1/mlp/\2_proj/kernel",
        linear,
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
    (r"lm_head\.weight", f"{_LM}/lm_head/kernel", linear),
]
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


_LAYER = re.compile(r"(^|/)layers_(\d+)/")
_STACKED = re.compile(r"(^|/)layers/")


def layer_slot(path: str) -> tuple[str, int] | None:
    """A layer's path -> (its stacked parameter's path, the layer), e.g.
    'vision/layers_3/fc1/kernel' -> ('vision/layers/fc1/kernel', 3); None if not a layer's."""
    m = _LAYER.search(path)
    if m is None:
        return None
    return path[: m.start()] + m.group(1) + "layers/" + path[m.end() :], int(m.group(2))


def unstack_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """{path: shape} with each stacked parameter [L, ...] replaced by its L layers' paths."""
    out = {}
    for path, shape in shapes.items():
        if _STACKED.search(path):
            for i in range(shape[0]):
                out[_STACKED.sub(rf"\1layers_{i}/", path, count=1)] = tuple(shape[1:])
        else:
            out[path] = tuple(shape)
    return out


def stack_layers(flat: dict[str, Any], stack: Callable[[str, list], Any] | None = None) -> dict:
    """{path: array} with layers' paths ('.../layers_N/...') -> stacked parameters: each stacked
    path gets ``stack(path, [layer 0, layer 1, ...])`` (default ``np.stack``); a gap in a stack's
    layers is an error (``convert`` checks them all against the model's shapes). Other paths are
    kept. The layers are taken out of ``flat`` as they
    are stacked, so that their memory is freed one parameter at a time."""
    stack = stack or (lambda _, parts: np.stack(parts))
    by_stack: dict[str, dict[int, str]] = {}
    for path in flat:
        slot = layer_slot(path)
        if slot is not None:
            by_stack.setdefault(slot[0], {})[slot[1]] = path
    out = {path: v for path, v in flat.items() if layer_slot(path) is None}
    for path, layers in by_stack.items():
        if sorted(layers) != list(range(len(layers))):
            gaps = sorted(set(range(max(layers) + 1)) - set(layers))
            raise CheckpointError(f"{path}: layers {gaps} missing (have {len(layers)})")
        out[path] = stack(path, [flat.pop(layers[i]) for i in range(len(layers))])
    return out


class KeyTable:
    """A family's HF keys -> param paths. ``prefixes``: (long, short) pairs that shorten the key
    layouts its checkpoints use, the first that matches wins; ``renames``: (regex, template)
    pairs applied after them, that bring another layout's names onto the rows' (the first that
    matches wins); ``splits``: (regex, templates) that cut a fused tensor into equal parts along
    its first axis, one short key each; ``rows``: (regex on the short key, param path template,
    transform)."""

    def __init__(self, rows, prefixes=(), renames=(), splits=()):
        self.rows = [(re.compile(pattern + "$"), target, fn) for pattern, target, fn in rows]
        self.prefixes = tuple(prefixes)
        self.renames = [(re.compile(pattern), target) for pattern, target in renames]
        self.splits = [(re.compile(pattern + "$"), tuple(parts)) for pattern, parts in splits]

    def normalize(self, key: str) -> str:
        for prefix, short in self.prefixes:
            if key.startswith(prefix):
                key = short + key[len(prefix) :]
                break
        for pattern, target in self.renames:
            renamed, n = pattern.subn(target, key, count=1)
            if n:
                return renamed
        return key

    def expand(self, key: str, w) -> Iterator[tuple[str, Any]]:
        """(short key, tensor) pairs of one checkpoint tensor: itself, or its fused parts."""
        short = self.normalize(key)
        for pattern, parts in self.splits:
            m = pattern.match(short)
            if m:
                if w.shape[0] % len(parts):
                    raise CheckpointError(
                        f"tensor {key} of shape {tuple(w.shape)} does not split in {len(parts)}"
                    )
                yield from zip((m.expand(p) for p in parts), np.split(w, len(parts)), strict=True)
                return
        yield short, w

    def map(self, key: str) -> tuple[str, Callable | None] | None:
        """HF key -> (param path 'a/b/c', transform), or None if no row matches."""
        short = self.normalize(key)
        for pattern, target, fn in self.rows:
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
    table: KeyTable | None = None,
    stack: Callable[[str, list], Any] | None = None,
) -> dict[str, Any]:
    """Maps HF tensors onto the expected flat param shapes {path: shape} by ``table`` (a family's
    ``KeyTable``; default: the text family's); raises on any mismatch.

    ``place(path, array)``, when given, receives each converted tensor as soon as it is ready
    (e.g. to put it on its devices) and its result is kept instead, so the host holds one
    converted tensor at a time, not the whole tree. A layer's tensor comes with its layer's path
    ('.../layers_N/...'); once all are in, ``stack(path, placed layers)`` (default ``np.stack``)
    makes each stacked parameter.
    """
    if table is None:
        table = TEXT_TABLE
    expected = unstack_shapes(expected)  # each layer's tensor is checked on its own
    out: dict[str, Any] = {}
    unexpected = []
    for key, w in tensors:
        if _IGNORED.match(key):
            continue
        try:
            parts = list(table.expand(key, w))
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None
        for short, w in parts:
            mapped = table.map(short)
            if mapped is None or mapped[0] not in expected:
                if tied_embeddings and short == "lm_head.weight":
                    continue  # a tied head saved explicitly is the embedding again
                unexpected.append(key)
                continue
            path, fn = mapped
            shape = tuple(expected[path])
            want = (
                _HF_SHAPE[fn](shape)
                if fn in _HF_SHAPE
                else tuple(w.shape)
                if fn is reshape
                else shape
            )
            if tuple(w.shape) != tuple(want) or (fn is reshape and w.size != int(np.prod(shape))):
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
    return stack_layers(out, stack)


# Qwen2/Qwen3/Llama causal LMs: ``model.*`` is the decoder, ``lm_head.*`` its head.
TEXT_TABLE = KeyTable(DECODER_ROWS, [("model.", "lm."), ("lm_head.", "lm_head.")])
