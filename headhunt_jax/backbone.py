"""The frozen backbone: loading it (HF checkpoints, Hub ids or converted ones) and saving it
converted. The forward API (head features, logits) is ``headhunt_jax.features``."""

import contextlib
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from headhunt_jax import backbones, files, hub, paths, sharding, weights
from headhunt_jax.models.decoder import DecoderConfig
from headhunt_jax.models.layers import ATTENTION_IMPLS

CONVERTED_CONFIG = "headhunt_backbone.json"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params"],
    meta_fields=["model", "name", "path", "mesh", "hub_ref", "origin"],
)
@dataclasses.dataclass(frozen=True)
class Backbone:
    """A loaded backbone: its Flax module, its parameters and where it came from.

    ``path`` is the checkpoint directory (tokenizer files live there); ``name`` identifies the
    backbone in detector bundles. ``mesh``: the devices the parameters are sharded over (by
    ``sharding.RULES``); None: one device. ``hub_ref``: ``org/name@commit`` when it was loaded
    by a Hub id (``hub.resolve``), which names the same snapshot again. ``origin``: the URL of
    a checkpoint read from a bucket (``path`` is then its local copy).

    A pytree: the parameters are its leaves, everything else is static, so a backbone passes
    into the user's ``jax.jit`` and ``jax.grad`` as an argument (``bb.params`` included).
    """

    model: nn.Module
    params: Any
    name: str
    path: Path | None = None
    mesh: Mesh | None = None
    hub_ref: str | None = None
    origin: str | None = None

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
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))
    params = variables["params"]
    return params if boxed else nn.meta.unbox(params)


def random_params(model: nn.Module, seed: int = 0):
    """Random parameters (for tests, demos and benchmarks)."""
    inputs = backbones.for_config(model.cfg).init_inputs(model.cfg)
    init = jax.jit(lambda key: nn.meta.unbox(model.init(key, **inputs)["params"]))
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
        return dataclasses.replace(bb, hub_ref=source.hub_ref, origin=source.origin)
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
    where = paths.of(source.origin) if source.origin else path
    name = name or source.repo_id or cfg.get("_name_or_path") or where.name
    return Backbone(model, params, name, path, mesh, source.hub_ref, source.origin)


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
    if paths.is_url(out):  # orbax's own drivers reach gs:// only: written here, then uploaded
        with contextlib.suppress(FileNotFoundError):
            (paths.of(out) / files.MANIFEST).unlink()  # an upload cut short leaves no manifest
        with paths.staged(out, last=files.MANIFEST) as local:
            save_converted(bb, local)
        return paths.of(out)
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


def _this_process_only():
    """orbax's options for a checkpoint that this process reads on its own: with several JAX
    processes, each restores its own replica (``distributed``), so none waits at orbax's barriers
    for the others (which would run a collective over every process's devices)."""
    import orbax.checkpoint as ocp

    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


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
    with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as ckpt:
        with files.orbax_errors(where, manifest):
            tree = ckpt.metadata(where).item_metadata
        if tree is None:  # orbax could not read it (and logged why); the restore names the file
            files.quiet_abandoned_reads()
        stored = flax.traverse_util.flatten_dict(dict(tree or {}), sep="/")
        # Written before the layers were stacked (0.1.0 on): one layers_N subtree a layer.
        unstacked = any(weights.layer_slot(key) for key in stored)
        shapes = param_shapes(model)
        shapes = weights.unstack_shapes(shapes) if unstacked else shapes
        # Every parameter's place on this process's devices, whatever devices wrote it: orbax
        # reads each device's shards into place (without one it takes the writer's devices).
        shardings = _flat_shardings(model, mesh)
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {
            key: jax.ShapeDtypeStruct(shape, model.dtype, sharding=shardings.get(key, one_device))
            for key, shape in shapes.items()
        }
        with files.orbax_errors(where, manifest):
            flat = ckpt.restore(where, flax.traverse_util.unflatten_dict(target, sep="/"))
    flat = flax.traverse_util.flatten_dict(flat, sep="/")
    if unstacked:
        flat = weights.stack_layers(flat, _stacker(shardings))
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
    return Backbone(model, params, name or meta.get("name") or path.name, path, mesh)
