"""The public array functions inside the user's own ``jax.jit``, ``jax.vmap`` and ``jax.grad``:
each gives what the eager call gives (float32: to a few ulps, XLA may fuse differently)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import headhunt_jax as hh
from headhunt_jax.locator import event_mask

RTOL, ATOL = 1e-6, 1e-7


def close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def scorer():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 12)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.standard_normal(60) > 0).astype(int)
    return hh.fit_scorer(x, y), x


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_score_under_jit_vmap_and_grad(scorer, kind):
    base, x = scorer
    s = base if kind == "logistic" else hh.fit_scorer(x, (x[:, 0] > 0).astype(int), kind="mlp")
    eager = hh.score(s, x)
    close(jax.jit(hh.score)(s, x), eager)
    close(jax.jit(lambda x: hh.score(s, x))(x), eager)
    close(jax.vmap(lambda row: hh.score(s, row))(x), eager)  # over samples
    # dp/dx of sample 0 against the formula, in float64 on the host
    grad = jax.grad(lambda row: hh.score(s, row))(x[0])
    w = {k: np.asarray(v, np.float64) for k, v in s.params.items()}
    row = x[0].astype(np.float64)
    if kind == "mlp":
        pre = row @ w["w1"] + w["b1"]
        logit = np.maximum(pre, 0) @ w["w2"] + w["b2"]
        dlogit = w["w1"] @ (w["w2"] * (pre > 0))
    else:
        logit, dlogit = row @ w["w"] + w["b"], w["w"]
    p = 1 / (1 + np.exp(-logit))
    np.testing.assert_allclose(grad, p * (1 - p) * dlogit, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="F = 12"):
        jax.jit(lambda x: hh.score(s, x))(x[:, :5])  # shapes are checked while tracing


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_smooth_under_jit_vmap_and_grad(sigma, length):
    rng = np.random.default_rng(length)
    videos = rng.random((3, length)).astype(np.float32)
    eager = np.stack([hh.smooth(v, sigma) for v in videos])
    close(jax.jit(lambda s: hh.smooth(s, sigma))(videos[0]), eager[0])
    close(jax.vmap(lambda s: hh.smooth(s, sigma))(videos), eager)  # over videos
    # Linear: the gradient of output t with respect to the scores is the kernel's row t.
    t = length // 2
    grad = jax.grad(lambda s: hh.smooth(s, sigma)[t])(jnp.asarray(videos[0]))
    basis = np.eye(length, dtype=np.float32)
    close(grad, np.asarray([hh.smooth(e, sigma)[t] for e in basis]))


def test_event_mask_and_localize_built_on_it():
    scores = np.asarray([0.1, 0.2, 0.9, 0.95, 0.9, 0.1, 0.0, 0.8, 0.9, 0.1], np.float32)
    mask = event_mask(scores, 1.0, 0.5)
    assert mask.dtype == bool and mask.shape == scores.shape
    np.testing.assert_array_equal(jax.jit(lambda s: event_mask(s, 1.0, 0.5))(scores), mask)
    np.testing.assert_array_equal(
        jax.vmap(lambda s: event_mask(s, 1.0, 0.5))(np.stack([scores, scores[::-1]])),
        np.stack([mask, event_mask(scores[::-1], 1.0, 0.5)]),
    )
    events = hh.localize(scores, 1.0, 0.5)
    runs = np.zeros(len(scores), bool)
    for start, end in events:
        runs[start:end] = True
    np.testing.assert_array_equal(runs, mask)
    assert hh.localize(scores, None, 0.5) == [(2, 5), (7, 9)]


def test_settings_are_static():
    with pytest.raises(ValueError, match="static"):
        jax.jit(lambda s, sigma: hh.smooth(s, sigma))(np.zeros(4), 1.5)


CHAT = __import__("pathlib").Path(__file__).parent / "fixtures" / "internvl_chat" / "qwen2"


@pytest.fixture(scope="module")
def internvl():
    ref = np.load(CHAT / "reference.npz")
    return hh.load_backbone(CHAT), ref["input_ids"], ref["pixel_values"]


def test_head_features_with_the_backbone_as_an_argument(internvl):
    bb, ids, pixels = internvl
    eager = hh.head_features(bb, ids, pixels)
    np.testing.assert_array_equal(jax.jit(hh.head_features)(bb, ids, pixels), eager)
    # the parameters as an argument: a Backbone is a pytree of them
    as_params = jax.jit(lambda p: hh.head_features(hh.Backbone(bb.model, p, bb.name), ids, pixels))
    np.testing.assert_array_equal(as_params(bb.params), eager)
    with pytest.raises(ValueError, match=r"\[batch, tokens\]"):
        jax.jit(hh.head_features)(bb, ids[0], pixels)


def test_hidden_features_under_jit_and_grad(internvl):
    bb, ids, pixels = internvl
    eager = hh.hidden_features(bb, ids, pixels, layers=(0, 1))
    close(jax.jit(lambda px: hh.hidden_features(bb, ids, px, layers=(0, 1)))(pixels), eager)
    f = lambda px: hh.hidden_features(bb, ids, px, layers=(1,))[:, 0, :8].sum()  # noqa: E731
    grad = jax.grad(f)(pixels)
    direction = np.random.default_rng(1).standard_normal(pixels.shape).astype(np.float32)
    eps = 1e-2
    fd = (f(pixels + eps * direction) - f(pixels - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=2e-3)


def test_head_features_gradient_against_finite_differences(internvl):
    bb, ids, pixels = internvl

    def f(px):
        return hh.head_features(bb, ids, px, layers=[1])[:, 0, 2].sum()

    grad = jax.grad(f)(pixels)
    direction = np.random.default_rng(0).standard_normal(pixels.shape).astype(np.float32)
    eps = 1e-2
    fd = (f(pixels + eps * direction) - f(pixels - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=2e-3)


def test_a_users_jitted_detector(internvl, scorer):
    """features -> the experts' features -> scores -> smoothed scores, one jitted function."""
    bb, ids, pixels = internvl
    heads = np.asarray([[0, 1], [1, 3], [1, 0]])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3 * bb.head_dim)).astype(np.float32)
    s = hh.fit_scorer(x, (x[:, 0] > 0).astype(int))

    def detect(bb, ids, pixels):
        features = hh.head_features(bb, ids, pixels)
        experts = features[:, heads[:, 0], heads[:, 1]].reshape(len(ids), -1)
        return hh.smooth(hh.score(s, experts), 1.0)

    close(jax.jit(detect)(bb, ids, pixels), detect(bb, ids, pixels))


def test_gather_heads_under_jit_and_vmap():
    """The experts' features picked inside a jitted or vmapped function equal the eager pick;
    numpy in gives numpy out."""
    from headhunt_jax.features import gather_heads

    rng = np.random.default_rng(2)
    feats = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)  # [B, L', N, H]
    heads, layers = np.asarray([[7, 1], [2, 3], [7, 0]]), (2, 4, 5, 7, 9)
    want = gather_heads(feats, heads, layers)
    assert isinstance(want, np.ndarray) and want.shape == (3, 3, 6)
    np.testing.assert_array_equal(want[:, 0], feats[:, 3, 1])
    got = jax.jit(lambda f: gather_heads(f, heads, layers))(feats)
    np.testing.assert_array_equal(np.asarray(got), want)
    got = jax.vmap(lambda f: gather_heads(f, heads, layers))(jnp.asarray(feats))
    np.testing.assert_array_equal(np.asarray(got), want)


def test_jit_of_head_features_equals_eager_for_every_family(tmp_path):
    import hf_reference as hf
    import test_llava_onevision as lov

    rng = np.random.default_rng(2)
    cases = []
    text = hf.save(hf.build(hf.tiny_text_config("qwen3")), tmp_path / "text")
    cases.append((text, {"input_ids": rng.integers(0, 290, (2, 9))}))
    internvl = hf.save(hf.build(hf.tiny_internvl35_config()), tmp_path / "internvl")
    ids, n = hf.multimodal_ids(rng, 2, 2, 4)
    pixels = rng.standard_normal((n, 3, 56, 56)).astype(np.float32)
    cases.append((internvl, {"input_ids": ids, "pixel_values": pixels}))
    llava = hf.save(lov.build(lov.tiny_config()), tmp_path / "llava")
    cfg = hh.load_backbone(llava).config
    videos = rng.standard_normal((2, 2, 3, lov.SIZE, lov.SIZE)).astype(np.float32)
    ids = lov.video_ids(rng, cfg, batch=2, frames=2)
    cases.append((llava, {"input_ids": ids, "pixel_values_videos": videos}))
    for path, inputs in cases:
        bb = hh.load_backbone(path)
        eager = hh.head_features(bb, **inputs)
        close(jax.jit(lambda bb, inputs: hh.head_features(bb, **inputs))(bb, inputs), eager)
    # Qwen2.5-VL lays its images out on the host (prepare): input_ids must be concrete...
    qwen = hh.load_backbone(hf.save(hf.build(hf.tiny_qwen2_5_vl_config()), tmp_path / "qwen"))
    with pytest.raises(ValueError, match="input_ids must be concrete"):
        jax.jit(lambda ids: hh.head_features(qwen, ids))(np.zeros((1, 4), np.int32))
    # ... the pixels may be traced: jit and grad with respect to them, ids and grids concrete
    import test_qwen2_5_vl as q

    rows = [[("image", (1, 4, 6)), ("video", (2, 4, 4))]]
    ids = np.asarray([q._sample(rng, row) for row in rows])
    inputs = q._inputs(rng, rows, [1.0])
    px, grid = inputs.pop("pixel_values"), inputs.pop("image_grid_thw")

    def features(px):
        return hh.head_features(qwen, ids, px, image_grid_thw=grid, **inputs)

    eager = np.asarray(features(px))
    # one program (the gather, the tower, the decoder) against the eager call's: XLA fuses the
    # tower otherwise, float32 sums in another order
    got = np.asarray(jax.jit(features)(px))
    assert np.abs(got - eager).max() <= 1e-5 * np.abs(eager).max()
    objective = lambda px: jnp.sum(features(px)[:, 1:] ** 2)  # noqa: E731
    grad = jax.grad(objective)(jnp.asarray(px))
    direction = rng.standard_normal(px.shape).astype(np.float32)
    eps = 1e-3  # the tiny random tower curves fast: at 1e-2 the difference is still 1% off
    fd = (objective(px + eps * direction) - objective(px - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=2e-3)
