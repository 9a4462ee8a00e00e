"""The package's data folders: the published expert heads (``checkpoints/``) and the protocol's
prompts and official dataset lists (``data/``), top-level folders of the source tree.

An install maps them into the package (``headhunt_jax.checkpoints``, ``headhunt_jax.data``). Python
started in a source checkout imports the source tree instead, which holds them beside the
package, not inside it: both are found.
"""

import importlib.resources
from pathlib import Path


def package_dir(name: str) -> Path:
    """The folder of ``name`` ('data' or 'checkpoints'), installed or in a source checkout."""
    try:
        return Path(str(importlib.resources.files(f"headhunt_jax.{name}")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / name
