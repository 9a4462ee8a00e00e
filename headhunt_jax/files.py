"""Reading the user's files, one way everywhere: a file that is missing, cut short, not UTF-8
text, not JSON, not the JSON it should be, or changed since headhunt-jax wrote it is an
``InputError`` whose message names the file and says what is wrong, never a decoder's traceback.

Text and JSON: ``read_text``, ``read_lines``, ``read_json`` (``parse_json`` for bytes read some
other way, as a safetensors header). Orbax checkpoints: ``check_orbax_json`` before a restore
and ``orbax_errors`` around it. Integrity where a format has none: ``write_manifest`` records the
size and SHA-256 of every file a detector bundle or a converted backbone is made of in
``sha256.json`` at its root, written last; ``check_manifest`` compares them before the files are
read and names a changed file. Directories written before the manifest existed have none and
load as before.

Cost: SHA-256 reads about 1.3 GiB/s on one core (0.8 GiB/s from a cold disk cache); hashing a
converted InternVL3-1B (1.2 GiB) takes 1.6 s where loading it takes 5.1 s, so a multi-GB
backbone's weights are not hashed on every load: every listed file's size is checked (a file cut
short is always told), files up to ``HASH_ALWAYS_BYTES`` (64 MiB: every metadata, JSON and
tokenizer file, a whole detector) are hashed, and the larger ones only when their restore fails
(to name the changed file) or when ``HEADHUNT_VERIFY=full``. Orbax checksums its b-tree and
manifest but not the arrays' bytes: a byte overwritten inside a large weight file loads unseen
without ``HEADHUNT_VERIFY=full``.

Only the reading and parsing of a file's bytes is wrapped: a failure past that stays a bug.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from headhunt_jax import paths
from headhunt_jax.errors import InputError, UserError

MANIFEST = "sha256.json"
MANIFEST_FORMAT = 1
# HEADHUNT_VERIFY=full: hash every file of a manifest on load, however large.
VERIFY_ENV = "HEADHUNT_VERIFY"
HASH_ALWAYS_BYTES = 64 << 20
_CHUNK = 8 << 20


class MissingFile(InputError, FileNotFoundError):
    """A file that should be there and is not (still a ``FileNotFoundError``)."""


def _expected(what: str | None) -> str:
    return f" (expected {what})" if what else ""


def _fail(error, path, problem: str, what: str | None = None):
    return error(f"{path}: {problem}{_expected(what)}")


# --- text and JSON ------------------------------------------------------------------------------


def read_bytes(path, what: str | None = None, error=InputError) -> bytes:
    """The bytes of a file, local or at a URL (``paths.of``); a missing one is a
    ``MissingFile`` naming it."""
    path = paths.of(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFile(f"{path}: no such file{_expected(what)}") from None
    except IsADirectoryError:
        raise _fail(error, path, "a directory, not a file", what) from None
    # A bucket reads a key prefix (a folder) as an empty object.
    if not data and paths.is_url(path) and path.is_dir():
        raise _fail(error, path, "a directory, not a file", what)
    return data


def decode_text(data: bytes, path, what: str | None = None, error=InputError) -> str:
    """UTF-8 text (a leading byte-order mark dropped); not UTF-8, or holding a NUL byte (which
    no text file does), is an ``error`` naming the file and the byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(error, path, f"not UTF-8 text (byte {e.start})", what) from None
    nul = text.find("\0")
    if nul >= 0:
        at = len(text[:nul].encode("utf-8"))
        raise _fail(error, path, f"not text (a NUL byte at byte {at})", what)
    return text.removeprefix("\ufeff")


def read_text(path, what: str | None = None, error=InputError) -> str:
    """A UTF-8 text file's content (see ``decode_text``)."""
    return decode_text(read_bytes(path, what, error), path, what, error)


def read_lines(path, what: str | None = None, error=InputError) -> list[str]:
    """A text file's lines without their ends (``\\n``, ``\\r\\n`` or ``\\r``), as ``open()``
    splits them: line N of the file is item N - 1."""
    lines = io.StringIO(read_text(path, what, error), newline=None).read().split("\n")
    return lines[:-1] if lines[-1] == "" else lines


_KINDS = {dict: "a JSON object", list: "a JSON list", str: "a JSON string"}


def parse_json(data, path, what: str | None = None, kind=dict, error=InputError):
    """JSON from the bytes or text of ``path`` (``kind``: the type the top level must have, None
    for any). Empty, cut short, not valid JSON or not ``kind``: an ``error`` naming the file,
    the line and the column."""
    text = decode_text(data, path, what, error) if isinstance(data, bytes | bytearray) else data
    if not text.strip():
        raise _fail(error, path, "empty", what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):
            problem = f"cut short (its JSON stops at line {e.lineno} column {e.colno})"
        else:
            problem = f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
        raise _fail(error, path, problem, what) from None
    except (ValueError, RecursionError) as e:  # an integer too long, nesting too deep
        raise _fail(error, path, f"not valid JSON ({e})", what) from None
    if kind is not None and not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        name = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
        raise _fail(error, path, f"not {name} (a JSON {_json_type(value)})", what)
    return value


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def read_json(path, what: str | None = None, kind=dict, error=InputError):
    """A JSON file's value (see ``parse_json``)."""
    return parse_json(read_bytes(path, what, error), path, what, kind, error)


# --- integrity ------------------------------------------------------------------------------------


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def remove_manifest(root) -> None:
    """Before a directory is written again: a write cut short then leaves no stale manifest,
    and is told as files missing or changed only if a new manifest was written."""
    (Path(root) / MANIFEST).unlink(missing_ok=True)


def write_manifest(root, files: Iterable | None = None) -> Path:
    """``root/sha256.json``: the size and SHA-256 of ``files`` (paths under ``root``; default:
    every file under it). Written last, after every file it lists is complete."""
    root = Path(root).absolute()  # rglob's paths of a relative root are relative to the cwd
    if files is None:
        files = (p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    listed = {}
    for f in sorted(Path(f) for f in files):
        f = f if f.is_absolute() else root / f
        listed[f.relative_to(root).as_posix()] = {
            "size": f.stat().st_size,
            "sha256": sha256_file(f),
        }
    record = {"format": MANIFEST_FORMAT, "files": listed}
    path = root / MANIFEST
    paths.write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


@dataclasses.dataclass
class Manifest:
    """A directory's checked manifest: ``unhashed`` lists the files whose size matched but whose
    hash was not computed (too large; ``check_rest`` hashes them)."""

    root: Path
    hashes: dict[str, str]
    unhashed: list[str]

    @property
    def complete(self) -> bool:
        """Every listed file's bytes are as they were written."""
        return not self.unhashed

    def check_rest(self) -> None:
        for name in self.unhashed:
            _compare(self.root / name, self.hashes[name])
        self.unhashed = []


def _compare(path: Path, want: str) -> None:
    if sha256_file(path) != want:
        raise InputError(f"{path}: changed since it was written (sha256 mismatch)")


def full_verification() -> bool:
    return os.environ.get(VERIFY_ENV, "").strip().lower() in ("1", "full", "all", "yes")


def check_manifest(root, full: bool | None = None) -> Manifest | None:
    """Checks ``root``'s files against its ``sha256.json``; None when it has none (written
    before manifests were). A listed file missing, of another size or of another hash is an
    ``InputError`` naming it. ``full``: hash every file (default: ``HEADHUNT_VERIFY=full``);
    else files over ``HASH_ALWAYS_BYTES`` have their size checked only."""
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        return None
    full = full_verification() if full is None else full
    record = read_json(path, "the sha256 manifest headhunt-jax wrote")
    entries = record.get("files")
    if record.get("format") != MANIFEST_FORMAT or not isinstance(entries, dict):
        raise InputError(f"{path}: not a sha256 manifest of format {MANIFEST_FORMAT}")
    hashes, unhashed = {}, []
    for name, entry in entries.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
            and ".." not in Path(name).parts
            and not Path(name).is_absolute()
        ):
            raise InputError(f"{path}: a damaged entry for {name!r}")
        file = root / name
        if not file.is_file():
            raise InputError(f"{file}: missing (listed in {path})")
        size = file.stat().st_size
        if size != entry["size"]:
            change = "cut short" if size < entry["size"] else "grown"
            raise InputError(
                f"{file}: changed since it was written ({change}: {size} bytes, written with "
                f"{entry['size']})"
            )
        hashes[name] = entry["sha256"]
        if full or size <= HASH_ALWAYS_BYTES:
            _compare(file, entry["sha256"])
        else:
            unhashed.append(name)
    return Manifest(root, hashes, unhashed)


# --- orbax checkpoints ----------------------------------------------------------------------------

# The JSON files of an orbax checkpoint directory, at the top and in each item's folder.
_ORBAX_JSON = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")


def check_orbax_json(path) -> None:
    """The JSON files orbax reads from the checkpoint at ``path`` (its metadata, each item's
    metadata, sharding, array metadata and a JSON item's value), read here first so that a
    damaged one is named (orbax says only that some JSON did not parse)."""
    path = Path(path)
    folders = [path, *(p for p in path.iterdir() if p.is_dir())] if path.is_dir() else []
    for folder in folders:
        candidates = [folder / n for n in _ORBAX_JSON]
        metadatas = folder / "array_metadatas"
        if metadatas.is_dir():
            candidates += sorted(metadatas.iterdir())
        for f in candidates:
            if f.is_file():
                read_json(f, "orbax checkpoint metadata", kind=None)


@contextlib.contextmanager
def orbax_errors(path, manifest: Manifest | None = None):
    """Around orbax's reading of the checkpoint at ``path`` (nothing else): whatever orbax or
    tensorstore raise on its files is an ``InputError`` "FILE: orbax checkpoint incomplete or
    damaged (...)", FILE the file tensorstore names (else the checkpoint), with the first line of
    their message. With a ``manifest`` the files are hashed first: a changed one is named; when
    every byte is as it was written the exception is not the files' fault and is raised as it is
    (a bug)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        quiet_abandoned_reads()
        if manifest is not None:
            manifest.check_rest()
            if manifest.complete:
                raise
        where, said = _orbax_problem(e)
        raise InputError(
            f"{where or path}: orbax checkpoint incomplete or damaged ({said})"
        ) from None


def first_line(error: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message, without tensorstore's spec, at most ``limit``
    characters."""
    text = str(error.args[0] if len(error.args) == 1 else error).strip()
    line = text.splitlines()[0] if text else ""
    line = line.split(" [tensorstore_spec=")[0].split(" [source locations=")[0]
    return line if limit is None else _shortened(line, limit)


def _shortened(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_LOCAL_FILE = re.compile(r'local file "([^"]+)"(?:: )?')
_ARRAY = re.compile(r'Error reading "([^"]+)"')


def _orbax_problem(error: BaseException) -> tuple[str | None, str]:
    """(the file tensorstore names, or None; "Type: what it says") of orbax's exception, from
    the innermost of its causes (orbax wraps tensorstore's word in a bare Exception)."""
    inner = error
    for _ in range(8):
        nxt = inner.__cause__ or (None if inner.__suppress_context__ else inner.__context__)
        if nxt is None:
            break
        inner = nxt
    line = first_line(inner, limit=None)
    files_named = list(_LOCAL_FILE.finditer(line))
    named = [m.group(1) for m in files_named if not m.group(1).endswith("/")]
    said = line[files_named[-1].end() :] if files_named else line
    array = _ARRAY.search(line)
    if array and not named:
        said = f"array {array.group(1)}: {said}"
    return (named[-1] if named else None), f"{type(inner).__name__}: {_shortened(said or line)}"


def quiet_abandoned_reads() -> None:
    """When orbax's read fails, the sibling reads it started fail too, later, where nobody
    listens: asyncio logs "Task (or Future) exception was never retrieved" (at the latest when
    the interpreter exits) and tensorstore's callbacks raise
    "Event loop is closed" into ``sys.unraisablehook``, tracebacks with nothing to add once the
    failure is told. From a told failure on, those two (and only from orbax's reads) are
    dropped; the rest of the garbage is collected now."""
    log = logging.getLogger("asyncio")
    if _not_orbax_task not in log.filters:
        log.addFilter(_not_orbax_task)
    if not getattr(sys.unraisablehook, "_drops_orbax_leftovers", False):
        sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
    gc.collect()


def _not_orbax_task(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if not message.startswith(("Task exception was never retrieved", "Future exception was never")):
        return True
    exc = record.exc_info[1] if record.exc_info else None
    frames = []
    tb = getattr(exc, "__traceback__", None)
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return not any(w in t for t in [message, *frames] for w in ("orbax", "tensorstore", "OCDBT"))


def _unraisable_hook(previous):
    def hook(unraisable):
        exc, obj = unraisable.exc_value, unraisable.object
        closed_loop = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
        code = getattr(obj, "cr_code", None)
        orbax_coroutine = code is not None and "orbax" in code.co_filename
        if not ((closed_loop and obj is None) or orbax_coroutine):
            previous(unraisable)

    hook._drops_orbax_leftovers = True
    return hook
