"""A real S3-compatible server on localhost for the tests that read and write buckets: moto's
server mode (``moto_server``), one for the test session, reached through s3fs as a user reaches
S3, by the standard environment (``AWS_ENDPOINT_URL`` and keys), which subprocesses inherit."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

# gcsfs's own setting: no gRPC probe of a bucket's type (the emulator leaves it unanswered).
GCSFS_SETTINGS = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _started(command: list[str], probe: str, env: dict | None = None) -> subprocess.Popen:
    """Starts a local server and waits (30 s at most) until ``probe`` (a URL) answers."""
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(probe, timeout=1)
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"{command[0]} did not start") from None
            time.sleep(0.2)


def start_server(**env) -> tuple[subprocess.Popen, str]:
    """A moto server on a free port (``env``: moto's settings) -> (process, endpoint URL)."""
    endpoint = f"http://127.0.0.1:{_free_port()}"
    exe = str(Path(sys.executable).with_name("moto_server"))
    port = endpoint.rsplit(":", 1)[1]
    return _started([exe, "-H", "127.0.0.1", "-p", port], endpoint + "/moto-api/", env), endpoint


@contextlib.contextmanager
def pointed_at(env: dict):
    """The process environment with ``env`` set, restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def s3_serving():
    """A moto S3 server, the environment pointing s3fs at it: its endpoint URL."""
    server, endpoint = start_server()
    try:
        with pointed_at({**ENV, "AWS_ENDPOINT_URL": endpoint}):
            yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto server, stopped at the end of the session; the process
    environment points at it while it runs."""
    pytest.importorskip("s3fs")
    with s3_serving() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_server) -> str:
    """A new empty bucket: its ``s3://`` URL."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def gcs_server():
    """A Google Cloud Storage emulator (``gcp-storage-emulator``, in memory) for the session,
    reached by gcsfs through ``STORAGE_EMULATOR_HOST``; gcsfs's probe of a bucket's type (a gRPC
    call the emulator does not answer) is turned off with its own setting, which it reads when
    imported (``GCSFS_SETTINGS``, set by conftest.py before any test runs)."""
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    if not exe.exists():
        pytest.skip("gcp-storage-emulator is not installed")
    endpoint = f"http://127.0.0.1:{_free_port()}"
    command = [str(exe), "start", "--host=127.0.0.1", f"--port={endpoint.rsplit(':', 1)[1]}"]
    server = _started([*command, "--in-memory"], endpoint + "/storage/v1/b?project=test")
    try:
        with pointed_at({"STORAGE_EMULATOR_HOST": endpoint}):
            yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    """A new empty bucket on the emulator: its ``gs://`` URL."""
    import gcsfs

    name = f"test-{uuid.uuid4().hex[:12]}"
    gcsfs.GCSFileSystem(skip_instance_cache=True).mkdir(name)
    return f"gs://{name}"
