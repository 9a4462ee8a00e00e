"""saliency, robust_saliency and top_k_heads under the user's transformations (jit, vmap, grad),
and their value checks at the pipeline's and the CLI's edge.

Error measure of saliency: max |transformed - eager| / max |eager| per criterion (float32). The
bound is TOL = 1e-5, the float32 precision the reference tests of tests/test_hunt.py allow; seen:
up to ~2e-6 (lda of the dual form, whose 1e-6 ridge amplifies rounding), ~1e-7 in the primal
form, and mmd and nmi equal. (The same program is compiled inside a larger one, so XLA may fuse
and order the float32 sums differently; a constant labelling is folded into it.)
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from meshes import run_on_8_devices
from numerics import rel_err

import headhunt_jax as hh
from headhunt_jax import hunt
from headhunt_jax.errors import InputError

TOL = 1e-5
N, L, H = 20, 2, 3
NAMES = ("lda", "kl", "mmd", "nmi", "combined")
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")
on_mesh = pytest.mark.skipif(
    not EIGHT_DEVICES, reason="needs 8 devices: run by test_on_8_simulated_devices"
)


def heads(seed, dim=6, n=N):
    """Features [n, L, H, dim] float32 and labels [n] int32; anomalies shifted and rescaled."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(np.int32)
    rng.shuffle(labels)
    features = rng.normal(size=(n, L, H, dim))
    shift = rng.uniform(0.2, 1.5, size=(1, L, H, dim))
    scale = rng.uniform(0.5, 2.0, size=(1, L, H, dim))
    features = np.where(labels[:, None, None, None] == 1, features * scale + shift, features)
    return features.astype(np.float32), labels


def assert_close(got, want):
    for name in NAMES:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == np.float32, name
        assert rel_err(got[name], want[name]) <= TOL, (name, rel_err(got[name], want[name]))


# --- saliency -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [6, 24], ids=["primal", "dual"])  # N - 2 >= D, and N - 2 < D
def test_saliency_under_jit_equals_eager(dim):
    features, labels = heads(0, dim)
    eager = hh.saliency(features, labels)
    # features and labels traced; labels closed over (constants); features closed over, labels
    # traced, 6 heads in padded chunks of 4.
    assert_close(jax.jit(hh.saliency)(features, labels), eager)
    assert_close(jax.jit(lambda f: hh.saliency(f, labels))(features), eager)
    chunked = jax.jit(lambda y: hh.saliency(features, y, heads_per_chunk=4))(labels)
    assert_close(chunked, hh.saliency(features, labels, heads_per_chunk=4))
    # Bool labels and features as device arrays.
    as_bool = jax.jit(hh.saliency)(jnp.asarray(features), jnp.asarray(labels == 1))
    assert_close(as_bool, eager)


def test_saliency_traces_once_for_every_labelling():
    features, labels = heads(1)
    traces = []

    @jax.jit
    def scores(f, y):
        traces.append(None)
        return hh.saliency(f, y)

    # 7, then 10, then 2 anomalies of 20: the class sizes are data.
    for y in (labels, np.arange(N) % 2, (np.arange(N) < 2).astype(np.int32)):
        assert_close(scores(features, y), hh.saliency(features, y))
    assert len(traces) == 1


@pytest.mark.parametrize("anomalies", [0, 1, N - 1, N])
def test_saliency_under_jit_gives_zeros_for_a_class_of_fewer_than_2_clips(anomalies):
    features, _ = heads(2)
    labels = (np.arange(N) < anomalies).astype(np.int32)
    out = jax.jit(hh.saliency)(features, labels)  # no value check while traced
    for name in NAMES:
        np.testing.assert_array_equal(out[name], 0.0, err_msg=name)


def test_padding_of_heads_changes_nothing():
    features, labels = heads(3)
    alone = hh.saliency(features, labels, heads_per_chunk=6)  # one chunk, no padding
    for chunk in (1, 4, 5):  # 6 heads padded to 6, 8 and 10
        assert_close(hh.saliency(features, labels, heads_per_chunk=chunk), alone)
        assert_close(
            jax.jit(functools.partial(hh.saliency, heads_per_chunk=chunk))(features, labels), alone
        )


def test_saliency_vmapped_over_prompts():
    stack, labels = zip(*(heads(seed) for seed in (4, 5)), strict=True)
    stack, labels = np.stack(stack), np.stack(labels)
    batched = jax.vmap(hh.saliency)(stack, labels)
    shared = jax.vmap(hh.saliency, in_axes=(0, None))(stack, labels[0])
    for i in range(2):
        assert_close({k: v[i] for k, v in batched.items()}, hh.saliency(stack[i], labels[i]))
        assert_close({k: v[i] for k, v in shared.items()}, hh.saliency(stack[i], labels[0]))


def test_saliency_checks_shapes_and_dtypes_while_tracing():
    features, labels = heads(6)
    with pytest.raises(ValueError, match=r"\[N, L, H, D\]"):
        jax.jit(hh.saliency)(features[..., 0], labels)
    with pytest.raises(ValueError, match="labels must be"):
        jax.jit(hh.saliency)(features, labels[1:])
    with pytest.raises(ValueError, match="floating point"):
        jax.jit(hh.saliency)(features.astype(np.int32), labels)
    with pytest.raises(ValueError, match="labels must be 0/1"):
        hh.saliency(features, labels.astype(str))


# --- robust_saliency and top_k_heads ------------------------------------------------------------


def test_robust_saliency_under_jit_vmap_and_grad():
    rng = np.random.default_rng(7)
    combined = rng.random((3, L, H)).astype(np.float32)
    eager = hh.robust_saliency(combined, lam=0.7)
    np.testing.assert_allclose(
        jax.jit(lambda c: hh.robust_saliency(c, lam=0.7))(combined), eager, rtol=1e-6
    )

    stacks = rng.random((4, 3, L, H)).astype(np.float32)  # [B, M, L, H]
    batched = jax.vmap(lambda c: hh.robust_saliency(c, lam=0.5))(stacks)
    assert batched.shape == (4, L, H)
    for b in range(4):
        np.testing.assert_allclose(batched[b], hh.robust_saliency(stacks[b]), rtol=1e-6)

    # Gradient of the sum against central differences (float32, step 1e-3: rounding ~1e-4).
    grad = jax.grad(lambda c: jnp.sum(hh.robust_saliency(c, lam=0.7)))(combined)
    step = 1e-3
    numeric = np.zeros_like(combined)
    for i in np.ndindex(combined.shape):
        up, down = combined.copy(), combined.copy()
        up[i] += step
        down[i] -= step
        diff = hh.robust_saliency(up, 0.7).sum() - hh.robust_saliency(down, 0.7).sum()
        numeric[i] = diff / (up[i] - down[i])
    np.testing.assert_allclose(grad, numeric, atol=5e-4)
    # Analytically: 1/M - lam (c - mean) / (M std).
    mean, std = combined.mean(0), combined.std(0)
    np.testing.assert_allclose(grad, 1 / 3 - 0.7 * (combined - mean) / (3 * std), atol=1e-6)


def test_top_k_heads_under_jit_and_vmap_keeps_the_tie_rule():
    rss = np.array([[0.5, 0.9, 0.5], [0.9, 0.1, 0.5]], np.float32)
    order = np.argsort(rss.ravel(), kind="stable")[::-1][:4]
    expected = np.stack(np.divmod(order, 3), axis=1)
    np.testing.assert_array_equal(hh.top_k_heads(rss, k=4), expected)
    jitted = jax.jit(lambda r: hh.top_k_heads(r, k=4))(rss)
    assert jitted.dtype == jnp.int32
    np.testing.assert_array_equal(jitted, expected)

    rng = np.random.default_rng(8)
    stack = rng.integers(0, 3, size=(5, L, H)).astype(np.float32)  # [B, L, H], many ties
    batched = jax.vmap(lambda r: hh.top_k_heads(r, k=3))(stack)
    assert batched.shape == (5, 3, 2)
    for b in range(5):
        np.testing.assert_array_equal(batched[b], hh.top_k_heads(stack[b], k=3))
        order = np.argsort(stack[b].ravel(), kind="stable")[::-1][:3]
        np.testing.assert_array_equal(batched[b], np.stack(np.divmod(order, H), axis=1))

    with pytest.raises(ValueError, match="k must be in"):
        jax.jit(lambda r: hh.top_k_heads(r, k=L * H + 1))(rss)
    with pytest.raises(TypeError, match="static"):
        jax.jit(hh.top_k_heads)(rss, 2)
    with pytest.raises(ValueError, match=r"\[L, H\]"):
        jax.jit(lambda r: hh.top_k_heads(r, k=1))(rss[0])


def test_traced_values_are_not_checked():
    nan = jnp.full((2, L, H), jnp.nan)
    assert np.isnan(jax.jit(hh.robust_saliency)(nan)).all()
    assert jax.jit(lambda r: hh.top_k_heads(r, k=2))(nan[0]).shape == (2, 2)


# --- value checks at the edges ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "value", "message"),
    [
        (np.zeros(N), 0.0, "labels contain one class only"),
        (np.arange(N) % 3, 0.0, "labels must be 0 .normal. or 1"),
        (np.arange(N) % 2, np.nan, "features contain NaN or inf"),
        (np.arange(N) % 2, np.inf, "features contain NaN or inf"),
        (np.arange(N) % 2, 1e39, "features contain NaN or inf"),  # inf as float32
    ],
)
def test_check_saliency_inputs(labels, value, message):
    features = np.zeros((N, L, H, 4))
    features[3, 1, 2, 0] = value
    with pytest.raises(InputError, match=message):
        hunt.check_saliency_inputs(features, labels)
    with pytest.raises(InputError, match=message):  # an eager call makes the same checks
        hh.saliency(features, labels)


def test_check_finite():
    hunt.check_finite(np.zeros(3), "rss")
    with pytest.raises(InputError, match="^rss contains NaN or inf$"):
        hunt.check_finite(np.array([0.0, np.nan]), "rss")


def _store(path, prompt, labels, seed, poison=False):
    """An all-head store (2 layers x 3 heads x 4) of videos of 6 segments (label: the video's);
    with ``poison``, one feature of the last video is NaN."""
    from headhunt_jax.store import FeatureStore, StoreSpec, VideoFeatures
    from headhunt_jax.video import VideoMetadata

    spec = StoreSpec(
        backbone="tiny",
        prompt=prompt,
        dtype="float32",
        image_size=448,
        frames_per_segment=16,
        segment_length=48,
        layers=(0, 1),
        heads=None,
        feature_shape=(2, 3, 4),
    )
    store = FeatureStore.create(path, spec)
    rng = np.random.default_rng(seed)
    for i, label in enumerate(labels):
        starts = np.arange(6) * 48
        meta = VideoMetadata(f"v{i}.mp4", 25.0, "stream", 288, 6, False, 0, 288)
        x = rng.standard_normal((6, 2, 3, 4)).astype(np.float32) + label
        if poison and i == len(labels) - 1:
            x[2, 1, 1, 3] = np.nan
        v = VideoFeatures(f"v{i}.mp4", x, starts, starts + 48, np.zeros((6, 16), int), meta, label)
        store.write(v)
    return store


def test_pipeline_and_cli_check_values_at_the_edge(tmp_path, capsys):
    from headhunt_jax import cli, experts

    labels = [0, 1, 0, 1, 0, 1]
    good = _store(tmp_path / "good", "p0", labels, seed=0)
    other = _store(tmp_path / "other", "p1", labels, seed=1)
    bad = _store(tmp_path / "bad", "p1", labels, seed=1, poison=True)
    result = experts.hunt([good, other], k=2)
    assert result.heads.shape == (2, 2)
    with pytest.raises(InputError, match=r"bad: features contain NaN or inf$"):
        experts.hunt([good, bad], k=2)
    with pytest.raises(InputError, match=r"robust saliency \(lam nan\) contains NaN or inf"):
        experts.hunt([good, other], k=2, lam=float("nan"))
    code = cli.main(["hunt", str(good.path), str(bad.path), "--out", str(tmp_path / "h.json")])
    assert code == 1
    err = capsys.readouterr().err
    assert err == f"headhunt-jax hunt: error: {bad.path}: features contain NaN or inf\n"


# --- on a mesh ----------------------------------------------------------------------------------


@pytest.mark.skipif(EIGHT_DEVICES, reason="already on 8 devices")
def test_on_8_simulated_devices():
    run_on_8_devices(__file__)


@on_mesh
@pytest.mark.parametrize("shape", [(8, 1), (2, 4)])
def test_on_mesh_saliency_under_jit_equals_one_device(shape):
    from headhunt_jax import sharding

    # 3 x 7 = 21 heads: padded to 8 devices x 2 chunks x 2
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 3, 7, 5)).astype(np.float32)
    labels = (np.arange(40) % 3 == 0).astype(np.int32)
    features[labels == 1] *= rng.uniform(0.5, 2.0, size=(1, 3, 7, 5)).astype(np.float32)
    want = hh.saliency(features, labels)
    mesh = sharding.make_mesh(*shape)
    scores = jax.jit(functools.partial(hh.saliency, heads_per_chunk=2, mesh=mesh))
    assert_close(scores(features, labels), want)
    assert_close(jax.jit(lambda y: scores(features, y))(labels), want)
