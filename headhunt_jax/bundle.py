"""One orbax checkpoint directory holding a pytree of arrays and a JSON dict: how scorers and
detectors are saved."""

from pathlib import Path

import orbax.checkpoint as ocp


def write_bundle(path, arrays, meta, overwrite):
    """One orbax checkpoint at path: a pytree of arrays and a JSON dict."""
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            Path(path).absolute(),
            ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
            force=overwrite,
        )


def read_bundle(path):
    """(arrays, meta) written by write_bundle."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(
            path, ocp.args.Composite(arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
        )
    return restored.arrays, restored.meta
