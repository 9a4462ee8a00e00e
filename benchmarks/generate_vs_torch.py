"""Greedy decoding: headhunt_jax's ``generate`` against transformers' ``generate(do_sample=False)``.

The same mid-size model (random weights, saved once with ``save_pretrained`` and loaded by both):
the decoder of the extraction benchmarks' mid-size InternVL (8 layers, hidden 512, GQA 8:2,
vocab 8192) as a Qwen2 causal LM. For batch 1 and 4: time to first token (the prompt's prefill
and one token) and decoding tokens/s (the other new tokens over the rest of the time), warm
medians, side by side in one run; the ratio is headhunt_jax's tokens/s over transformers'. Both
make exactly ``--new`` tokens (no EOS) and the tokens are checked equal.

Then what reusing a segment's frames saves an explanation (``prefill`` -> ``generate(prefix=)``):
the mid-size InternVL, 16 frames of 224 px, a question and ``--new`` tokens, from the whole
prompt against from the question after the kept keys and values of the frames.

    python benchmarks/generate_vs_torch.py [--prompt 256] [--new 64] [--repeats 3]
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _models  # noqa: E402

import headhunt_jax as hh  # noqa: E402


def _sync(out):
    return jax.block_until_ready(out)


def torch_run(model, ids, new):
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
    return out[:, ids.shape[1] :].numpy()


def jax_run(bb, ids, new, **kw):
    return hh.generate(bb, ids, new, eos_token_id=(), pad_token_id=0, **kw).tokens


def rates(run, new, repeats):
    """(time to first token s, decoding tokens/s, the tokens), warm medians."""
    first = _models.median_time(lambda: run(1), _sync, repeats)
    total = _models.median_time(lambda: run(new), _sync, repeats)
    return first, (new - 1) / max(total - first, 1e-9), run(new)


def text_benchmark(args):
    import transformers

    cfg = _models.MID.text
    hf_cfg = transformers.Qwen2Config(**_models._hf_text(cfg))
    hf_cfg._attn_implementation = args.attn
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        bb = hh.load_backbone(tmp)
    rng = np.random.default_rng(0)
    print(
        f"mid-size Qwen2 decoder ({cfg.num_layers} layers, hidden {cfg.hidden_size}), prompt "
        f"{args.prompt} tokens, {args.new} new tokens, torch {args.attn}, "
        f"{torch.get_num_threads()} torch threads"
    )
    for batch in (1, 4):
        ids = rng.integers(1, cfg.vocab_size, (batch, args.prompt))
        t_ids = torch.as_tensor(ids)
        t_first, t_rate, want = rates(
            lambda n, t=t_ids: torch_run(model, t, n), args.new, args.repeats
        )
        j_first, j_rate, got = rates(lambda n, i=ids: jax_run(bb, i, n), args.new, args.repeats)
        same = "tokens equal" if np.array_equal(got, want) else "TOKENS DIFFER"
        print(
            f"batch {batch}: time to first token jax {j_first * 1e3:.0f} ms, torch "
            f"{t_first * 1e3:.0f} ms; tokens/s jax {j_rate * batch:.0f}, torch "
            f"{t_rate * batch:.0f}; ratio jax/torch {j_rate / t_rate:.2f} ({same})"
        )


def prefix_benchmark(args):
    cfg = _models.MID
    torch.manual_seed(0)
    model = _models.hf_model(cfg, args.attn).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        bb = hh.load_backbone(tmp)
    ids, inputs, _ = _models.segments(cfg, 16, 1)
    head, question = ids[:, :-30], ids[:, -30:]  # the frames, then a 30-token question
    whole = _models.median_time(lambda: jax_run(bb, ids, args.new, **inputs), _sync, args.repeats)
    cache = hh.prefill(bb, head, **inputs)
    kept = _models.median_time(
        lambda: jax_run(bb, question, args.new, prefix=cache), _sync, args.repeats
    )
    same = np.array_equal(
        jax_run(bb, ids, args.new, **inputs), jax_run(bb, question, args.new, prefix=cache)
    )
    prefix = _models.median_time(lambda: hh.prefill(bb, head, **inputs).keys, _sync, args.repeats)
    print(
        f"explanation of a 16-frame segment (mid InternVL, {ids.shape[1]} tokens, "
        f"{args.new} new): whole prompt {whole * 1e3:.0f} ms, after the frames' kept keys and "
        f"values {kept * 1e3:.0f} ms ({whole / kept:.1f}x; the frames' prefill itself "
        f"{prefix * 1e3:.0f} ms; tokens {'equal' if same else 'DIFFER'})"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attn", default="sdpa", help="transformers attention (sdpa or eager)")
    args = ap.parse_args()
    text_benchmark(args)
    prefix_benchmark(args)


if __name__ == "__main__":
    main()
