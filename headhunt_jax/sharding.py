"""Device meshes and where each parameter and input lives on them.

A mesh has two axes: 'data' splits the batch (each group of devices along it runs its own
slice of the clips) and 'model' splits the large weights (attention heads, MLP and vocabulary
columns), so one code path runs on one CPU, a GPU host or a TPU pod slice; only the mesh
changes.

Every parameter carries logical axis names (``models/layers.py``); ``RULES`` maps them to mesh
axes, in order of priority, as flax's ``logical_to_mesh_axes`` does, with one difference: the
choice is made per parameter from its shape. A rule applies only if its mesh axis divides the
dimension and is not yet used by that parameter; a dimension that no rule fits is replicated.
A matrix that the rules leave whole along 'model' falls back to ``MATRIX_FALLBACK`` (its
``embed`` axis on 'model'), so no large weight is held whole by every device; vectors (norm
scales, biases) are small and stay replicated. A stack of layers' parameters (leading axis
``layers``, ``models/stack.py``) is placed as one layer's: its layer axis stays whole, so every
device holds its share of every layer and a scan over the layers needs no communication. E.g. InternVL3-8B (28 heads, 4 kv heads,
vocabulary 151674, odd): on model=4 every head axis splits and the embedding table falls back;
on model=8 the attention matrices fall back too, which costs an all-reduce per projection, so
a model size that divides the head counts is the faster choice.
"""

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from headhunt_jax.models.stack import LAYERS

AXES = ("data", "model")
BATCH_AXIS = "data"

# (logical axis, mesh axis or None = replicated), highest priority first; every logical name
# used by the models is listed, so a new one cannot be replicated silently.
RULES: tuple[tuple[str, str | None], ...] = (
    (LAYERS, None),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vision_mlp", "model"),
    ("vocab", "model"),
    ("embed", None),
    ("head_dim", None),
    ("qkv", None),
    ("positions", None),
    ("channels", None),
    ("patch", None),
)
MATRIX_FALLBACK: tuple[tuple[str, str], ...] = (("embed", "model"),)


def make_mesh(data: int = -1, model: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ('data', 'model') mesh over ``devices``; -1 for one axis takes all remaining devices.

    ``devices`` defaults to this process's devices (``jax.local_devices()``): with several
    processes each one holds its own replica and extracts its own videos
    (``distributed.shard_videos``). Devices are ordered for the interconnect by
    ``jax.make_mesh`` (rings on TPU).
    """
    devices = list(jax.local_devices() if devices is None else devices)
    n = len(devices)
    sizes = {"data": data, "model": model}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1 or any(v < 1 and v != -1 for v in sizes.values()):
        raise ValueError(f"mesh sizes must be positive, one of them may be -1; got {sizes}")
    if free:
        rest = math.prod(v for v in sizes.values() if v != -1)
        if n % rest:
            fixed = " x ".join(f"{k}={v}" for k, v in sizes.items() if v != -1)
            raise ValueError(f"{n} device(s) cannot be split into a mesh with {fixed}")
        sizes[free[0]] = n // rest
    if math.prod(sizes.values()) != n:
        raise ValueError(
            f"mesh data={sizes['data']} x model={sizes['model']} needs "
            f"{sizes['data'] * sizes['model']} devices, got {n}"
        )
    # Auto axes: the compiler propagates shardings from the parameters and inputs, so the
    # models need no sharding annotations.
    return jax.make_mesh(
        (sizes["data"], sizes["model"]), AXES, (AxisType.Auto, AxisType.Auto), devices=devices
    )


def partition_spec(
    names: Sequence[str],
    shape: Sequence[int],
    axis_sizes: Mapping[str, int],
    rules: Sequence[tuple[str, str | None]] = RULES,
) -> PartitionSpec:
    """The mesh axes of one array from its logical axis ``names`` and ``shape`` (see module doc).

    ``axis_sizes``: {mesh axis: size}, e.g. ``mesh.shape``.
    """
    known = {logical for logical, _ in rules}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"logical axes {unknown} have no sharding rule (rules cover {known})")
    spec: list[str | None] = [None] * len(names)
    # a matrix is two axes or more besides the layer axis: a stack of vectors is still vectors
    matrix_rules = tuple(MATRIX_FALLBACK) if sum(n != LAYERS for n in names) >= 2 else ()
    for logical, mesh_axis in (*rules, *matrix_rules):
        if mesh_axis is None or mesh_axis in spec:
            continue
        for i, name in enumerate(names):
            if name == logical and spec[i] is None and shape[i] % axis_sizes[mesh_axis] == 0:
                spec[i] = mesh_axis
                break
    return PartitionSpec(*spec)


def param_shardings(boxed_params, mesh: Mesh, rules: Sequence = RULES):
    """NamedSharding per parameter, the tree of ``backbone.abstract_params(model, boxed=True)``
    without its boxes (the structure of ``Backbone.params``)."""

    def one(leaf):
        if not isinstance(leaf, nn.LogicallyPartitioned):
            raise TypeError(f"expected parameters boxed with logical axis names, got {leaf!r}")
        return NamedSharding(mesh, partition_spec(leaf.names, leaf.value.shape, mesh.shape, rules))

    return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def put_sharded(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array -> a global array; each device receives only its own shard (also across
    processes: every process passes the same array and fills its own devices)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def shard_batch(mesh: Mesh, array) -> jax.Array:
    """[N, ...] host array -> [N', ...] split over 'data', N' = N rounded up to a multiple of the
    'data' size; the added rows are zeros, and the caller drops what they produce."""
    array = np.asarray(array)
    array = array.astype(jax.dtypes.canonicalize_dtype(array.dtype), copy=False)
    size = mesh.shape[BATCH_AXIS]
    pad = -len(array) % size
    if pad:
        array = np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)])
    return put_sharded(array, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))


def check_labels(labels, n: int, of: str) -> None:
    """The shape and dtype checks of per-clip labels [N] (``of``: the array whose first axis is
    N), made while tracing too (a ValueError)."""
    if labels.shape != (n,):
        raise ValueError(
            f"labels must be [N] with N = {n} ({of}'s first axis), got shape {labels.shape}"
        )
    if labels.dtype != bool and not (
        jax.numpy.issubdtype(labels.dtype, jax.numpy.integer)
        or jax.numpy.issubdtype(labels.dtype, jax.numpy.floating)
    ):
        raise ValueError(f"labels must be 0/1 integers (or bool), got {labels.dtype}")


def place_items(x, mesh: Mesh, per_chunk: int | None, default_per_chunk):
    """Items scored one by one in chunks, split over a mesh (the hunt's heads, the probe's
    layers): x [N, T, D] (a numpy array, or traced) -> (float32 [N, P, D], items a chunk).

    The T items are padded to P, a multiple of the mesh's devices times the items a chunk
    (``per_chunk``, or ``default_per_chunk(items a device)``), and split over all of the mesh's
    axes along P, each device receiving only its items. Padding repeats the first items, so that
    every device scans chunks of one shape; the caller drops their results (each item is scored
    on its own, so padding changes none). A traced x is padded by indexing; placing it is the
    user's jit's."""
    n, total, dim = x.shape
    per_device = -(-total // mesh.size)
    per_chunk = default_per_chunk(per_device) if per_chunk is None else per_chunk
    per_chunk = min(int(per_chunk), per_device)
    padded = mesh.size * per_chunk * -(-per_device // per_chunk)
    index = np.arange(padded) % total
    if isinstance(x, jax.core.Tracer):
        x = x.astype(jax.numpy.float32)
        return (x if padded == total else x[:, index]), per_chunk
    x = x.astype(np.float32, copy=False)
    spec = NamedSharding(mesh, PartitionSpec(None, tuple(mesh.axis_names), None))
    placed = jax.make_array_from_callback((n, padded, dim), spec, lambda i: x[:, index[i[1]]])
    return placed, per_chunk


def map_items(score, x, per_chunk: int, mesh: Mesh, *shared):
    """``score(block, *shared)`` -> [per_chunk, C] over every chunk of x [N, P, D] (placed by
    ``place_items``: P split over all of the mesh's axes), each device scoring only its own
    items, a chunk at a time (``lax.map``: memory is one chunk's); returns [P, C]. ``shared``:
    arrays every device gets whole. Matmuls run at full float32 precision: GPUs and TPUs would
    otherwise multiply float32 in TF32 / bfloat16 passes, far from 1e-5."""
    axes = tuple(mesh.axis_names)

    def local(x, *shared):  # x [N, P / devices, D]: this device's items
        def chunk(start):
            return score(jax.lax.dynamic_slice_in_dim(x, start, per_chunk, axis=1), *shared)

        out = jax.lax.map(chunk, jax.numpy.arange(0, x.shape[1], per_chunk))
        return out.reshape(-1, out.shape[-1])

    specs = (PartitionSpec(None, axes, None), *(PartitionSpec() for _ in shared))
    with jax.default_matmul_precision("highest"):
        run = jax.shard_map(
            local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(axes), check_vma=False
        )
        return run(x, *shared)
