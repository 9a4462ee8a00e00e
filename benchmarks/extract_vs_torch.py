"""Per-head feature extraction: headhunt_jax against transformers with o_proj pre-hooks.

The same mid-size model of a family (random weights, saved once with ``save_pretrained`` and
loaded by both), 16 frames a segment, batch >= 2. Runs alternate between the two; prints the
first-call compile time and the warm torch/jax time ratio (> 1 means headhunt_jax is faster).
Qwen2.5-VL and Qwen3-VL also run segments of a second resolution and print how many compilations
the two resolutions took (one each: segments of one size share a compilation).

    python benchmarks/extract_vs_torch.py [--family internvl|llava-onevision|qwen2.5-vl|qwen3-vl]
        [--batch 2] [--frames 16] [--repeats 5]
"""

import os

# Idle OpenMP threads spinning after a torch call would slow the jax call that follows.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402

import headhunt_jax as hh  # noqa: E402

FAMILIES = {
    "internvl": "mid",
    "llava-onevision": "mid-llava",
    "qwen2.5-vl": "mid-qwen",
    "qwen3-vl": "mid-qwen3",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="internvl", choices=list(FAMILIES))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--attn", default="sdpa", help="transformers attention implementation (sdpa or eager)"
    )
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = _models.MIDS[FAMILIES[args.family]]
    model = _models.hf_model(cfg, args.attn).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        bb = hh.load_backbone(tmp)
    ids, inputs, extra = _models.segments(cfg, args.frames, args.batch)
    t_ids = torch.as_tensor(ids, dtype=torch.long)
    t_inputs = {k: torch.as_tensor(v) for k, v in {**inputs, **extra}.items()}
    hooks = _models.TorchHooks(model)

    def run_jax():
        return hh.head_features(bb, ids, **inputs)

    def run_torch():
        with torch.inference_mode():
            model(input_ids=t_ids, **t_inputs, logits_to_keep=1)
        return hooks.features(cfg.text.num_heads)

    def sync(x):
        return x.block_until_ready() if hasattr(x, "block_until_ready") else x

    compile_s, first = _models.timed(run_jax, sync)
    _, want = _models.timed(run_torch, sync)
    err = np.abs(np.asarray(first) - want.numpy()).max() / np.abs(want.numpy()).max()
    jax_s, torch_s = [], []
    for _ in range(args.repeats):
        jax_s.append(_models.timed(run_jax, sync)[0])
        time.sleep(0.5)
        torch_s.append(_models.timed(run_torch, sync)[0])
        time.sleep(0.5)
    j, t = float(np.median(jax_s)), float(np.median(torch_s))
    print(
        f"model: {args.family}-shaped mid-size, {ids.shape[1]} tokens x batch {args.batch}, "
        f"{args.frames} frames"
    )
    print(f"torch threads: {torch.get_num_threads()}  transformers attention: {args.attn}")
    print(f"features agree: max rel err {err:.2e}")
    print(f"jax first call (compile + run): {compile_s:.2f} s")
    print(f"jax warm:   {j * 1e3:8.1f} ms/batch  ({args.batch / j:.2f} segments/s)")
    print(f"torch warm: {t * 1e3:8.1f} ms/batch  ({args.batch / t:.2f} segments/s)")
    print(f"ratio torch/jax (warm, median of {args.repeats}): {t / j:.2f}")
    if args.family.startswith("qwen"):
        retraces(bb, cfg, args)


def retraces(bb, cfg, args):
    """Compilations over segments of two resolutions, each size twice with other pixels."""
    from headhunt_jax import features

    features.forward.clear_cache()
    sizes = _models.QWEN_SIZES[type(cfg)] * 2
    for size in sizes:
        ids, inputs = _models.qwen_inputs(cfg, args.frames, args.batch, size, seed=sum(size))
        hh.head_features(bb, ids, **inputs).block_until_ready()
    names = ", ".join(f"{h}x{w}" for h, w in sizes)
    print(f"compilations for 4 batches at {names}: {features.forward._cache_size()}")


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"total {time.time() - start:.0f} s")
