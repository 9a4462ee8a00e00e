"""Several processes, one feature store: the video split, start-up from the environment, and two
real processes (CPU, a coordinator on localhost) extracting into one store as one process does,
from an HF or a converted checkpoint, or stopping together, one line each, when one cannot start.
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from headhunt_jax import backbone, distributed, files, paths
from headhunt_jax.extract import extract_features, list_videos
from headhunt_jax.store import FeatureStore, file_name

hf = pytest.importorskip("hf_reference")
write_clip = pytest.importorskip("test_extract").write_clip

VIDEOS = [f"cam{i % 3}/clip{i:02d}.mp4" for i in range(10)]


def test_shard_videos_split_every_video_once_whatever_the_order():
    shares = [distributed.shard_videos(VIDEOS, i, 3) for i in range(3)]
    assert sorted(v for share in shares for v in share) == sorted(VIDEOS)
    assert [len(s) for s in shares] == [4, 3, 3]
    shuffled = random.Random(0).sample(VIDEOS, len(VIDEOS))
    assert [distributed.shard_videos(shuffled, i, 3) for i in range(3)] == shares
    paths = [Path(v) for v in VIDEOS]
    assert distributed.shard_videos(paths, 1, 3) == [Path(v) for v in shares[1]]
    assert distributed.shard_videos(VIDEOS) == sorted(VIDEOS)  # one process: all of them


def test_shard_videos_errors():
    with pytest.raises(ValueError, match=r"process_index must be in \[0, 2\), got 2"):
        distributed.shard_videos(VIDEOS, 2, 2)
    with pytest.raises(ValueError, match="listed more than once: cam1/clip01.mp4"):
        distributed.shard_videos([*VIDEOS, VIDEOS[1]], 0, 2)


@pytest.fixture
def fake_initialize(monkeypatch):
    """Records what ``jax.distributed.initialize`` is called with, instead of starting it."""
    calls = []

    def initialize(**kwargs):
        if not kwargs:
            raise ValueError("coordinator_address should be defined.")
        calls.append(kwargs)

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    for var in distributed.ENV.values():
        monkeypatch.delenv(var, raising=False)
    return calls


def test_initialize_arguments_then_environment_then_jax(fake_initialize, monkeypatch):
    monkeypatch.setenv("HEADHUNT_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("HEADHUNT_NUM_PROCESSES", "4")
    assert distributed.initialize(process_id=3) == (0, 1)
    want = dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    assert fake_initialize == [want]
    # On SLURM or a TPU pod JAX finds the rest itself: only what was set is passed on.
    monkeypatch.delenv("HEADHUNT_NUM_PROCESSES")
    distributed.initialize()
    assert fake_initialize[-1] == dict(coordinator_address="10.0.0.1:1234")


def test_initialize_errors(fake_initialize, monkeypatch):
    with pytest.raises(ValueError, match="no cluster detected .* set HEADHUNT_COORDINATOR"):
        distributed.initialize()
    monkeypatch.setenv("HEADHUNT_PROCESS_ID", "first")
    with pytest.raises(ValueError, match="HEADHUNT_PROCESS_ID must be an integer, got 'first'"):
        distributed.initialize()


# --- two real processes ---------------------------------------------------------------------

PROMPT = "Identify any abnormal events or safety hazards in this video."
CLIPS = {"a.mp4": 150, "b.mp4": 100, "sub/c.mp4": 60, "short.mp4": 20}  # 3, 2, 1, 1 segments
TOL = 1e-6  # relative: each process fills its batches with other segments than one process does
SHARDED_TOL = 1e-5  # on a 'model' axis the sums over a split axis add up in another order

# One process of the run, as the console script runs it (`headhunt-jax extract --distributed`):
# its own backbone replica on its own devices, its own share of the videos, all written into the
# shared store.
WORKER = "from headhunt_jax import cli; cli.run()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(args: list, devices: int = 1, own_args=None, code=lambda i: WORKER):
    """Starts two processes of a run on a localhost coordinator, each with ``devices`` CPU
    devices of its own; ``own_args(i)``: arguments of process i only; ``code(i)``: what process
    i runs."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        HEADHUNT_COORDINATOR=f"127.0.0.1:{_free_port()}",
        HEADHUNT_NUM_PROCESSES="2",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code(i),
                *map(str, args),
                *map(str, own_args(i) if own_args else []),
            ],
            env=dict(env, HEADHUNT_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _run_processes(args: list, devices: int = 1, own_args=None, code=lambda i: WORKER):
    """``_start_processes``, waited for: -> (status, stdout, stderr) each."""
    procs = _start_processes(args, devices, own_args, code)
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
        return [(p.returncode, *output) for p, output in zip(procs, outputs, strict=True)]
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def cluster_inputs(tmp_path_factory):
    """The videos, an HF checkpoint, the same converted (float32) and the store one process
    extracts from them."""
    tmp = tmp_path_factory.mktemp("cluster")
    root = tmp / "videos"
    for seed, (name, frames) in enumerate(CLIPS.items()):
        write_clip(root / name, frames, seed=seed)
    ckpt = hf.save_tiny_internvl(tmp / "ckpt")
    bb = backbone.load_backbone(ckpt)
    converted = backbone.save_converted(bb, tmp / "converted")
    single = tmp / "single"
    extract_features(bb, list_videos(root), PROMPT, single, root=root, batch_size=2)
    return dict(videos=root, hf=ckpt, converted=converted, single=single)


def _extract_args(model, videos, out) -> list[str]:
    flags = {"--model": model, "--videos": videos, "--prompt": PROMPT, "--out": out}
    flags["--batch-size"] = 2
    return ["extract", "--distributed", *(str(x) for f in flags.items() for x in f)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, devices, flags",
    [("hf", 1, []), ("converted", 1, []), ("converted", 2, ["--model-parallel", "2"])],
    ids=["hf", "converted", "converted-sharded"],
)
def test_two_processes_extract_one_store_as_one_process_does(
    tmp_path, cluster_inputs, kind, devices, flags
):
    """Each process restores the backbone onto its own devices (a converted one was written by
    one process on one device), extracts its share, and the store is one process's."""
    shared = tmp_path / "shared"
    args = [*_extract_args(cluster_inputs[kind], cluster_inputs["videos"], shared), *flags]
    results = _run_processes(args, devices)
    for status, _, err in results:
        assert status == 0, err[-4000:]
    outputs = [out.strip().splitlines()[-1] for _, out, _ in results]
    written = [int(re.search(r"(\d+) videos written", line).group(1)) for line in outputs]
    assert [line.split(":")[0] for line in outputs] == ["process 0 of 2", "process 1 of 2"]
    assert written == [2, 2]  # both did their share of the work, nothing twice

    got, want = FeatureStore(shared), FeatureStore(cluster_inputs["single"])
    assert got.spec == want.spec and got.video_ids() == want.video_ids()
    assert sorted(want.video_ids()) == sorted(CLIPS)
    assert not list(shared.glob("*.tmp"))
    got_arrays, want_arrays = got.load(), want.load()
    assert len(want_arrays.features) == 7
    err = np.abs(got_arrays.features - want_arrays.features).max()
    assert err <= (SHARDED_TOL if flags else TOL) * np.abs(want_arrays.features).max()
    for field in ("labels", "video_ids", "segments"):
        np.testing.assert_array_equal(getattr(got_arrays, field), getattr(want_arrays, field))
    for vid in want.video_ids():
        a, b = got.read(vid), want.read(vid)
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
        assert a.metadata == b.metadata


def _damaged(converted: Path, out: Path, manifest: bool) -> tuple[Path, Path]:
    """A copy of a converted checkpoint with its largest parameters file damaged: bytes changed
    (caught by ``sha256.json``) or, without the manifest, cut short (caught by orbax)."""
    shutil.copytree(converted, out)
    data = max(
        (p for p in (out / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    if manifest:
        raw = bytearray(data.read_bytes())
        raw[100:200] = bytes(100)
        data.write_bytes(bytes(raw))
    else:
        (out / files.MANIFEST).unlink()
        with data.open("r+b") as f:
            f.truncate(1000)
    return out, data


@pytest.mark.slow
@pytest.mark.parametrize("broken, manifest", [(1, True), (0, False)], ids=["p1-sha256", "p0-orbax"])
def test_a_process_that_cannot_load_stops_every_process_with_one_line(
    tmp_path, cluster_inputs, broken, manifest
):
    """One process is given a damaged checkpoint (process 0 is also the coordinator): it says
    why, the other says which process failed and why, both exit 1 without a traceback."""
    damaged, data = _damaged(cluster_inputs["converted"], tmp_path / "damaged", manifest)
    shared = tmp_path / "shared"
    args = _extract_args(cluster_inputs["converted"], cluster_inputs["videos"], shared)
    results = _run_processes(args, own_args=lambda i: ["--model", damaged] if i == broken else [])
    lines = [err.strip().splitlines() for _, _, err in results]
    assert [status for status, _, _ in results] == [1, 1], lines
    assert [len(e) for e in lines] == [1, 1], lines
    why = (
        r"changed since it was written \(sha256 mismatch\)"
        if manifest
        else "orbax checkpoint incomplete or damaged"
    )
    where = re.escape(str(data if manifest else damaged / "params"))
    assert re.fullmatch(f"headhunt-jax extract: error: {where}: {why}.*", lines[broken][0])
    other = lines[1 - broken][0]
    assert other.startswith(f"headhunt-jax extract: error: process {broken} of 2 failed: ")
    assert other.endswith(lines[broken][0].removeprefix("headhunt-jax extract: error: "))
    assert not shared.exists()  # no process began the work


# A process that crashes while it loads the backbone (a bug, not the user's input).
CRASHING_WORKER = f"""
from headhunt_jax import backbone
def load_backbone(*args, **kwargs):
    raise RuntimeError("out of host memory")
backbone.load_backbone = load_backbone
{WORKER}
"""


@pytest.mark.slow
def test_a_process_that_crashes_while_starting_stops_the_others_with_one_line(
    tmp_path, cluster_inputs
):
    """A crash is a bug: the crashed process keeps its traceback; the other says which process
    crashed and how, in one line."""
    shared = tmp_path / "shared"
    args = _extract_args(cluster_inputs["converted"], cluster_inputs["videos"], shared)
    results = _run_processes(args, code=lambda i: CRASHING_WORKER if i == 1 else WORKER)
    (status0, _, err0), (status1, _, err1) = results
    assert (status0, status1) == (1, 1), (err0, err1)
    assert err0.strip() == (
        "headhunt-jax extract: error: process 1 of 2 failed: RuntimeError: out of host memory"
    )
    assert "Traceback" in err1 and err1.strip().endswith("RuntimeError: out of host memory")
    assert not shared.exists()


# Process 1 is killed (SIGKILL) between a video's object and its commit marker: the store on the
# bucket then holds an object that must never be read as features.
KILLED_WORKER = f"""
import os, signal
from headhunt_jax import paths
write = paths.write_bytes
def killed(path, data):
    if "/done/" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return write(path, data)
paths.write_bytes = killed
{WORKER}
"""


@pytest.mark.slow
def test_two_processes_extract_one_store_on_a_bucket_killed_and_rerun(
    tmp_path, cluster_inputs, bucket, monkeypatch
):
    """Both processes read the converted backbone from the bucket and write one store there;
    process 1 is killed mid-video and the run is started again: the store is one local
    process's, and the killed video's uncommitted object was never listed."""
    monkeypatch.setenv("HEADHUNT_CACHE_DIR", str(tmp_path / "cache"))
    model = f"{bucket}/converted"
    paths.upload(cluster_inputs["converted"], model)
    store = f"{bucket}/run/store"
    args = _extract_args(model, cluster_inputs["videos"], store)
    procs = _start_processes(args, code=lambda i: KILLED_WORKER if i == 1 else WORKER)
    try:
        procs[1].communicate(timeout=180)
        assert procs[1].returncode == -signal.SIGKILL, procs[1].stderr
        # Process 0 does its share, then waits for the dead one at JAX's shutdown barrier until
        # the heartbeat times out: the test does not wait for that (a scheduler would not).
        share0, share1 = (distributed.shard_videos(sorted(CLIPS), i, 2) for i in range(2))
        deadline = time.monotonic() + 120
        while not set(share0) <= set(FeatureStore(store).video_ids()):
            assert time.monotonic() < deadline and procs[0].poll() is None
            time.sleep(0.5)
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    listed = FeatureStore(store).video_ids()
    assert listed == sorted(share0)  # none of the killed process's videos counts as done
    uncommitted = [p.name for p in paths.of(store).iterdir() if p.name.endswith(".npz")]
    assert file_name(share1[0]) in uncommitted
    again = _run_processes(args)
    for status, _, err in again:
        assert status == 0, err[-4000:]
    got, want = FeatureStore(store), FeatureStore(cluster_inputs["single"])
    assert got.spec == want.spec and got.video_ids() == want.video_ids()
    assert got.backbone_path == model  # the bucket's URL, not the local copy
    got_arrays, want_arrays = got.load(), want.load()
    err = np.abs(got_arrays.features - want_arrays.features).max()
    assert err <= TOL * np.abs(want_arrays.features).max()
    for field in ("labels", "video_ids", "segments"):
        np.testing.assert_array_equal(getattr(got_arrays, field), getattr(want_arrays, field))
