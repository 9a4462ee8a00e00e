"""Hunting cost: prefix reuse across prompts, and early exit at the deepest expert layer.

Prefix reuse: M prompts over the same 16 frames, ``head_features_prompts`` (the frame prefix
computed once) against M ``head_features`` calls; prints the speedup for each M.
Early exit: the published XD-Violence experts' deepest layer is 23 of 28, so detection runs
layers 0-22 and only the attention of layer 23; prints the time against reading all 28 layers
(the original's forward runs them all) on a 28-layer model, vision tower included.

    python benchmarks/prefix_reuse.py [--family internvl|llava-onevision] [--prompts 2,5]
        [--batch 1] [--repeats 3]
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402

from headhunt_jax import backbone, features  # noqa: E402
from headhunt_jax.features import head_features_prompts  # noqa: E402

XD_VIOLENCE_EXPERT_LAYERS = (18, 20, 23)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="internvl", choices=["internvl", "llava-onevision"])
    ap.add_argument("--prompts", default="2,5")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    if args.family == "internvl":
        cfg = _models.MID
        make_ids, key, shape = _models.segment_ids, "pixel_values", (args.batch * args.frames,)
        size = cfg.vision.image_size
    else:
        cfg = _models.MID_LLAVA
        make_ids, key, shape = _models.video_ids, "pixel_values_videos", (args.batch, args.frames)
        size = cfg.image_size
    model = backbone.make_model(cfg)
    bb = backbone.Backbone(model, backbone.random_params(model), "mid")
    head = make_ids(cfg, args.frames, args.batch)[:, :-30]  # everything before the prompt
    vision = {key: rng.standard_normal((*shape, 3, size, size)).astype(np.float32)}
    print(
        f"mid-size {args.family}-shaped model, {args.frames} frames ({head.shape[1]} prefix "
        f"tokens), batch {args.batch}"
    )
    for m in (int(x) for x in args.prompts.split(",")):
        tails = [
            rng.integers(0, cfg.image_token_id, size=(args.batch, 20 + 4 * i)) for i in range(m)
        ]
        ids = [np.concatenate([head, t], axis=1).astype(np.int32) for t in tails]

        def separate(ids=ids):
            return [features.head_features(bb, i, **vision) for i in ids]

        def shared(ids=ids):
            return head_features_prompts(bb, ids, **vision)

        t_sep, t_shared = (
            _models.median_time(separate, jax.block_until_ready, args.repeats),
            _models.median_time(shared, jax.block_until_ready, args.repeats),
        )
        print(
            f"M={m}: {m} full passes {t_sep:.2f} s, shared prefix {t_shared:.2f} s, speedup {t_sep / t_shared:.2f}x"
        )

    deep = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_layers=28))
    model = backbone.make_model(deep)
    bb = backbone.Backbone(model, backbone.random_params(model), "mid-28")
    ids = make_ids(deep, args.frames, args.batch)
    full = _models.median_time(
        lambda: features.head_features(bb, ids, **vision), jax.block_until_ready, args.repeats
    )
    exit_23 = _models.median_time(
        lambda: features.head_features(bb, ids, layers=XD_VIOLENCE_EXPERT_LAYERS, **vision),
        jax.block_until_ready,
        args.repeats,
    )
    print(
        f"early exit (28-layer decoder): all 28 layers {full:.2f} s, experts' layers up to 23 {exit_23:.2f} s,"
        f" saves {100 * (1 - exit_23 / full):.0f}%"
    )


if __name__ == "__main__":
    main()
