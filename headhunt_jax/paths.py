"""One path type for everything a command reads or writes: a local path, or any fsspec URL
(``gs://`` through gcsfs, ``s3://`` through s3fs: ``pip install "headhunt-jax[gcs]"``, ``[s3]``).

``of(p)`` is the one constructor: a local path stays a ``pathlib.Path`` (today's behaviour and
speed), a URL becomes a ``upath.UPath`` with the same API (``/``, ``name``, ``parent``,
``exists``, ``is_dir``, ``iterdir``, ``glob``, ``rglob``, ``open``, ``read_bytes``, ...). What
differs between the two is here and nowhere else:

- ``mkdir``: a folder on a bucket is only a key prefix, so nothing is made; the bucket must
  exist (fsspec would create a missing one);
- ``write_bytes``/``write_text``: a file appears whole or not at all: locally through a unique
  temporary file, fsync and a rename; on a bucket as one object upload (an object becomes
  visible only once its upload completes);
- ``open_for_reading``: a read-ahead file object for decoders that seek (PyAV);
- ``local_copy``/``upload``: for what only writes and reads local files (orbax checkpoints of
  converted backbones on s3, which orbax's tensorstore drivers do not reach).

Credentials and endpoints come from each client's standard environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, Google's application
default credentials, ``STORAGE_EMULATOR_HOST``). ``problem(error)`` turns a client's failure (no
credentials, no bucket, a missing object, a denied write) into one line naming the URL, which
the CLI prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from headhunt_jax.errors import UserError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Reads of a video ahead of the decoder: large enough that decoding does not wait on small
# requests (PyAV asks for 32 KiB at a time).
READ_AHEAD = 8 << 20
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class RemoteError(UserError):
    """A bucket, object or credential problem: the message names the URL."""


def is_url(p) -> bool:
    """Whether ``p`` names a location through fsspec (``scheme://...``, ``file://`` excepted)."""
    if _is_upath(p):
        return True
    if not isinstance(p, str):
        return False
    return bool(_URL.match(p)) and not p.startswith("file://")


def _is_upath(p) -> bool:
    return type(p).__module__.startswith("upath.") and getattr(p, "protocol", "") not in (
        "",
        "file",
    )


def of(p) -> Path:
    """``p`` as the path type: a ``pathlib.Path`` when local, a ``UPath`` for a URL."""
    if _is_upath(p):
        return p
    if isinstance(p, Path):
        return p
    text = p if isinstance(p, str) else os.fspath(p)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if not _URL.match(text):
        return Path(text)
    from upath import UPath

    try:
        return UPath(text)
    except (ImportError, ValueError) as err:
        scheme = text.split("://", 1)[0]
        extra = EXTRAS.get(scheme)
        hint = f' (pip install "headhunt-jax[{extra}]")' if extra else ""
        raise RemoteError(f"{text}: no file system for {scheme}:// here{hint}: {err}") from None


def bucket(p) -> str:
    """``scheme://bucket`` of a URL."""
    scheme, rest = str(p).split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def check_bucket(p) -> None:
    """A ``RemoteError`` when the bucket of the URL ``p`` does not exist."""
    if not of(bucket(p)).exists():
        raise RemoteError(f"{bucket(p)}: no such bucket (for {p})")


def mkdir(p) -> Path:
    """A folder, made with its parents when local; on a bucket only the bucket is checked."""
    p = of(p)
    if is_url(p):
        check_bucket(p)
    else:
        p.mkdir(parents=True, exist_ok=True)
    return p


def write_bytes(p, data: bytes) -> Path:
    """``p`` written whole or not at all (see the module docstring)."""
    p = of(p)
    if is_url(p):
        with p.open("wb") as f:
            f.write(data)
        return p
    tmp = p.with_name(f"{p.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    # The rename itself is only durable once the directory entry is.
    fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return p


def write_text(p, text: str) -> Path:
    return write_bytes(p, text.encode("utf-8"))


def open_for_reading(p):
    """A binary file object: the file itself when local, a read-ahead stream for a URL."""
    p = of(p)
    if is_url(p):
        return p.fs.open(p.path, "rb", block_size=READ_AHEAD, cache_type="readahead")
    return open(p, "rb")


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headhunt-jax"
    return Path(os.environ.get("HEADHUNT_CACHE_DIR", default))


def local_copy(p) -> Path:
    """A local folder holding the folder ``p``: ``p`` itself when local; for a URL, a copy in
    the cache (``HEADHUNT_CACHE_DIR``, else the user's cache folder), downloaded once for each
    content of the remote folder (its files' names, sizes and ETags)."""
    p = of(p)
    if not is_url(p):
        return p
    listing = p.fs.find(p.path, detail=True)
    if not listing:
        raise FileNotFoundError(f"{p}: no such directory")
    rows = sorted(
        (name, info.get("size"), str(info.get("ETag") or info.get("mtime") or ""))
        for name, info in listing.items()
    )
    key = hashlib.sha256(repr((str(p), rows)).encode()).hexdigest()[:24]
    target = cache_dir() / "remote" / key
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f"{key}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        root = p.path.rstrip("/") + "/"
        for name, _, _ in rows:
            local = tmp / name[len(root) :]
            local.parent.mkdir(parents=True, exist_ok=True)
            p.fs.get_file(name, str(local))
        (tmp / ".complete").write_text(str(p))
        with contextlib.suppress(OSError):  # another process placed it first
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def staged(p, last: str | None = None):
    """Writing a folder: yields ``p`` itself when local; for a URL, a local temporary folder
    whose files are uploaded to ``p`` when the block ends without an error (``last``: see
    ``upload``)."""
    p = of(p)
    if not is_url(p):
        yield p
        return
    mkdir(p)
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
        upload(Path(tmp), p, last)


def upload(local: Path, p, last: str | None = None) -> Path:
    """Copies the local folder ``local`` to ``p`` (a URL), file by file; ``last`` (a file name
    at its root, a manifest) after every other."""
    p = of(p)
    files = sorted(f for f in Path(local).rglob("*") if f.is_file())
    files.sort(key=lambda f: f.relative_to(local).as_posix() == last)
    for f in files:
        p.fs.put_file(str(f), (p / f.relative_to(local).as_posix()).path)
    p.fs.invalidate_cache(p.path)
    return p


# --- the clients' failures, in one line -----------------------------------------------------------

_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}


def _remote_frames(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.split(".")[0] in ("s3fs", "gcsfs", "fsspec", "upath", "aiobotocore"):
            return True
        tb = tb.tb_next
    return False


def problem(error: BaseException, urls=()) -> str | None:
    """One line for a client's failure on a URL (None for anything else). ``urls``: the
    command's URLs, to name when the client's message does not."""
    name = type(error).__name__
    if not (name in _NO_CREDENTIALS or _remote_frames(error)):
        return None
    text = str(error).strip().splitlines()[0] if str(error).strip() else name
    named = next((u for u in urls if bucket(u).split("://", 1)[1] in text), None)
    named = named or (urls[0] if urls else "")
    if name in _NO_CREDENTIALS:
        return f"{named}: no credentials for its bucket ({text})"
    if isinstance(error, FileNotFoundError):
        if "bucket does not exist" in text.lower() or "nosuchbucket" in text.lower():
            return f"{bucket(named) if named else text}: no such bucket"
        obj = error.filename or text
        scheme = named.split("://", 1)[0] if named else ""
        where = obj if "://" in obj or not scheme else f"{scheme}://{obj}"
        return f"{where}: no such file or object"
    if isinstance(error, PermissionError):
        return f"{named}: access denied ({text})"
    return f"{named}: {name}: {text}" if named else None
