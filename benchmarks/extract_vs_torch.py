"""Per-head feature extraction: headhunt_jax against transformers with o_proj pre-hooks.

The same mid-size model of a family (random weights, saved once with ``save_pretrained`` and
loaded by both), 16 frames a segment, batch >= 2. Runs alternate between the two; prints the
first-call compile time and the warm torch/jax time ratio (> 1 means headhunt_jax is faster).

    python benchmarks/extract_vs_torch.py [--family internvl|llava-onevision] [--batch 2]
        [--frames 16] [--repeats 5]
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
import transformers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402

import headhunt_jax as hh  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="internvl", choices=["internvl", "llava-onevision"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--attn", default="sdpa", help="transformers attention implementation (sdpa or eager)"
    )
    args = ap.parse_args()

    torch.manual_seed(0)
    if args.family == "internvl":
        cfg = _models.MID
        model = transformers.InternVLForConditionalGeneration(_models.hf_config(cfg, args.attn))
        ids = _models.segment_ids(cfg, args.frames, args.batch)
        shape, key = (args.batch * args.frames, 3), "pixel_values"
        size = cfg.vision.image_size
    else:
        cfg = _models.MID_LLAVA
        config = _models.hf_llava_config(cfg, args.attn)
        model = transformers.LlavaOnevisionForConditionalGeneration(config)
        ids = _models.video_ids(cfg, args.frames, args.batch)
        shape, key = (args.batch, args.frames, 3), "pixel_values_videos"
        size = cfg.image_size
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        bb = hh.load_backbone(tmp)

    pixels = np.random.default_rng(1).standard_normal((*shape, size, size), np.float32)
    t_ids, t_pixels = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(pixels)
    hooks = _models.TorchHooks(model)

    def run_jax():
        return hh.head_features(bb, ids, **{key: pixels})

    def run_torch():
        with torch.inference_mode():
            model(input_ids=t_ids, **{key: t_pixels}, logits_to_keep=1)
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


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"total {time.time() - start:.0f} s")
