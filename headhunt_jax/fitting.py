"""Fitting a detector: the scorer trained on its probe's features (expert heads, or one layer's
hidden state: ``detector.Probe``) of a labelled store
(labels: ``annotations.segment_labels``), optionally on part of its videos (``holdout_split``),
and the locator's sigma and tau chosen on segment scores (``locator.calibrate``)."""

import dataclasses

import numpy as np

from headhunt_jax.annotations import Events, Labels, labelled_videos
from headhunt_jax.detector import Detector, Probe, detector_scores
from headhunt_jax.errors import InputError
from headhunt_jax.evaluation import binary_metrics
from headhunt_jax.locator import calibrate
from headhunt_jax.scorer import fit_scorer
from headhunt_jax.store import FeatureStore

# What a validation store must share with the training store for its scores to calibrate on.
_SAME_FEATURES = (
    "backbone_fingerprint",
    "prompt",
    "dtype",
    "image_size",
    "frames_per_segment",
    "processor_options",
)


def _expert_data(store: FeatureStore, probe: Probe, events: Events | None, labels: Labels | None):
    """Each labelled video's probe features [S, F] and row labels [S]."""
    videos = labelled_videos(store, events, labels)
    where = str(store.path)
    return [probe.features_of(v.kinds(), store.spec, where) for v, _ in videos], [
        y for _, y in videos
    ]


def holdout_split(video_labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) video indices: a seeded ``fraction`` of each class held out (at least
    one video of each class on each side). Whole videos, so that no video's segments are on both
    sides."""
    video_labels = np.asarray(video_labels)
    if not 0 < fraction < 1:
        raise InputError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in (0, 1):
        rows = np.flatnonzero(video_labels == c)
        if len(rows) < 2:
            raise InputError(
                f"holding out part of the videos needs at least 2 of each class; "
                f"{len(rows)} are {('normal', 'anomalous')[c]}"
            )
        count = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held.append(rng.permutation(rows)[:count])
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(video_labels)), held), held


def _check_validation(validation: FeatureStore, store: FeatureStore) -> None:
    for field in _SAME_FEATURES:
        theirs, ours = getattr(validation.spec, field), getattr(store.spec, field)
        if theirs != ours:
            raise InputError(
                f"{validation.path}: {field} {theirs!r}, the training store {store.path} "
                f"has {ours!r}"
            )
    if validation.spec.clip != "segment":
        raise InputError(
            f"{validation.path}: holds one clip a video; sigma and tau are chosen on the scores "
            "of consecutive segments (extract it with --clip segment)"
        )


def fit(
    store: FeatureStore,
    heads,
    events: Events | None = None,
    kind: str = "logistic",
    validation: FeatureStore | None = None,
    *,
    labels: Labels | None = None,
    holdout: float | None = None,
    seed: int = 0,
) -> Detector:
    """A detector from the features of ``store``'s videos (labels: ``segment_labels``) that
    ``heads`` reads: expert heads int [K, 2], or a ``Probe`` (``Probe.hidden(layer)``).

    The scorer trains on every row, or with ``holdout`` on the videos left after holding out
    that fraction of each class (``holdout_split``, seeded), whose rows then give accuracy,
    precision, recall, F1, ROC AUC and AP at threshold 0.5 (``Detector.training["holdout"]``,
    the original's train_scorer check). Sigma and tau come from a grid search for F1 on the
    segment scores of ``validation`` (held-out videos of the same backbone and prompt, cut into
    segments), else of the held-out videos, else of the training videos (optimistic). A store of
    one clip a video has no segment scores of its own: without ``validation`` the locator keeps
    its defaults. ``Detector.training`` records which.
    """
    probe = heads if isinstance(heads, Probe) else Probe("heads", heads)
    xs, ys = _expert_data(store, probe, events, labels)
    train, held = np.arange(len(xs)), np.zeros(0, int)
    if holdout is not None:
        train, held = holdout_split([y.max() for y in ys], holdout, seed)
    scorer = fit_scorer(
        np.concatenate([xs[i] for i in train]), np.concatenate([ys[i] for i in train]), kind
    )
    spec = store.spec
    detector = Detector(
        probe.heads,
        scorer,
        layer=probe.layer,
        backbone=spec.backbone,
        prompt=spec.prompt,
        backbone_fingerprint=spec.backbone_fingerprint,
        dtype=spec.dtype,
        backbone_path=store.backbone_path or "",
        backbone_hub=store.backbone_hub or "",
        processor_options=dict(spec.processor_options),
    )
    training = {
        "store": str(store.path),
        "probe": probe.kind,
        "clip": spec.clip,
        "videos": len(train),
        "rows": int(sum(len(xs[i]) for i in train)),
        "holdout": None,
    }
    if holdout is not None:
        scores = np.concatenate([detector_scores(detector, xs[i]) for i in held])
        truth = np.concatenate([ys[i] for i in held])
        training["holdout"] = {"fraction": holdout, "seed": seed, "videos": len(held)}
        training["holdout"] |= binary_metrics(truth, scores)
    if validation is not None:
        _check_validation(validation, store)
        xs, ys = _expert_data(validation, probe, events, labels)
        training["calibrated_on"] = f"validation store {validation.path}"
    elif spec.clip != "segment":
        training["calibrated_on"] = "defaults (one clip a video, no segment scores)"
        return dataclasses.replace(detector, training=training)
    elif holdout is not None:
        xs, ys = [xs[i] for i in held], [ys[i] for i in held]
        training["calibrated_on"] = "held-out videos"
    else:
        training["calibrated_on"] = "training videos (optimistic)"
    sigma, tau = calibrate([detector_scores(detector, x) for x in xs], ys)
    return dataclasses.replace(detector, sigma=sigma, tau=tau, training=training)
