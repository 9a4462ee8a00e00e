"""Extraction throughput on one GPU: headhunt_jax against transformers' PyTorch model.

The shapes of a preset of any family (default InternVL3-8B; llava-onevision-qwen2-7b-ov,
Qwen2.5-VL-7B, ...), random bf16 weights shared by both (the torch model's weights are converted
into the Flax tree by the family's table, as ``load_backbone`` does), 16 frames a segment (448 px
InternVL tiles, 384 px LLaVA-OneVision frames, Qwen2.5-VL images of 224 x 224), batch swept. For each: segments/s, model FLOPs utilisation, peak memory; transformers runs with
sdpa attention and o_proj pre-hooks (the original's way) on the same GPU in the same process.
The features of the two are compared too (bf16 vs bf16).

    python benchmarks/gpu_extract.py [--preset InternVL3-8B] [--batches 2,8] [--out results.json]
        [--modes all,experts,prompts2]

Modes: ``all`` every head under one prompt (the MFU figure); ``experts`` the published
XD-Violence heads (headhunt_jax stops after layer 23's attention; the original's forward runs
every layer); ``promptsM`` every head under M prompts (headhunt_jax computes the frames' prefix
once; the original runs M full passes). transformers is batched like headhunt_jax here, which
is faster than the original's one segment at a time.

On a CPU it runs the same code on a small config: ``--preset mid --batches 1`` (``mid-llava``,
``mid-qwen``: the other families). MFU is counted for InternVL only.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402

from headhunt_jax import backbone, backbones, features, weights  # noqa: E402
from headhunt_jax.backbones.internvl.config import InternVLConfig  # noqa: E402
from headhunt_jax.features import head_features_prompts  # noqa: E402

# Layers of the published XD-Violence expert heads (checkpoints/xd_violence_internvl3_8b.json).
XD_VIOLENCE_EXPERT_LAYERS = (18, 20, 23)

# Dense bf16 peak of the card (NVIDIA's datasheet figures, without sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def log(*a):
    print(*a, flush=True)


def peak_flops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device_kind), None)


def torch_to_numpy(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16)
    return t.cpu().numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--preset",
        default="InternVL3-8B",
        help="any preset (InternVL3-8B, llava-onevision-qwen2-7b-ov, Qwen2.5-VL-7B, ...) or "
        "mid, mid-llava, mid-qwen",
    )
    ap.add_argument("--batches", default="2,8")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--modes",
        default="all",
        help="comma-separated: all (every head, one prompt), experts (the published "
        "XD-Violence heads: headhunt_jax stops after layer 23's attention, the original runs "
        "the whole model), promptsM (every head under M prompts: one shared frame prefix "
        "against M full passes; M from --prompts)",
    )
    ap.add_argument("--prompts", type=int, default=2, help="M for the promptsM mode")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    args.modes = args.modes.split(",")
    known = ("all", "experts", f"prompts{args.prompts}")
    if any(m not in known for m in args.modes):
        ap.error(f"--modes: each one of {', '.join(known)}, got {args.modes}")

    cfg = _models.MIDS.get(args.preset) or backbone.preset(args.preset)
    gpu = torch.cuda.is_available()
    tdev = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    device_kind = jax.devices()[0].device_kind
    log(
        f"jax {jax.__version__} on {device_kind}; torch {torch.__version__} on {tdev}; transformers {transformers.__version__}"
    )

    start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(tdev):
        tmodel = _models.hf_model(cfg, "sdpa").eval()
    torch.set_default_dtype(torch.float32)
    log(f"torch model built in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    model = backbone.make_model(cfg, "bfloat16" if gpu else "float32", attention="auto")
    tensors = ((k, torch_to_numpy(v)) for k, v in tmodel.state_dict().items())
    flat = weights.convert(
        tensors,
        backbone.param_shapes(model),
        np.dtype(model.dtype),
        "torch model",
        cfg.text.tie_word_embeddings,
        table=backbones.for_config(cfg).keys,
    )
    params = jax.device_put(
        flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    )
    del flat
    gc.collect()
    bb = backbone.Backbone(model, params, args.preset)
    log(
        f"weights converted to the Flax tree in {time.perf_counter() - start:.1f} s (attention: {model.attention_impl})"
    )

    hooks = _models.TorchHooks(tmodel)
    peak = peak_flops(device_kind) if gpu else None
    # the published experts' layers (a smaller model: the same depth fraction)
    experts = tuple(round(layer * cfg.text.num_layers / 28) for layer in XD_VIOLENCE_EXPERT_LAYERS)
    results = []
    for batch in batches:
        rng = np.random.default_rng(batch)
        ids, inputs, extra = _models.segments(cfg, args.frames, batch, seed=batch)
        t_inputs = {
            k: torch.as_tensor(v, device=tdev).to(dtype if v.dtype == np.float32 else None)
            for k, v in inputs.items()
        }
        j_inputs = {  # the pixels on device in the model's dtype (grids stay host arrays)
            k: jax.device_put(v.astype(np.dtype(model.dtype))) if v.dtype == np.float32 else v
            for k, v in inputs.items()
        }
        # M prompts: the same frames, each prompt's own text after them (lengths differ)
        frames_part = ids[:, :-30]
        text_vocab = min(cfg.vision_token_ids)
        prompt_ids = [
            np.concatenate(
                [frames_part, rng.integers(0, text_vocab, (batch, 30 + 7 * i))], 1
            ).astype(np.int32)
            for i in range(args.prompts)
        ]

        def run_torch(ids_list, t_inputs=t_inputs, extra=extra):
            out = []
            with torch.inference_mode():
                for i in ids_list:
                    t_ids = torch.as_tensor(i, dtype=torch.long, device=tdev)
                    # e.g. Qwen2.5-VL's mm_token_type_ids (1 image, 2 video), for these ids
                    types = sum((n + 1) * (i == t) for n, t in enumerate(cfg.vision_token_ids))
                    more = {k: torch.as_tensor(types, device=tdev) for k in extra}
                    tmodel(input_ids=t_ids, **t_inputs, **more, logits_to_keep=1)
                    out.append(hooks.features(cfg.text.num_heads))
            return torch.stack(out)

        def sync_torch(x):
            if gpu:
                torch.cuda.synchronize()
            return x

        def jax_all(bb, ids=ids, j_inputs=j_inputs):
            return features.head_features(bb, ids, **j_inputs)[None]

        def jax_experts(bb, ids=ids, j_inputs=j_inputs, experts=experts):
            return features.head_features(bb, ids, layers=experts, **j_inputs)[None]

        def jax_prompts(bb, prompt_ids=prompt_ids, j_inputs=j_inputs):
            return head_features_prompts(bb, prompt_ids, **j_inputs)

        # mode: (what headhunt_jax runs, the prompts torch runs, the layers compared)
        modes = {
            "all": (jax_all, [ids], None),
            "experts": (jax_experts, [ids], list(experts)),
            f"prompts{args.prompts}": (jax_prompts, prompt_ids, None),
        }
        if isinstance(cfg, InternVLConfig):
            flops = _models.extraction_flops(cfg, ids.shape[1], args.frames) * batch
            log(f"batch {batch}: {ids.shape[1]} tokens, {flops / batch / 1e12:.1f} TFLOP a segment")
        else:
            flops = None
            log(f"batch {batch}: {ids.shape[1]} tokens")
        for mode in args.modes:
            jax_fn, torch_ids, layers = modes[mode]
            start = time.perf_counter()
            try:
                got = np.asarray(jax_fn(bb))
            except Exception as e:  # cuDNN may refuse a shape: fall back to XLA, say so
                if bb.model.attention_impl != "cudnn":
                    raise
                log(f"cuDNN attention failed ({type(e).__name__}: {str(e)[:300]}); using XLA")
                bb = backbone.Backbone(
                    backbone.make_model(cfg, model.dtype, attention="xla"), params, args.preset
                )
                got = np.asarray(jax_fn(bb))
            compile_s = time.perf_counter() - start
            jax_s = _models.median_time(
                functools.partial(jax_fn, bb), jax.block_until_ready, args.repeats, warmup=0
            )
            jax_mem = jax.devices()[0].memory_stats() or {}
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            want = sync_torch(run_torch(torch_ids)).float().cpu().numpy()
            torch_s = _models.median_time(
                functools.partial(run_torch, torch_ids), sync_torch, args.repeats, warmup=0
            )
            torch_mem = torch.cuda.max_memory_allocated() if gpu else 0
            if layers is not None:
                want = want[:, :, layers]
            err = float(np.abs(got - want).max() / np.abs(want).max())
            row = {
                "mode": mode,
                "batch": batch,
                "tokens": int(ids.shape[1]),
                "jax_compile_s": round(compile_s, 1),
                "jax_segments_per_s": round(batch / jax_s, 3),
                "torch_segments_per_s": round(batch / torch_s, 3),
                "speedup": round(torch_s / jax_s, 2),
                "jax_attention": bb.model.attention_impl,
                # MFU of the full single-prompt extraction only: the other modes skip work
                "jax_mfu": round(flops / jax_s / peak, 3)
                if flops and peak and mode == "all"
                else None,
                "torch_mfu": round(flops / torch_s / peak, 3)
                if flops and peak and mode == "all"
                else None,
                "jax_peak_gib": round(jax_mem.get("peak_bytes_in_use", 0) / 2**30, 1),
                "torch_peak_gib": round(torch_mem / 2**30, 1),
                "features_max_rel_err": float(f"{err:.2g}"),
            }
            results.append(row)
            log(json.dumps(row))
    summary = {
        "device": device_kind,
        "preset": args.preset,
        "frames": args.frames,
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    log(
        "mode      batch  tokens  jax seg/s  torch seg/s  speedup  jax MFU  torch MFU  jax GiB  torch GiB  rel err"
    )
    for r in results:
        log(
            f"{r['mode']:8s}  {r['batch']:5d}  {r['tokens']:6d}  {r['jax_segments_per_s']:9.3f}  {r['torch_segments_per_s']:11.3f}"
            f"  {r['speedup']:7.2f}  {r['jax_mfu'] or 0:7.3f}  {r['torch_mfu'] or 0:9.3f}"
            f"  {r['jax_peak_gib']:7.1f}  {r['torch_peak_gib']:9.1f}  {r['features_max_rel_err']:.1e}"
        )


if __name__ == "__main__":
    main()
