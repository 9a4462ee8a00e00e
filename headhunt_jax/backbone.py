"""The frozen backbone: loading (HF checkpoints or converted ones) and per-head features."""

import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from headhunt_jax import backbones, files, hub, sharding, weights
from headhunt_jax.models.decoder import DecoderConfig, last_position_heads
from headhunt_jax.models.layers import ATTENTION_IMPLS

CONVERTED_CONFIG = "headhunt_backbone.json"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params"],
    meta_fields=["model", "name", "path", "mesh", "hub_ref"],
)
@dataclasses.dataclass(frozen=True)
class Backbone:
    """A loaded backbone: its Flax module, its parameters and where it came from.

    ``path`` is the checkpoint directory (tokenizer files live there); ``name`` identifies the
    backbone in detector bundles. ``mesh``: the devices the parameters are sharded over (by
    ``sharding.RULES``); None: one device. ``hub_ref``: ``org/name@commit`` when it was loaded
    by a Hub id (``hub.resolve``), which names the same snapshot again.

    A pytree: the parameters are its leaves, everything else is static, so a backbone passes
    into the user's ``jax.jit`` and ``jax.grad`` as an argument (``bb.params`` included).
    """

    model: nn.Module
    params: Any
    name: str
    path: Path | None = None
    mesh: Mesh | None = None
    hub_ref: str | None = None

    @property
    def config(self):
        return self.model.cfg

    @property
    def family(self) -> backbones.Family:
        return backbones.for_config(self.config)

    @property
    def text_config(self) -> DecoderConfig:
        return self.config.text

    def processor(self, image_size: int | None = None, **options) -> backbones.Processor:
        """The family's processor (frames + prompt -> inputs), with this checkpoint's tokenizer;
        ``options``: the family's own (e.g. Qwen2.5-VL's ``mode``)."""
        if self.family.processor is None:
            raise ValueError(
                f"{self.name} is text-only: extraction needs a vision-language backbone"
            )
        if self.path is None:
            raise ValueError(f"{self.name}: no checkpoint directory to read its tokenizer from")
        return self.family.processor(self.config, self.path, image_size, **options)

    @property
    def num_layers(self) -> int:
        return self.text_config.num_layers

    @property
    def num_heads(self) -> int:
        return self.text_config.num_heads

    @property
    def head_dim(self) -> int:
        return self.text_config.head_dim

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def fingerprint(self) -> str:
        """``fingerprint(self.config)``: the same for a model under any name or path."""
        return fingerprint(self.config)


def fingerprint(config) -> str:
    """A short hash of an architecture, version 1 (the same since 0.1.0).

    The sha256 of the config's fields as sorted JSON. A field added to a config after 0.1.0 is
    declared with ``metadata={"added": True}`` and counts only where it differs from its default,
    so that a new field keeps every existing fingerprint (and the stores and detectors that
    record one) valid. A field declared with ``metadata={"fingerprint": False}`` never counts:
    it bounds where the numbers hold without changing them."""
    text = json.dumps(_canonical(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(value):
    if dataclasses.is_dataclass(value):
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("fingerprint", True)
            and not (f.metadata.get("added") and getattr(value, f.name) == f.default)
        }
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    return value


def _dtype(dtype) -> Any:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    return jnp.dtype(dtype).type


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def attention_impl(attention: str, dtype) -> str:
    """'auto': cuDNN flash attention on NVIDIA GPUs in bf16/fp16, chunked attention elsewhere."""
    if attention != "auto" and attention not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be 'auto' or one of {ATTENTION_IMPLS}, got {attention!r}")
    if attention == "auto":
        half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        return "cudnn" if half and jax.default_backend() == "gpu" else "chunked"
    return attention


def make_model(cfg, dtype=jnp.float32, attention: str = "auto") -> nn.Module:
    """The Flax module of a family's config."""
    dtype = _dtype(dtype)
    return backbones.for_config(cfg).module(cfg, dtype, attention_impl(attention, dtype))


def config_from_hf(cfg: dict, directory=None):
    """Our config for a HF ``config.json`` dict, by its family (``backbones.FAMILIES``);
    ``directory``: the checkpoint's, for what its format keeps outside config.json."""
    family = backbones.for_model_type(cfg.get("model_type"))
    if directory is not None and family.checkpoint_config is not None:
        cfg = family.checkpoint_config(cfg, directory)
    return family.config_type.from_hf(cfg)


def preset(name: str):
    """The config of a released size of any family (e.g. 'InternVL3-8B'), for benchmarks."""
    known = backbones.presets()
    if name not in known:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(known)})")
    return known[name]


def param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Flat {'a/b/c': shape} of the model's parameters, from an abstract init (no memory)."""
    tree = abstract_params(model)
    return {"/".join(k): tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def abstract_params(model: nn.Module, boxed: bool = False):
    """Shape/dtype tree of the parameters; ``boxed`` keeps the logical-axis metadata."""
    inputs = backbones.for_config(model.cfg).init_inputs(model.cfg)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs, logits=True))
    params = variables["params"]
    return params if boxed else nn.meta.unbox(params)


def random_params(model: nn.Module, seed: int = 0):
    """Random parameters (for tests, demos and benchmarks)."""
    inputs = backbones.for_config(model.cfg).init_inputs(model.cfg)
    init = jax.jit(lambda key: nn.meta.unbox(model.init(key, **inputs, logits=True)["params"]))
    return init(jax.random.key(seed))


def _read_config(path: Path) -> dict:
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory (a backbone is a checkpoint directory)")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise weights.CheckpointError(
            f"{path}: no config.json (not a Hugging Face checkpoint directory)"
        )
    return files.read_json(cfg_file, "a Hugging Face config", error=weights.CheckpointError)


def _param_shardings(model: nn.Module, mesh: Mesh):
    return sharding.param_shardings(abstract_params(model, boxed=True), mesh)


def load_backbone(
    path,
    dtype="float32",
    name: str | None = None,
    attention: str = "auto",
    mesh: Mesh | None = None,
) -> Backbone:
    """Loads a backbone from a HF checkpoint directory, a Hub id (``org/name[@revision]``, through
    the ``huggingface_hub`` cache: ``hub.resolve``) or a directory written by ``convert``.

    HF: ``config.json`` + safetensors (single or sharded) of any family's model (its
    ``model_type`` picks the family, ``backbones.FAMILIES``; the family's key table reads the
    tensors). ``dtype``: 'float32' or 'bfloat16'
    (the parameters and the compute). ``attention``: 'auto', 'chunked', 'xla' or 'cudnn' (see
    ``attention_impl``). ``mesh`` (``sharding.make_mesh``): each parameter goes straight to its
    shards by ``sharding.RULES``, so no device ever holds the whole tree; None: one device.
    """
    source = hub.resolve(path)
    path = source.path
    if (path / CONVERTED_CONFIG).exists():
        bb = _load_converted(path, dtype, name or source.repo_id, attention, mesh)
        return dataclasses.replace(bb, hub_ref=source.hub_ref)
    cfg = _read_config(path)
    model = make_model(config_from_hf(cfg, path), dtype, attention)
    tied = model.cfg.text.tie_word_embeddings
    tensors = (
        item for f in weights.safetensors_files(path) for item in weights.read_safetensors(f)
    )
    shardings = _flat_shardings(model, mesh)
    if mesh is None:
        place = lambda _, w: jnp.asarray(w)  # noqa: E731
    else:  # each tensor straight to its shards: the host never holds the converted tree
        place = lambda key, w: sharding.put_sharded(w, shardings[key])  # noqa: E731
    flat = weights.convert(
        tensors,
        param_shapes(model),
        jnp.dtype(_dtype(dtype)),
        str(path),
        tied,
        place,
        table=backbones.for_config(model.cfg).keys,
        stack=_stacker(shardings),
    )
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
    name = name or source.repo_id or cfg.get("_name_or_path") or path.name
    return Backbone(model, params, name, path, mesh, source.hub_ref)


def _flat_shardings(model: nn.Module, mesh: Mesh | None) -> dict:
    """{path: NamedSharding} of every parameter, and of every layer of a stacked one under its
    layer's path ('.../layers_N/...': the stacked sharding without its layer axis, which the
    rules keep whole); empty without a mesh."""
    if mesh is None:
        return {}
    flat = flax.traverse_util.flatten_dict(_param_shardings(model, mesh), sep="/")
    for key in weights.unstack_shapes(param_shapes(model)):
        slot = weights.layer_slot(key)
        if slot is not None:
            flat[key] = NamedSharding(mesh, PartitionSpec(*flat[slot[0]].spec[1:]))
    return flat


def _stacker(shardings: dict):
    """``stack`` for ``weights.convert`` / ``weights.stack_layers``: placed layers -> the stacked
    parameter, on each device from its own shards of the layers (with a mesh)."""
    if not shardings:
        return lambda _, parts: jnp.stack(parts)
    return lambda key, parts: jax.jit(jnp.stack, out_shardings=shardings[key])(parts)


def save_converted(bb: Backbone, out) -> Path:
    """Writes the parameters with orbax plus a small JSON config; copies the tokenizer and
    processor files; then ``sha256.json``, the hash of each of those files
    (``files.write_manifest``), which loading checks."""
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    files.remove_manifest(out)  # a write cut short leaves no manifest of other files
    meta = {
        "kind": bb.family.name,
        "name": bb.name,
        "dtype": _dtype_name(bb.dtype),
        "config": _config_dict(bb.model.cfg),
    }
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(out / "params", bb.params, force=True)
    (out / CONVERTED_CONFIG).write_text(json.dumps(meta, indent=2))
    written = [out / CONVERTED_CONFIG, *(p for p in (out / "params").rglob("*") if p.is_file())]
    if bb.path is not None:
        for f in hub.PROCESSOR_FILES:
            if (bb.path / f).exists():
                if not (out / f).exists() or not (bb.path / f).samefile(out / f):
                    shutil.copy2(bb.path / f, out / f)
                written.append(out / f)
    files.write_manifest(out, written)
    return out


def _config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _load_converted(path: Path, dtype, name, attention, mesh) -> Backbone:
    """A directory written by ``save_converted``: its files checked against its ``sha256.json``
    (none in one written before it existed) and read; a damaged one is an error naming it."""
    import orbax.checkpoint as ocp

    manifest = files.check_manifest(path)
    meta_file = path / CONVERTED_CONFIG
    meta = files.read_json(meta_file, "a converted backbone's config")
    if not isinstance(meta.get("kind"), str) or not isinstance(meta.get("config"), dict):
        raise weights.CheckpointError(f"{meta_file}: no kind and config (not written by convert)")
    try:
        config = backbones.for_name(meta["kind"]).config_type.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise weights.CheckpointError(f"{meta_file}: a damaged config ({e})") from None
    model = make_model(config, dtype, attention)
    where = path.absolute() / "params"
    files.check_orbax_json(where)
    with ocp.StandardCheckpointer() as ckpt:
        with files.orbax_errors(where, manifest):
            tree = ckpt.metadata(where).item_metadata
        if tree is None:  # orbax could not read it (and logged why); the restore names the file
            files.quiet_abandoned_reads()
        stored = flax.traverse_util.flatten_dict(dict(tree or {}), sep="/")
        # Written before the layers were stacked (0.1.0 on): one layers_N subtree a layer.
        unstacked = any(weights.layer_slot(key) for key in stored)
        shapes = param_shapes(model)
        shapes = weights.unstack_shapes(shapes) if unstacked else shapes
        shardings = _flat_shardings(model, mesh)  # orbax reads each device's shards into place
        target = {
            key: jax.ShapeDtypeStruct(shape, model.dtype, sharding=shardings.get(key))
            for key, shape in shapes.items()
        }
        with files.orbax_errors(where, manifest):
            flat = ckpt.restore(where, flax.traverse_util.unflatten_dict(target, sep="/"))
    flat = flax.traverse_util.flatten_dict(flat, sep="/")
    if unstacked:
        flat = weights.stack_layers(flat, _stacker(shardings))
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
    return Backbone(model, params, name or meta.get("name") or path.name, path, mesh)


# ---------------------------------------------------------------------------------------------


def layer_indices(bb: Backbone, layers) -> tuple[int, ...]:
    """The layers asked for as a tuple (all when None); out-of-range indices are an error."""
    n = bb.num_layers
    if layers is None:
        return tuple(range(n))
    layers = tuple(int(i) for i in np.atleast_1d(layers))
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers:
        raise ValueError(f"layers must be non-empty indices in [0, {n}), got {list(layers)}")
    return layers


@functools.partial(jax.jit, static_argnames=("model", "layers", "prefix"))
def forward(model, params, prompt_ids, vision_inputs, layers, prefix=None, positions=None):
    """The one forward path: per-head features [M, B, len(layers), N, H] at the last position of
    each of M prompts' ids [B, T_m]. ``prefix`` None: one pass over each prompt (M = 1) with the
    vision inputs; else the first ``prefix`` tokens (the same in every prompt, holding every
    vision placeholder) run once with the vision inputs, keeping each layer's keys and values up
    to the deepest layer asked for, and each prompt's remaining tokens run against them.
    ``positions``: each prompt's rotary positions [B, T_m(, 3)] (a family's ``prepare``), or None
    for consecutive ones."""
    depth = max(layers) + 1
    variables = {"params": params}
    positions = (None,) * len(prompt_ids) if positions is None else positions
    cache, vision = None, vision_inputs
    if prefix is not None:
        head = prompt_ids[0][:, :prefix]
        first = None if positions[0] is None else positions[0][:, :prefix]
        cache = model.apply(
            variables, head, depth=depth, kv_only=True, positions=first, **vision_inputs
        )
        prompt_ids, vision = tuple(ids[:, prefix:] for ids in prompt_ids), {}
        positions = tuple(None if p is None else p[:, prefix:] for p in positions)
    return _heads_after(model, variables, prompt_ids, cache, positions, layers, vision)


def _heads_after(model, variables, prompt_ids, cache, positions, layers, vision):
    """[M, B, len(layers), N, H]: each prompt's ids run against a prefix's keys and values
    (``cache``, layers < the deepest asked for; None: no prefix) at its positions."""
    depth = max(layers) + 1
    out = []
    for ids, pos in zip(prompt_ids, positions, strict=True):
        heads = model.apply(variables, ids, depth=depth, prefix_kv=cache, positions=pos, **vision)
        out.append(last_position_heads(heads, layers))
    return jnp.stack(out)


@functools.partial(jax.jit, static_argnames=("model", "layers"))
def heads_after_prefix(model, params, ids, keys, values, positions, layers):
    """``forward``'s per-prompt pass for ids [B, T] after a prefix whose keys and values of
    every layer were computed already (``generation.prefill``): [B, len(layers), N, H]."""
    depth = max(layers) + 1
    cache = (keys[:depth], values[:depth])
    out = _heads_after(model, {"params": params}, (ids,), cache, (positions,), layers, {})
    return out[0]


def vision_inputs(pixel_values=None, **inputs) -> dict:
    """The vision keyword inputs that are given (None ones dropped)."""
    return {k: v for k, v in {"pixel_values": pixel_values, **inputs}.items() if v is not None}


def _traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_inputs(bb: Backbone, input_ids, vision: dict) -> None:
    """Raises a clear ValueError when input_ids and the vision inputs do not fit together. While
    tracing, the shapes are checked; the family's checks of values (placeholder counts) need
    concrete inputs and run on eager calls."""
    if np.ndim(input_ids) != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {np.shape(input_ids)}")
    check_length(bb, np.shape(input_ids)[1])
    if _traced(input_ids, *vision.values()):
        if bb.family.prepare is not None:
            raise ValueError(
                f"{bb.name}: this family computes its positions on the host from input_ids and "
                "the vision inputs (prepare), so head_features cannot be traced for it"
            )
        return
    bb.family.check_inputs(bb.config, input_ids, vision)


def check_length(bb: Backbone, tokens: int) -> None:
    """Refuses sequences longer than the positions the decoder's numbers hold for
    (``DecoderConfig.max_positions``: past them dynamic rope scaling would change them)."""
    limit = bb.text_config.max_positions
    if limit and tokens > limit:
        raise ValueError(
            f"{tokens} tokens: {bb.name} computes the numbers of its checkpoint up to {limit} "
            "positions (past them its dynamic rope scaling changes them, which is not supported)"
        )


def prepare_inputs(bb: Backbone, prompt_ids, vision: dict, attention_mask=None):
    """The checked HF keyword inputs -> (the module's vision inputs, each prompt's positions or
    None), by the family's ``prepare`` (on the host). ``attention_mask`` (one prompt, left
    padding 0): positions skip the padding; a family without ``prepare`` then counts the real
    tokens, as transformers does."""
    if bb.family.prepare is not None:
        ids = [np.asarray(i) for i in prompt_ids]
        if attention_mask is None:
            return bb.family.prepare(bb.config, ids, vision)
        return bb.family.prepare(bb.config, ids, vision, attention_mask=attention_mask)
    if attention_mask is None:
        return vision, None
    mask = np.asarray(attention_mask) != 0
    return vision, [np.where(mask, np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)]


def head_features(bb: Backbone, input_ids, pixel_values=None, layers=None, **inputs):
    """Every head's attention output before ``o_proj``, at the last position of each sequence.

    input_ids [B, T] int; the vision inputs under the HF model's own keyword names, as arrays
        ``pixel_values_videos``, ... for other families), or none for text. Returns float32
    [B, len(layers), heads, head_dim]; layers default to all. The forward stops at the deepest
    layer asked for. Compiled once per shape and layer set.

    On a sharded backbone (``bb.mesh``) the samples and each vision input are split over the
    mesh's 'data' axis, each padded with zeros to a multiple of its size: padding comes after
    every real sample and image in reading order, so no real sample sees it, and its rows are
    dropped. The mesh must be this process's devices; several processes each extract their own
    videos.
    """
    vision = vision_inputs(pixel_values, **inputs)
    check_inputs(bb, input_ids, vision)
    vision, positions = prepare_inputs(bb, [input_ids], vision)
    (ids,), placed, positions = place_batch(bb, [input_ids], vision, positions)
    out = forward(bb.model, bb.params, (ids,), placed, layer_indices(bb, layers), None, positions)
    return out[0, : len(input_ids)]


def place_batch(bb: Backbone, ids_list, vision: dict, positions=None):
    """input_ids arrays, vision inputs and positions (one a prompt, or None) on the backbone's
    devices: split over the mesh's 'data' axis (each padded with zeros to a multiple of its size)
    when it has a mesh. Returns (tuple of ids, dict of vision inputs; empty ones dropped,
    tuple of positions or None)."""
    if bb.mesh is not None and bb.mesh.is_multi_process:
        raise ValueError(
            "head features need a mesh of this process's own devices (make_mesh() without "
            "devices); with several processes, each extracts its own share of the videos"
        )
    traced = _traced(*ids_list, *vision.values())
    if bb.mesh is None or traced:  # under the user's jit, the placement is jit's
        place = jnp.asarray
    else:
        place = functools.partial(sharding.shard_batch, bb.mesh)
    ids = tuple(
        place(jnp.asarray(i, jnp.int32) if traced else np.asarray(i, np.int32)) for i in ids_list
    )
    placed = {k: place(v) for k, v in vision.items() if np.shape(v)[0] > 0}
    return ids, placed, None if positions is None else tuple(place(p) for p in positions)


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model, params, input_ids, vision, positions):
    return model.apply({"params": params}, input_ids, logits=True, positions=positions, **vision)


def logits(bb: Backbone, input_ids, pixel_values=None, **inputs):
    """Full-model logits [B, T, vocab] (for checking the port; detection never needs them)."""
    vision = vision_inputs(pixel_values, **inputs)
    check_inputs(bb, input_ids, vision)
    vision, positions = prepare_inputs(bb, [input_ids], vision)
    placed = {k: jnp.asarray(v) for k, v in vision.items()}
    positions = None if positions is None else jnp.asarray(positions[0])
    return _logits(bb.model, bb.params, jnp.asarray(input_ids, jnp.int32), placed, positions)
