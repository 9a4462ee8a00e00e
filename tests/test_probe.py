"""DLSP's layer criteria and chosen layer against a plain float64 reference, under jit and vmap,
on a mesh, and their value checks.

Error measure: max |got - reference| / max |reference| over the layers, per criterion
(float32 against float64); the bound TOL = 1e-5. The reference follows the formulas of
headhunt_jax/probe.py's docstring straightforwardly: numpy per class, the entropy from the
eigenvalues of the covariance (the module uses a Gram matrix), sklearn's MinMaxScaler.

``test_on_mesh_*`` need 8 devices; ``test_on_8_simulated_devices`` reruns them in a subprocess
with 8 simulated CPU devices. To run them directly:
``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu pytest tests/test_probe.py``.
"""

import functools
import os

import jax
import numpy as np
import pytest
from meshes import run_on_8_devices
from numerics import rel_err

from headhunt_jax import probe
from headhunt_jax.errors import InputError

TOL = 1e-5
NAMES = probe.CRITERIA
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")
on_mesh = pytest.mark.skipif(
    not EIGHT_DEVICES, reason="needs 8 devices: run by test_on_8_simulated_devices"
)


def reference(hidden, labels):
    """float64 criteria (dict of [L]), combined scores [L] and chosen layer."""
    from sklearn.preprocessing import MinMaxScaler  # here: the mesh subprocess needs none

    hidden = np.asarray(hidden, np.float64)
    out = {name: [] for name in NAMES}
    for x in np.moveaxis(hidden, 1, 0):
        xa, xn = x[labels == 1], x[labels == 0]
        mu_a, mu_n = xa.mean(0), xn.mean(0)
        var_a, var_n = xa.var(0), xn.var(0)
        within = var_a.sum() + var_n.sum()
        s_a = var_a + 1e-6 * within / (2 * x.shape[1])
        s_n = var_n + 1e-6 * within / (2 * x.shape[1])
        kl = 0.5 * np.sum(np.log(s_n / s_a) + (s_a + (mu_a - mu_n) ** 2) / s_n - 1)
        out["kl"].append(kl)
        out["ldr"].append(np.sum((mu_a - mu_n) ** 2) / within)
        eigenvalues = np.clip(np.linalg.eigvalsh(np.cov(x.T, bias=True)), 0, None)
        p = eigenvalues / eigenvalues.sum()
        out["entropy"].append(-np.log(np.sum(p**2)))
    out = {name: np.array(v) for name, v in out.items()}
    scaled = MinMaxScaler().fit_transform(np.stack([out[name] for name in NAMES], axis=1))
    scores = (scaled[:, 0] + scaled[:, 1] + 1 - scaled[:, 2]) / 3
    return out, scores, int(np.argmax(scores))


def layers(seed, n=40, num_layers=6, dim=16, shifted=()):
    """hidden [n, num_layers, dim] float32 (common offset, coordinates of unequal scale) and
    labels [n] int32; the anomalies moved in the layers of ``shifted``, {layer: shift}."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(np.int32)
    rng.shuffle(labels)
    hidden = rng.normal(size=(n, num_layers, dim)) * rng.uniform(0.3, 3.0, size=(1, 1, dim))
    for layer, shift in dict(shifted).items():
        direction = rng.normal(size=dim)
        hidden[labels == 1, layer] *= rng.uniform(0.8, 1.5, size=dim)
        hidden[labels == 1, layer] += shift * direction / np.linalg.norm(direction)
    hidden += rng.normal(scale=5.0, size=(1, num_layers, dim))
    return hidden.astype(np.float32), labels


def assert_close(got, want):
    for name in NAMES:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == np.float32, name
        assert rel_err(got[name], want[name]) <= TOL, (name, rel_err(got[name], want[name]))


# Two shapes (each compiled once): more clips than dimensions, and fewer.
CASES = {
    "random": dict(seed=0),
    "random, more dims than clips": dict(seed=1, n=24, dim=64),
    "separable": dict(seed=2, shifted={2: 2.0, 4: 6.0}),
    "separable, more dims than clips": dict(seed=3, n=24, dim=64, shifted={1: 8.0, 3: 3.0}),
}


@pytest.mark.parametrize("case", CASES)
def test_criteria_and_layer_match_reference(case):
    hidden, labels = layers(**CASES[case])
    want, want_scores, want_layer = reference(hidden, labels)
    got = probe.layer_saliency(hidden, labels)
    for name in NAMES:
        assert got[name].dtype == np.float32
        assert rel_err(got[name], want[name]) <= TOL, (name, rel_err(got[name], want[name]))
    assert rel_err(probe.layer_scores(got), want_scores) <= TOL
    # The reference's best layer wins by a margin the float32 error cannot bridge.
    assert np.sort(want_scores)[-1] - np.sort(want_scores)[-2] > 1e-3
    assert probe.top_layer(got) == want_layer
    assert isinstance(probe.top_layer(got), int)
    if "separable" in case:
        shifted = CASES[case]["shifted"]
        assert want_layer == max(shifted, key=shifted.get)


def test_chunks_and_float64_input_change_nothing():
    hidden, labels = layers(4, shifted={5: 4.0})
    want = probe.layer_saliency(hidden, labels)
    # 6 layers in chunks of 4: padded to 8
    assert_close(probe.layer_saliency(hidden, labels, layers_per_chunk=4), want)
    assert_close(probe.layer_saliency(hidden.astype(np.float64), labels.astype(bool)), want)


def test_layer_scores_is_the_mean_of_scaled_criteria():
    criteria = {
        "kl": np.array([0.0, 2.0, 1.0]),
        "ldr": np.array([5.0, 5.0, 5.0]),  # constant: scaled to 0 everywhere
        "entropy": np.array([3.0, 1.0, 2.0]),
    }
    np.testing.assert_allclose(probe.layer_scores(criteria), [0.0, 2 / 3, 1 / 3], atol=1e-7)
    assert probe.top_layer(criteria) == 1
    tie = {"kl": np.ones(4), "ldr": np.ones(4), "entropy": np.ones(4)}
    assert probe.top_layer(tie) == 0


# --- under jit and vmap -------------------------------------------------------------------------


def test_jit_equals_eager():
    hidden, labels = layers(6, shifted={3: 3.0})
    want = probe.layer_saliency(hidden, labels)
    assert_close(jax.jit(lambda y: probe.layer_saliency(hidden, y))(labels), want)
    got, chosen = jax.jit(lambda x, y: (s := probe.layer_saliency(x, y), probe.top_layer(s)))(
        hidden, labels
    )
    assert_close(got, want)
    assert chosen.dtype == np.int32 and int(chosen) == probe.top_layer(want) == 3


def test_vmap_over_prompts_equals_one_at_a_time():
    stack = [layers(seed, shifted={seed: 3.0}) for seed in (1, 2, 4)]
    hidden = np.stack([h for h, _ in stack])
    labels = stack[0][1]
    got = jax.vmap(probe.layer_saliency, in_axes=(0, None))(hidden, labels)
    chosen = jax.vmap(probe.top_layer)(got)
    assert chosen.shape == (3,)
    for m, h in enumerate(hidden):
        want = probe.layer_saliency(h, labels)
        assert_close({name: got[name][m] for name in NAMES}, want)
        assert int(chosen[m]) == probe.top_layer(want)
    np.testing.assert_array_equal(probe.top_layer(got), chosen)


def test_traced_labels_of_one_clip_in_a_class_give_zero_kl_and_ldr():
    hidden, labels = layers(7)
    labels = np.zeros_like(labels)
    labels[0] = 1
    got = jax.jit(probe.layer_saliency)(hidden, labels)
    assert not np.asarray(got["kl"]).any() and not np.asarray(got["ldr"]).any()
    assert np.asarray(got["entropy"]).min() > 0


# --- value and shape checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, y: (h, np.where(y == 1, 2, 0)), "must be 0 .normal. or 1"),
        (lambda h, y: (h, np.zeros_like(y)), "0 anomalous and 40 normal"),
        (lambda h, y: (h, (np.arange(y.size) == 0).astype(np.int32)), "1 anomalous and 39"),
        (lambda h, y: (np.where(np.arange(h.shape[0])[:, None, None] == 3, np.nan, h), y), "NaN"),
    ],
)
def test_bad_values_raise_input_error(change, message):
    hidden, labels = change(*layers(8))
    with pytest.raises(InputError, match=message):
        probe.layer_saliency(hidden, labels)


def test_bad_shapes_and_criteria_raise():
    hidden, labels = layers(9)
    with pytest.raises(ValueError, match=r"\[N, L, E\]"):
        probe.layer_saliency(hidden[:, 0], labels)
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        probe.layer_saliency(hidden, labels[:-1])
    with pytest.raises(ValueError, match="floating point"):
        probe.layer_saliency(hidden.astype(np.int32), labels)
    with pytest.raises(ValueError, match="lack"):
        probe.top_layer({"kl": np.ones(3), "ldr": np.ones(3)})
    with pytest.raises(ValueError, match="one shape"):
        probe.top_layer({"kl": np.ones(3), "ldr": np.ones(3), "entropy": np.ones(4)})
    with pytest.raises(InputError, match="'ldr'.*NaN"):
        probe.top_layer({"kl": np.ones(3), "ldr": np.array([1, np.nan, 2]), "entropy": np.ones(3)})


# --- on a mesh ----------------------------------------------------------------------------------


@pytest.mark.skipif(EIGHT_DEVICES, reason="already on 8 devices")
def test_on_8_simulated_devices():
    run_on_8_devices(__file__)


@on_mesh
def test_on_mesh_equals_one_device():
    from headhunt_jax import sharding

    # 11 layers over a (2, 4) mesh: padded to 8 devices x 2 chunks x 1 layer under jit
    hidden, labels = layers(10, num_layers=11, shifted={6: 4.0})
    want = probe.layer_saliency(hidden, labels)
    mesh = sharding.make_mesh(2, 4)
    assert_close(probe.layer_saliency(hidden, labels, mesh=mesh), want)
    scores = jax.jit(functools.partial(probe.layer_saliency, layers_per_chunk=1, mesh=mesh))
    assert_close(jax.jit(lambda y: scores(hidden, y))(labels), want)
