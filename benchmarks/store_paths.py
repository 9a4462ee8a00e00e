"""Feature stores on a local disk and on a bucket: writing, listing and reading N videos.

Side by side in one run:
- local: this tree's ``FeatureStore`` against the store module of an earlier commit (``--base``,
  before stores took URLs), loaded from git, on the same videos: the local path's cost of the
  path type and the whole-object writes;
- bucket: the same store on a local S3-compatible server (moto, as the tests start it), the
  time to list a store of N videos (``video_ids``: one listing of the commit markers) and to
  test membership, against the local disk.

    python benchmarks/store_paths.py [--videos 1000] [--base 350194b]
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from buckets import s3_serving  # noqa: E402

from headhunt_jax import store as new_store  # noqa: E402
from headhunt_jax.video import VideoMetadata  # noqa: E402


def base_module(commit: str):
    """``headhunt_jax/store.py`` at ``commit``, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:headhunt_jax/store.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tmp = Path(tempfile.mkdtemp()) / "base_store.py"
    tmp.write_text(source)
    spec = importlib.util.spec_from_file_location("base_store", tmp)
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_store"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def videos(module, n: int, segments: int = 4):
    rng = np.random.default_rng(0)
    meta = VideoMetadata("v.mp4", 30.0, "stream", 48 * segments, segments, False, 0, None)
    return [
        module.VideoFeatures(
            video_id=f"cam{i % 10}/video{i:05d}.mp4",
            features=rng.normal(size=(segments, 5, 128)).astype(np.float32),
            start_frames=np.arange(segments) * 48,
            end_frames=np.arange(segments) * 48 + 48,
            frame_indices=np.zeros((segments, 16), np.int64),
            metadata=meta,
            label=i % 2,
        )
        for i in range(n)
    ]


SPEC = dict(
    backbone="tiny",
    prompt="p",
    dtype="float32",
    image_size=448,
    frames_per_segment=16,
    segment_length=48,
    layers=(1, 2),
    heads=((1, 0), (1, 1), (2, 0), (2, 2), (2, 3)),
    feature_shape=(5, 128),
)


def timed(module, where, n: int) -> dict:
    """Seconds to write n videos, list them, test each, read them all."""
    store = module.FeatureStore.create(where, module.StoreSpec(**SPEC))
    items = videos(module, n)
    t = {}
    start = time.perf_counter()
    for v in items:
        store.write(v)
    t["write"] = time.perf_counter() - start
    start = time.perf_counter()
    ids = module.FeatureStore(where).video_ids()
    t["list"] = time.perf_counter() - start
    assert len(ids) == n
    start = time.perf_counter()
    assert all(v.video_id in store for v in items[:100])
    t["contains x100"] = time.perf_counter() - start
    start = time.perf_counter()
    store.load()
    t["read all"] = time.perf_counter() - start
    return t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--base", default="350194b")
    args = parser.parse_args()
    base = base_module(args.base)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(2):  # new, base, new, base: the disk's cache warms for both
            rows[f"local, base {args.base}"] = timed(base, Path(tmp) / f"base{rep}", args.videos)
            rows["local, this tree"] = timed(new_store, Path(tmp) / f"new{rep}", args.videos)
    with s3_serving():
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench")
        rows["s3 (moto on localhost)"] = timed(new_store, "s3://bench/store", args.videos)
    ops = list(next(iter(rows.values())))
    print(f"{args.videos} videos, seconds | " + " | ".join(ops))
    for name, t in rows.items():
        print(f"{name:28s} | " + " | ".join(f"{t[o]:.3f}" for o in ops))
    a, b = rows["local, this tree"], rows[f"local, base {args.base}"]
    print("local this/base: " + ", ".join(f"{o} {a[o] / b[o]:.2f}" for o in ops))
    s = rows["s3 (moto on localhost)"]
    print("s3/local: " + ", ".join(f"{o} {s[o] / a[o]:.2f}" for o in ops))


if __name__ == "__main__":
    main()
