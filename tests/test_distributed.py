"""Several processes, one feature store: the video split, start-up from the environment, and two
real processes (CPU, a coordinator on localhost) extracting into one store as one process does.
"""

import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from headhunt_jax import backbone, distributed
from headhunt_jax.extract import extract_features, list_videos
from headhunt_jax.store import FeatureStore

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

# One process of the run: `headhunt-jax extract --distributed`, its own backbone replica on its
# own devices, its own share of the videos, all written into the shared store.
WORKER = "import sys; from headhunt_jax import cli; sys.exit(cli.main(sys.argv[1:]))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(n: int, args: list[str]) -> list[str]:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        HEADHUNT_COORDINATOR=f"127.0.0.1:{_free_port()}",
        HEADHUNT_NUM_PROCESSES=str(n),
    )
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            env=dict(env, HEADHUNT_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-4000:]
            outputs.append(out.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return outputs


def test_two_processes_extract_one_store_as_one_process_does(tmp_path):
    root = tmp_path / "videos"
    for seed, (name, frames) in enumerate(CLIPS.items()):
        write_clip(root / name, frames, seed=seed)
    ckpt = hf.save_tiny_internvl(tmp_path / "ckpt")
    shared = tmp_path / "shared"

    args = ["extract", "--distributed", "--model", ckpt, "--videos", root, "--prompt", PROMPT]
    outputs = _run_processes(2, [*map(str, args), "--out", str(shared), "--batch-size", "2"])
    written = [int(re.search(r"(\d+) videos written", line).group(1)) for line in outputs]
    assert [line.split(":")[0] for line in outputs] == ["process 0 of 2", "process 1 of 2"]
    assert written == [2, 2]  # both did their share of the work, nothing twice

    single = tmp_path / "single"
    extract_features(
        backbone.load_backbone(ckpt), list_videos(root), PROMPT, single, root=root, batch_size=2
    )
    got, want = FeatureStore(shared), FeatureStore(single)
    assert got.spec == want.spec and got.video_ids() == want.video_ids()
    assert sorted(want.video_ids()) == sorted(CLIPS)
    assert not list(shared.glob("*.tmp"))
    got_arrays, want_arrays = got.load(), want.load()
    assert len(want_arrays.features) == 7
    err = np.abs(got_arrays.features - want_arrays.features).max()
    assert err <= TOL * np.abs(want_arrays.features).max()
    for field in ("labels", "video_ids", "segments"):
        np.testing.assert_array_equal(getattr(got_arrays, field), getattr(want_arrays, field))
    for vid in want.video_ids():
        a, b = got.read(vid), want.read(vid)
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
        assert a.metadata == b.metadata
