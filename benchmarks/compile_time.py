"""Trace and compile time of the head-features forward, with no weights in memory.

For each preset (released shapes), ``features.forward`` for one 16-frame segment (batch 1, bf16,
every layer's heads) is lowered ahead of time from abstract parameters and inputs
(``jax.jit(...).trace(...).lower().compile()``), so only the compiler's own memory is used. Each
preset runs in a fresh process, so none reuses another's caches. A segment is its vision tokens
plus 132 text tokens (InternVL3's prompt over 16 frames of 448 px: 4,228 tokens); Qwen2.5-VL's
and Qwen3-VL's frames are 16 images of 320 x 240 video (252 x 308 px, 99 tokens each; 256 x 320
px, 80 tokens each: what one new video resolution costs to compile).

    python benchmarks/compile_time.py [--presets InternVL3-1B,...] [--frames 16]
        [--against DIR]

``--against DIR``: the same measurement with DIR's headhunt_jax first on the path (another
checkout, e.g. one exported at an earlier commit), and the ratio DIR / this tree.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PRESETS = (
    "InternVL3-1B",
    "InternVL3-8B",
    "InternVL3.5-8B",
    "llava-onevision-qwen2-7b-ov",
    "Qwen2.5-VL-7B",
    "Qwen3-VL-8B",
)
TEXT_TOKENS = 132
ROOT = Path(__file__).resolve().parent.parent


def segment_inputs(cfg, frames: int):
    """Abstract (input_ids, vision inputs, positions or None) of one segment of ``frames``
    frames, batch 1."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from headhunt_jax import backbones

    family = backbones.for_config(cfg)
    if family.prepare is not None:  # Qwen2.5-VL, Qwen3-VL: 16 images of 320 x 240, prepared
        from headhunt_jax.backbones.qwen2_5_vl import processor_pixels as pp

        v = cfg.vision
        grid = pp.image_grid(v, 240, 320)  # within both families' pixel limits
        row = [cfg.vision_start_token_id] + [cfg.image_token_id] * pp.image_tokens(v, 240, 320)
        ids = np.asarray([[0] * TEXT_TOKENS + row * frames], np.int32)
        hf = {
            "pixel_values": np.zeros((frames * int(np.prod(grid)), v.patch_dim), np.float32),
            "image_grid_thw": np.tile(np.asarray([grid]), (frames, 1)),
        }
        vision, positions = family.prepare(cfg, [ids], hf)
        spec = lambda a: jax.ShapeDtypeStruct(a.shape, jnp.asarray(a).dtype)  # noqa: E731
        vision = {k: spec(a) for k, a in vision.items()}
        return spec(ids), vision, (spec(positions[0]),)
    s = cfg.vision.image_size
    if hasattr(cfg, "video_tokens"):  # LLaVA-OneVision: one video
        vision_tokens = cfg.video_tokens(frames)
        vision = {"pixel_values_videos": jax.ShapeDtypeStruct((1, frames, 3, s, s), jnp.float32)}
    else:  # InternVL: one image a frame
        vision_tokens = frames * cfg.tokens_per_image
        vision = {"pixel_values": jax.ShapeDtypeStruct((frames, 3, s, s), jnp.float32)}
    ids = jax.ShapeDtypeStruct((1, vision_tokens + TEXT_TOKENS), jnp.int32)
    return ids, vision, None


def measure(name: str, frames: int) -> dict:
    """Trace (+ lowering) and compile seconds of one preset's forward."""
    import jax

    from headhunt_jax import backbone, features

    jax.jit(lambda x: x + 1)(1.0).block_until_ready()  # backend start-up is not counted
    cfg = backbone.preset(name)
    model = backbone.make_model(cfg, "bfloat16")
    params = backbone.abstract_params(model)
    ids, vision, positions = segment_inputs(cfg, frames)
    layers = tuple(range(cfg.text.num_layers))
    start = time.perf_counter()
    lowered = features.forward.trace(model, params, (ids,), vision, layers, None, positions)
    lowered = lowered.lower()
    traced = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    return {
        "preset": name,
        "tokens": ids.shape[1],
        "layers": f"{getattr(cfg.vision, 'num_layers', None) or cfg.vision.depth} + "
        f"{cfg.text.num_layers}",
        "trace_s": traced - start,
        "compile_s": done - traced,
        "headhunt_jax": str(Path(backbone.__file__).parent),
    }


def run_one(name: str, frames: int, path: Path) -> dict:
    """``measure`` in a fresh process with ``path`` first on the Python path."""
    env = dict(os.environ, PYTHONPATH=str(path))
    cmd = [sys.executable, __file__, "--one", name, "--frames", str(frames)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{name} under {path} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--against", type=Path, help="another checkout to compare with")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one preset, JSON on stdout
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.frames)))
        return

    print(f"{os.cpu_count()} CPU cores, {args.frames} frames a segment, batch 1, bf16")
    header = (
        f"{'preset':<28} {'layers':>8} {'tokens':>6} {'trace s':>8} {'compile s':>9} {'total s':>8}"
    )
    if args.against:
        header += f"  {'against: trace':>14} {'compile':>8} {'total':>7} {'ratio':>6}"
    print(header)
    for name in args.presets.split(","):
        r = run_one(name, args.frames, ROOT)
        total = r["trace_s"] + r["compile_s"]
        line = (
            f"{name:<28} {r['layers']:>8} {r['tokens']:>6} {r['trace_s']:8.1f} "
            f"{r['compile_s']:9.1f} {total:8.1f}"
        )
        if args.against:
            o = run_one(name, args.frames, args.against.resolve())
            other = o["trace_s"] + o["compile_s"]
            line += (
                f"  {o['trace_s']:14.1f} {o['compile_s']:8.1f} {other:7.1f} {other / total:5.1f}x"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
