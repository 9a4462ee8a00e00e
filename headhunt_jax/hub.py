"""Where a backbone's files are: a local directory, or a Hugging Face Hub id resolved through
``huggingface_hub``'s cache.

A Hub id is ``org/name`` or ``org/name@revision`` (a branch, a tag or a commit). It is fetched with
``snapshot_download``, only the files a backbone is read from, with the library's own progress
bars; its cache and environment apply (``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_TOKEN``), and an interrupted download resumes. A path that exists is always a path.
"""

import dataclasses
import os
import posixpath
import re
from pathlib import Path

from headhunt_jax import paths
from headhunt_jax.errors import InputError

# What a converted checkpoint keeps of the original besides its weights: the tokenizer and the
# processors' and generation's settings.
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",  # the EOS ids that generation stops at
)
# What any family reads from a checkpoint: its config, weights, and the files above. Not the
# remote code, the PyTorch .bin weights or the README's images.
CHECKPOINT_FILES = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    *PROCESSOR_FILES,
    "chat_template.jinja",
    "processor_config.json",
)

# The Hub's repository names: letters, digits, '-', '_', '.', not starting with '-' or '.'.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}"
_HUB_ID = re.compile(rf"({_NAME}/{_NAME})(?:@([^\s@]+))?")


class HubError(InputError):
    """A Hub id that cannot be resolved: the message names it and says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A backbone's files: ``path``, the local directory; for a Hub id also ``repo_id`` and
    ``revision``, the commit its snapshot was resolved to; for a folder on a bucket, ``origin``,
    its URL (``path`` is then its local copy)."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None
    origin: str | None = None

    @property
    def hub_ref(self) -> str | None:
        """``org/name@commit``: resolves to the same snapshot again (None for a local one)."""
        return f"{self.repo_id}@{self.revision}" if self.repo_id else None


def parse_hub_id(text) -> tuple[str, str | None] | None:
    """``org/name[@revision]`` -> (repo id, revision or None); None when ``text`` is not one."""
    m = _HUB_ID.fullmatch(str(text))
    if m is None or ".." in m.group(1) or m.group(1).endswith((".", "-")):
        return None
    return m.group(1), m.group(2)


def resolve(model, progress: bool = True) -> Source:
    """A checkpoint named by a path or a Hub id -> its ``Source``.

    A path that exists is taken as it is; otherwise a Hub id is looked up in the cache and
    fetched when the Hub is reachable. A URL (``paths``) is copied into the local cache once
    for each content. Anything else is a missing directory."""
    if paths.is_url(model):
        return Source(paths.local_copy(model), origin=str(paths.of(model)))
    path = Path(model)
    parsed = None if path.exists() else parse_hub_id(model)
    if parsed is None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such directory")
        return Source(path)
    repo_id, revision = parsed
    snapshot = Path(_snapshot(repo_id, revision, progress))
    return Source(snapshot, repo_id, snapshot.name)  # the cache's snapshots/<commit>


def _snapshot(repo_id: str, revision: str | None, progress: bool) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    name = repo_id + (f"@{revision}" if revision else "")
    if not progress:
        disable_progress_bars()
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=list(CHECKPOINT_FILES))
    except hub.RevisionNotFoundError:
        raise HubError(f"{name}: the Hub has no revision {revision!r} of {repo_id}") from None
    except (hub.RepositoryNotFoundError, hub.GatedRepoError):
        raise HubError(
            f"{name}: no such model on the Hub, or it is private or gated: check the id, and "
            "for a gated model accept its terms and set HF_TOKEN (or run `hf auth login`)"
        ) from None
    except (hub.LocalEntryNotFoundError, hub.IncompleteSnapshotError, hub.HFValidationError) as e:
        why = (
            "HF_HUB_OFFLINE is set"
            if constants.HF_HUB_OFFLINE
            else f"the Hub could not be reached ({type(e.__cause__ or e).__name__})"
        )
        raise HubError(
            f"{name}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
            f"download it where the Hub is reachable (`hf download {repo_id}`, with the same "
            "HF_HOME) or pass the checkpoint's local directory"
        ) from None
    finally:
        if not progress:
            enable_progress_bars()


def relative_to(path, base) -> str:
    """``path`` as recorded in a file under ``base``: relative when it lies beside or inside
    ``base`` (so that the folder holding both can move), absolute otherwise. On a bucket, the
    same within one bucket (a path and a URL are never relative to each other)."""
    if paths.is_url(path) or paths.is_url(base):
        path, base = str(paths.of(path)), str(paths.of(base))
        if not (
            paths.is_url(path) and paths.is_url(base) and paths.bucket(path) == paths.bucket(base)
        ):
            return path if paths.is_url(path) else str(Path(path).absolute())
        rel = posixpath.relpath(path.split("://", 1)[1], base.split("://", 1)[1])
        return rel if not rel.startswith("../..") else path
    path, base = Path(path).absolute(), Path(base).absolute()
    rel = os.path.relpath(path, base)
    return rel if not rel.startswith(os.pardir + os.sep + os.pardir) else str(path)


def from_record(recorded: str, base) -> str:
    """The inverse of ``relative_to``: a recorded path, relative ones taken from ``base``."""
    if paths.is_url(recorded):
        return recorded
    if paths.is_url(base):
        if Path(recorded).is_absolute():
            return recorded
        scheme, rest = str(paths.of(base)).split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, recorded))}"
    return os.path.normpath(Path(base).absolute() / recorded)
