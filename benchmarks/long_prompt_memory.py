"""Peak memory of one long prompt on CPU: chunked attention against XLA's one-shot attention.

The mid-size InternVL-shaped model with 66 frames (~4,300 tokens, InternVL3's length for 16
frames of 448 px), batch 1, all heads. Each implementation runs in its own process; prints the
compiled program's scratch memory and the process's peak RSS (VmHWM). Runs with XLA:CPU's
concurrency-optimised scheduler off, which otherwise keeps several attention blocks in flight.

    python benchmarks/long_prompt_memory.py [--frames 66]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = """
import json, sys
import numpy as np
sys.path.insert(0, {bench!r})
import _models
from headhunt_jax import backbone, features
cfg = _models.MID
model = backbone.make_model(cfg, attention={impl!r})
bb = backbone.Backbone(model, backbone.random_params(model), "mid")
ids = _models.segment_ids(cfg, {frames}, 1)
size = cfg.vision.image_size
pixels = np.random.default_rng(0).standard_normal(({frames}, 3, size, size)).astype(np.float32)
vision, positions = features.prepare_inputs(bb, [ids], {{"pixel_values": pixels}})
(placed_ids,), placed, positions = features.place_batch(bb, [ids], vision, positions)
layers = features.layer_indices(bb, None)
lowered = features.forward.lower(model, bb.params, (placed_ids,), placed, layers, None, positions)
scratch = lowered.compile().memory_analysis().temp_size_in_bytes
np.asarray(features.head_features(bb, ids, pixels))
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
print(json.dumps({{"tokens": int(ids.shape[1]), "scratch": scratch, "peak_rss": peak}}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=66)
    args = ap.parse_args()
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_enable_concurrency_optimized_scheduler=false")
    results = {}
    for impl in ("chunked", "xla"):
        code = WORKER.format(bench=str(Path(__file__).parent), impl=impl, frames=args.frames)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[impl]
        print(
            f"{impl:8s} {r['tokens']} tokens: scratch {r['scratch'] / 2**20:7.1f} MiB, peak RSS {r['peak_rss'] / 2**20:7.1f} MiB"
        )
    c, x = results["chunked"], results["xla"]
    print(
        f"ratio chunked/xla: scratch {c['scratch'] / x['scratch']:.3f}, peak RSS {c['peak_rss'] / x['peak_rss']:.3f}"
    )


if __name__ == "__main__":
    main()
