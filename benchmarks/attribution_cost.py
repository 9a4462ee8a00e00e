"""The cost of spatial attribution against plain detection features on the mid-size model.

One segment batch of 16 frames: ``head_features`` at the experts' layers (what detection runs)
against ``head_attribution`` of the same experts (that forward plus its backward to the pixels);
prints both warm medians and their ratio.

    python benchmarks/attribution_cost.py [--batch 1] [--frames 16] [--repeats 3]
"""

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402

from headhunt_jax import backbone, features  # noqa: E402
from headhunt_jax.attribution import head_attribution  # noqa: E402

HEADS = np.asarray([[5, 1], [5, 6], [6, 2], [7, 0], [7, 7]])  # 5 experts, deepest layer 7 of 8


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cfg = _models.MID
    model = backbone.make_model(cfg)
    bb = backbone.Backbone(model, backbone.random_params(model), "mid")
    ids = _models.segment_ids(cfg, args.frames, args.batch)
    size = cfg.vision.image_size
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((args.batch * args.frames, 3, size, size)).astype(np.float32)
    layers = tuple(sorted(set(HEADS[:, 0].tolist())))
    forward = jax.jit(lambda bb, p: features.head_features(bb, ids, p, layers=layers))
    maps = jax.jit(lambda bb, p: head_attribution(bb, ids, p, HEADS))
    t_features = _models.median_time(
        lambda: forward(bb, pixels), jax.block_until_ready, args.repeats
    )
    t_maps = _models.median_time(lambda: maps(bb, pixels), jax.block_until_ready, args.repeats)
    print(
        f"mid-size InternVL-shaped model, {args.frames} frames x batch {args.batch} "
        f"({ids.shape[1]} tokens), 5 experts up to layer 7 of 8: features {t_features * 1e3:.0f} "
        f"ms, attribution {t_maps * 1e3:.0f} ms, {t_maps / t_features:.2f}x"
    )


if __name__ == "__main__":
    main()
