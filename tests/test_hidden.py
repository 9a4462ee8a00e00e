"""Hidden-state features (HiProbe-VAD's): every layer's output at the last position equals
transformers' ``output_hidden_states[1:]`` there, for every family, with early exit and prefix
reuse. (SmolLM2-135M's real weights: tests/test_generate.py, beside its other checks.)"""

import numpy as np
import pytest
import torch
from numerics import rel_err

hf = pytest.importorskip("hf_reference")

import headhunt_jax as hh  # noqa: E402
from headhunt_jax.features import features_prompts  # noqa: E402

TOL = 1e-4


def reference_hidden(model, input_ids, **inputs):
    """[B, L, hidden]: transformers' hidden states after each layer, at the last position."""
    kwargs = {"input_ids": torch.as_tensor(np.asarray(input_ids), dtype=torch.long)}
    kwargs.update({k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()})
    with torch.no_grad():
        out = model(**kwargs, output_hidden_states=True)
    return torch.stack([h[:, -1] for h in out.hidden_states[1:]], 1).float().numpy()


def check(model, bb, ids, jax_inputs, hf_inputs=None):
    want = reference_hidden(model, ids, **(jax_inputs if hf_inputs is None else hf_inputs))
    got = np.asarray(hh.hidden_features(bb, ids, **jax_inputs))
    assert got.shape == want.shape == (len(ids), bb.num_layers, bb.text_config.hidden_size)
    assert rel_err(got, want) <= TOL
    layers = (0, bb.num_layers - 2)  # early exit before the last layer (no final norm)
    part = np.asarray(hh.hidden_features(bb, ids, layers=layers, **jax_inputs))
    assert rel_err(part, want[:, list(layers)]) <= TOL
    # the final norm applies to the last layer's only: without it the last entry differs
    assert rel_err(got[:, :-1], want[:, :-1]) <= TOL


def test_text_model(tmp_path):
    """Qwen3 (q/k norms); Qwen2 and Llama run the same decoder code, their head features'
    parity is tests/test_backbone.py's, and SmolLM2 (Llama) is tests/test_generate.py's."""
    model = hf.build(hf.tiny_text_config("qwen3"))
    bb = hh.load_backbone(hf.save(model, tmp_path / "ckpt"))
    ids = np.random.default_rng(0).integers(0, 300, (2, 11))
    check(model, bb, ids, {})


def test_internvl_and_prefix_reuse(tmp_path):
    model = hf.build(hf.tiny_internvl35_config())
    bb = hh.load_backbone(hf.save(model, tmp_path / "ckpt"))
    rng = np.random.default_rng(1)
    ids, n = hf.multimodal_ids(rng, 2, 2, 4)
    pixels = rng.standard_normal((n, 3, 56, 56)).astype(np.float32)
    check(model, bb, ids, {"pixel_values": pixels})
    # two prompts after the same images (the rows' text alike): the shared prefix runs once
    same = np.repeat(ids[:1], 2, axis=0)
    prompts = [np.concatenate([same, rng.integers(0, 100, (2, k))], axis=1) for k in (2, 5)]
    got = features_prompts(bb, prompts, pixels, layers=(1, 2), kinds=("heads", "hidden"))
    for m, prompt in enumerate(prompts):
        want = reference_hidden(model, prompt, pixel_values=pixels)
        assert rel_err(got["hidden"][m], want[:, [1, 2]]) <= TOL
        heads = hh.head_features(bb, prompt, pixels, layers=(1, 2))
        assert rel_err(got["heads"][m], np.asarray(heads)) <= 1e-5


def test_llava_onevision(tmp_path):
    import test_llava_onevision as lov

    model = lov.build(lov.tiny_config())
    bb = hh.load_backbone(hf.save(model, tmp_path / "ckpt"))
    rng = np.random.default_rng(2)
    videos = rng.standard_normal((2, 2, 3, lov.SIZE, lov.SIZE)).astype(np.float32)
    ids = lov.video_ids(rng, bb.config, batch=2, frames=2)
    check(model, bb, ids, {"pixel_values_videos": videos})


def test_qwen2_5_vl(tmp_path):
    import test_qwen2_5_vl as q

    model = hf.build(hf.tiny_qwen2_5_vl_config())
    bb = hh.load_backbone(hf.save(model, tmp_path / "ckpt"))
    rng = np.random.default_rng(3)
    rows = [[("image", (1, 6, 10)), ("video", (2, 4, 4))], [("image", (1, 4, 4))]]
    ids = [q._sample(rng, row) for row in rows]
    width = max(map(len, ids))
    ids = np.asarray([[5] * (width - len(r)) + r for r in ids])
    inputs = q._inputs(rng, rows, [1.5])
    check(model, bb, ids, inputs, {**inputs, "mm_token_type_ids": q._types(ids)})
