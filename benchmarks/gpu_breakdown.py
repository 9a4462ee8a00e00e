"""Where extraction time goes on a GPU: the vision tower (+ projector) and the decoder timed on
their own, for headhunt_jax and for transformers, InternVL3-8B shapes, random bf16 weights.

    python benchmarks/gpu_breakdown.py [--side jax|torch] [--batch 2]

Run the jax side under different XLA_FLAGS to compare compiler settings.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", default="jax")
    ap.add_argument("--preset", default="InternVL3-8B")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    from headhunt_jax import backbone

    cfg = _models.MID if args.preset == "mid" else backbone.preset(args.preset)
    v, t = cfg.vision, cfg.text
    ids = _models.segment_ids(cfg, args.frames, args.batch)
    seq = ids.shape[1]
    images = args.batch * args.frames
    n_vis = (v.image_size // v.patch_size) ** 2 + 1
    vis_flops = _models.extraction_flops(cfg, 0, args.frames) * args.batch
    dec_flops = (_models.extraction_flops(cfg, seq, args.frames) * args.batch) - vis_flops
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((images, 3, v.image_size, v.image_size), np.float32)
    embeds = rng.standard_normal((args.batch, seq, t.hidden_size), np.float32)
    del n_vis

    if args.side == "jax":
        import jax
        import jax.numpy as jnp

        model = backbone.make_model(cfg, args.dtype)
        params = backbone.random_params(model)
        px = jnp.asarray(pixels, model.dtype)
        em = jnp.asarray(embeds, model.dtype)
        vision = jax.jit(
            lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.image_embeddings(x))
        )
        dec = jax.jit(
            lambda p, e: model.apply(
                {"params": p},
                e,
                method=lambda m, e: m.language_model.features(e, depth=t.num_layers),
            )
        )
        from headhunt_jax.models.decoder import MLP, Attention

        layer0 = jax.tree.map(lambda a: a[0], params["language_model"]["layers"])  # stacked
        mlp = MLP(t, model.dtype)
        attn = Attention(t, model.dtype, model.attention_impl)
        positions = jnp.broadcast_to(jnp.arange(seq), (args.batch, seq))
        ff = jax.jit(lambda p, e: mlp.apply({"params": p["mlp"]}, e))
        at = jax.jit(lambda p, e: attn.apply({"params": p["attn"]}, e, positions)[0])
        sync = jax.block_until_ready
        vs = _models.median_time(lambda: vision(params, px), sync)
        ds = _models.median_time(lambda: dec(params, em), sync)
        fs = _models.median_time(lambda: ff(layer0, em), sync)
        ats = _models.median_time(lambda: at(layer0, em), sync)
        print(f"jax {os.environ.get('XLA_FLAGS', '')!r} attention={model.attention_impl}")
    else:
        import torch
        import transformers

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        tdtype = getattr(torch, args.dtype)
        torch.set_default_dtype(tdtype)
        with torch.device(dev):
            tm = transformers.InternVLForConditionalGeneration(
                _models.hf_config(cfg, "sdpa")
            ).eval()
        px = torch.as_tensor(pixels, device=dev).to(tdtype)
        em = torch.as_tensor(embeds, device=dev).to(tdtype)

        def sync(x):
            if dev == "cuda":
                torch.cuda.synchronize()

        layer = tm.model.language_model.layers[0]
        pos = torch.arange(seq, device=dev)[None].expand(args.batch, -1)
        rope = tm.model.language_model.rotary_emb(em, pos)
        with torch.inference_mode():
            vs = _models.median_time(lambda: tm.model.get_image_features(pixel_values=px), sync)
            ds = _models.median_time(lambda: tm.model.language_model(inputs_embeds=em), sync)
            fs = _models.median_time(lambda: layer.mlp(em), sync)
            ats = _models.median_time(lambda: layer.self_attn(em, rope, None), sync)
        print("torch sdpa")
    mlp_flops = 2 * args.batch * seq * 3 * t.hidden_size * t.intermediate_size
    print(f"  vision+projector {vs * 1e3:8.1f} ms  {vis_flops / vs / 1e12:6.1f} TFLOP/s")
    print(f"  decoder (all)    {ds * 1e3:8.1f} ms  {dec_flops / ds / 1e12:6.1f} TFLOP/s")
    print(f"  one MLP          {fs * 1e3:8.1f} ms  {mlp_flops / fs / 1e12:6.1f} TFLOP/s")
    print(f"  one attention    {ats * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
