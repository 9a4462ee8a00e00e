"""One orbax checkpoint directory holding a pytree of arrays and a JSON dict: how scorers and
detectors are saved."""

from pathlib import Path

import orbax.checkpoint as ocp

from headhunt_jax.errors import InputError, UserError


class BundleError(UserError):
    """A directory that is not a bundle (or not of the kind asked for); the message names it."""


def write_bundle(path, arrays, meta, overwrite):
    """One orbax checkpoint at path: a pytree of arrays and a JSON dict. An existing path is an
    InputError (a ValueError) unless ``overwrite``."""
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (overwrite it with --overwrite)")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            path,
            ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
            force=overwrite,
        )


def read_bundle(path):
    """(arrays, meta) written by write_bundle."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(
                path,
                ocp.args.Composite(arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
            )
    except KeyError as e:  # orbax: an item of the composite is not there
        raise BundleError(f"{path}: not a bundle written by headhunt-jax ({e.args[0]})") from None
    return restored.arrays, restored.meta
