"""One orbax checkpoint directory holding a pytree of arrays and a JSON dict: how scorers and
detectors are saved. ``sha256.json`` at its root (``files.write_manifest``, written last) records
every file's hash; loading checks it first and names a changed file. Bundles written before it
existed have none and load as before. A bundle on a bucket (a ``paths`` URL) is written locally
and uploaded, manifest last; read from a local copy (``paths.local_copy``)."""

import contextlib
from pathlib import Path

import orbax.checkpoint as ocp

from headhunt_jax import files, paths
from headhunt_jax.errors import InputError, UserError


class BundleError(UserError):
    """A directory that is not a bundle (or not of the kind asked for); the message names it."""


def write_bundle(path, arrays, meta, overwrite):
    """One orbax checkpoint at path: a pytree of arrays and a JSON dict, then its manifest. An
    existing path is an InputError (a ValueError) unless ``overwrite``."""
    if paths.is_url(path):
        _upload(path, arrays, meta, overwrite)
        return
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (overwrite it with --overwrite)")
    if path.is_dir():
        files.remove_manifest(path)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            path,
            ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
            force=overwrite,
        )
    files.write_manifest(path)


def _upload(url, arrays, meta, overwrite):
    remote = paths.of(url)
    if remote.exists():
        if not overwrite:
            raise InputError(f"{url}: already exists (overwrite it with --overwrite)")
        with contextlib.suppress(FileNotFoundError):
            (remote / files.MANIFEST).unlink()  # a cut upload leaves no stale manifest
    with paths.staged(remote, last=files.MANIFEST) as local:
        write_bundle(local, arrays, meta, overwrite=True)


def read_bundle(path):
    """(arrays, meta) written by write_bundle; a damaged or changed file is an InputError that
    names it (or the checkpoint, where orbax does not say which file)."""
    path = paths.local_copy(path) if paths.is_url(path) else Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    manifest = files.check_manifest(path)
    files.check_orbax_json(path)
    with files.orbax_errors(path, manifest):
        try:
            with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
                restored = checkpointer.restore(
                    path,
                    ocp.args.Composite(
                        arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                    ),
                )
        except KeyError as e:  # orbax: an item of the composite is not there
            raise BundleError(
                f"{path}: not a bundle written by headhunt-jax ({e.args[0]})"
            ) from None
    if not isinstance(restored.meta, dict) or restored.arrays is None:
        raise BundleError(f"{path}: not a bundle written by headhunt-jax (no arrays and dict)")
    return restored.arrays, restored.meta
