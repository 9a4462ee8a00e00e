"""Anomaly scorer on the concatenated expert-head features, trained with optax.

The default is HeadHunt-VAD's scorer: logistic regression with the objective of the original
(sklearn LogisticRegression, C = 1, liblinear solver), which penalises the intercept like a weight
(liblinear appends a constant feature 1, intercept_scaling = 1):

    0.5 * (|w|^2 + b^2) + C * sum_i log(1 + exp(-s_i (w . x_i + b))),   s_i = +-1.

The paper's ablation scorers are options: a linear SVM (LinearSVC's objective: squared hinge loss,
the same penalty) and a 2-layer MLP. Training is deterministic: full batch, L-BFGS from zero for
the convex objectives, Adam from a seeded initialisation for the MLP.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from headhunt_jax.bundle import read_bundle, write_bundle
from headhunt_jax.errors import InputError

KINDS = ("logistic", "svm", "mlp")

_LBFGS_MAX_ITER = 1000
_LBFGS_RTOL = 1e-6  # stop when |grad| <= _LBFGS_RTOL * |grad at the start|
# MLP training: sklearn MLPClassifier's defaults where they apply (Adam lr 1e-3, L2 alpha 1e-4).
_MLP_STEPS = 500
_MLP_LEARNING_RATE = 1e-3
_MLP_ALPHA = 1e-4


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"], meta_fields=["kind"])
@dataclasses.dataclass(frozen=True)
class Scorer:
    """A trained scorer: `kind` (one of KINDS) and its parameter arrays.

    logistic / svm: {"w": [F], "b": []}; mlp: {"w1": [F, hidden], "b1": [hidden], "w2": [hidden],
    "b2": []}, F the feature dimension (K * head_dim).
    """

    kind: str
    params: dict

    @property
    def feature_dim(self):
        """The input size F."""
        return self.params["w1" if self.kind == "mlp" else "w"].shape[0]


def _linear(params, x):
    return x @ params["w"] + params["b"]


def _mlp(params, x):
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


def _logits(scorer, x):
    return (_mlp if scorer.kind == "mlp" else _linear)(scorer.params, x)


def _penalised_objective(loss, c):
    """0.5 (|w|^2 + b^2) + c * sum_i loss(margin_i), margin_i = s_i (w . x_i + b)."""

    def objective(params, x, signs):
        penalty = 0.5 * (jnp.sum(params["w"] ** 2) + params["b"] ** 2)
        return penalty + c * jnp.sum(loss(signs * _linear(params, x)))

    return objective


def _log_loss(margin):
    return jax.nn.softplus(-margin)


def _squared_hinge(margin):
    return jnp.maximum(1.0 - margin, 0.0) ** 2


@functools.partial(jax.jit, static_argnames=("loss", "c"))
def _fit_linear(x, signs, loss, c):
    """Minimise the penalised objective with L-BFGS (zoom line search) from zero."""
    objective = functools.partial(_penalised_objective(loss, c), x=x, signs=signs)
    params = {"w": jnp.zeros(x.shape[1], x.dtype), "b": jnp.zeros((), x.dtype)}
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        return optax.apply_updates(params, updates), state

    def running(carry, start_norm):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < _LBFGS_MAX_ITER) & (grad_norm > _LBFGS_RTOL * start_norm))

    # GPUs and TPUs otherwise multiply float32 in TF32 / bfloat16 passes.
    with jax.default_matmul_precision("highest"):
        start_norm = optax.tree.norm(jax.grad(objective)(params))
        params, _ = jax.lax.while_loop(
            functools.partial(running, start_norm=start_norm),
            step,
            (params, solver.init(params)),
        )
    return params


@functools.partial(jax.jit, static_argnames="hidden")
def _fit_mlp(x, labels, key, hidden):
    """Adam on mean log-loss + 0.5 alpha |W|^2 / N (sklearn MLPClassifier's loss), full batch."""
    k1, k2 = jax.random.split(key)
    features = x.shape[1]
    params = {
        "w1": jax.nn.initializers.glorot_uniform()(k1, (features, hidden), x.dtype),
        "b1": jnp.zeros(hidden, x.dtype),
        "w2": jax.nn.initializers.glorot_uniform()(k2, (hidden, 1), x.dtype)[:, 0],
        "b2": jnp.zeros((), x.dtype),
    }

    def loss(params):
        logits = _mlp(params, x)
        data = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
        weights = jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2)
        return data + 0.5 * _MLP_ALPHA * weights / x.shape[0]

    optimiser = optax.adam(_MLP_LEARNING_RATE)

    def step(carry, _):
        params, state = carry
        updates, state = optimiser.update(jax.grad(loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimiser.init(params)), length=_MLP_STEPS)
    return params


def _check_features(x, name="x"):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, F] (concatenated expert features), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must be numeric, got {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x.astype(np.float32)


def fit_scorer(x, y, kind="logistic", *, c=1.0, hidden=128, seed=0):
    """Train an anomaly scorer on concatenated expert features.

    Args:
      x: [N, F] features (F = K * head_dim).
      y: [N] 0/1 labels (1 = anomaly); both classes must be present.
      kind: "logistic" (the method's scorer), "svm" or "mlp" (ablations).
      c: inverse regularisation strength of the logistic regression and the SVM (sklearn's C).
      hidden: hidden width of the MLP.
      seed: initialisation seed of the MLP.

    Returns:
      Scorer.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = _check_features(x)
    y = np.asarray(y)
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must be [N] with N = {x.shape[0]}, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must be 0 (normal) or 1 (anomaly)")
    if np.unique(y).size < 2:
        raise InputError(
            "y contains one class only; a scorer needs both normal and anomalous clips"
        )
    if c <= 0:
        raise ValueError(f"c must be positive, got {c}")
    if kind == "mlp":
        params = _fit_mlp(x, y.astype(np.float32), jax.random.key(seed), hidden)
    else:
        loss = _log_loss if kind == "logistic" else _squared_hinge
        params = _fit_linear(x, 2.0 * y.astype(np.float32) - 1.0, loss, float(c))
    return Scorer(kind, params)


@jax.jit
def _probabilities(scorer, x):
    with jax.default_matmul_precision("highest"):
        return jax.nn.sigmoid(_logits(scorer, x))


def score(scorer, x):
    """Anomaly probabilities [...] of features x [..., F] ([N, F] -> [N]).

    For the SVM this is the sigmoid of its decision value: a monotone map, so rankings, ROC AUC and
    AP are the SVM's own. Traceable: inside ``jax.jit``, ``jax.vmap`` (over samples) and
    ``jax.grad`` (with respect to x or the scorer's parameters; a ``Scorer`` is a pytree) it gives
    what the eager call gives. The shape is checked, values are not (the CLI checks features).
    """
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != scorer.feature_dim:
        raise ValueError(
            f"x must be [..., F] with F = {scorer.feature_dim}, the features the scorer was "
            f"trained on; got shape {x.shape}"
        )
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"x must be numeric, got {x.dtype}")
    return _probabilities(scorer, x.astype(jnp.float32))


def save_scorer(path, scorer, *, overwrite=False):
    """Save a Scorer as an orbax checkpoint directory."""
    write_bundle(path, scorer.params, {"kind": scorer.kind}, overwrite)


def load_scorer(path):
    """Load a Scorer saved by save_scorer."""
    params, meta = read_bundle(path)
    return Scorer(meta["kind"], params)
