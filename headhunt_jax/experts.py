"""Expert heads from feature stores: hunted over the all-head stores of M prompts (``hunt`` ->
``HuntResult``, written as a heads file that ``load_heads`` reads back), and the experts' features
of a stored video (``expert_features``).

The numerics (saliency, robust saliency, top K) are :mod:`headhunt_jax.hunt`'s, traceable and
unchecked; this module feeds them labelled rows (``annotations.labelled_videos``) and checks their
values at the edge.
"""

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from headhunt_jax import files, paths, probe
from headhunt_jax.annotations import Events, Labels, labelled_videos
from headhunt_jax.detector import Probe
from headhunt_jax.errors import InputError
from headhunt_jax.features import check_heads, gather_heads
from headhunt_jax.hunt import (
    CRITERIA,
    check_finite,
    check_saliency_inputs,
    robust_saliency,
    saliency,
    top_k_heads,
)
from headhunt_jax.store import FeatureStore, VideoFeatures

# Rows kept for the t-SNE pictures of a hunt: t-SNE's cost grows as N log N and past this the
# picture shows no more.
SAMPLE_ROWS = 1000


@dataclasses.dataclass(frozen=True)
class HeadSample:
    """Hunted rows kept for pictures (``plots.tsne``), under ``prompt``: ``labels`` int [N];
    ``experts`` float32 [N, K * D], the expert heads' features concatenated; ``layer`` and
    ``layer_heads`` float32 [N, H * D], every head of the layer of lowest mean RSS, for
    comparison. At most ``SAMPLE_ROWS`` rows (``clip_subset``)."""

    labels: np.ndarray
    experts: np.ndarray
    layer: int
    layer_heads: np.ndarray
    prompt: str


@dataclasses.dataclass(frozen=True)
class HuntResult:
    """heads: int [K, 2] (layer, head), best first; rss: [L, H]; combined: [M, L, H];
    criteria: {"lda", "kl", "mmd", "nmi"}: each [M, L, H], the raw criterion under each prompt;
    sample: rows for pictures (None when not kept)."""

    heads: np.ndarray
    rss: np.ndarray
    combined: np.ndarray
    backbone: str
    prompts: tuple[str, ...]
    criteria: dict = dataclasses.field(default_factory=dict)
    sample: HeadSample | None = None

    def to_json(self) -> dict:
        return {
            "heads": self.heads.tolist(),
            "backbone": self.backbone,
            "prompts": list(self.prompts),
            "rss": np.round(self.rss, 6).tolist(),
            "criteria": {k: np.round(v, 6).tolist() for k, v in self.criteria.items()},
        }


def clip_subset(labels: np.ndarray, max_clips: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_clips`` rows, each class drawn in proportion (at least 2 of a class
    that has 2), seeded; all rows when there are few enough. Saliency holds [N, N] arrays a head,
    so N stays in the thousands."""
    n = len(labels)
    if max_clips is None or n <= max_clips:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picked = []
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        take = min(len(rows), max(2, round(max_clips * len(rows) / n)))
        picked.append(rng.choice(rows, size=take, replace=False))
    return np.sort(np.concatenate(picked))


def _check_stores(stores: Sequence[FeatureStore]) -> None:
    """All-head stores of one backbone and one clip unit, at least two."""
    if len(stores) < 2:
        raise InputError(f"hunting needs stores of at least 2 prompts, got {len(stores)}")
    first = stores[0].spec
    for s in stores:
        if not s.spec.holds("heads"):
            raise InputError(f"{s.path}: holds no head features (hunt it with --probe hidden)")
        if s.spec.heads is not None:
            raise InputError(f"{s.path}: holds expert heads only; hunting needs all heads")
        if s.spec.clip != first.clip:
            raise InputError(f"{s.path}: clip {s.spec.clip!r}, {stores[0].path} has {first.clip!r}")
        if s.spec.backbone != first.backbone:
            raise InputError(
                f"{s.path}: backbone {s.spec.backbone!r}, {stores[0].path} has {first.backbone!r}"
            )


def hunt(
    stores: Sequence[FeatureStore],
    k: int = 5,
    lam: float = 0.5,
    events: Events | None = None,
    max_clips: int | None = 4000,
    mesh=None,
    labels: Labels | None = None,
) -> HuntResult:
    """Expert heads from all-head stores of the same videos under M >= 2 prompts, scored on the
    same (at most ``max_clips``, see ``clip_subset``) segments under every prompt; ``mesh``: the
    devices that split the heads (``saliency``). The values are checked here, at the edge
    (``saliency`` and the rest are traceable and check shapes only while traced)."""
    _check_stores(stores)
    combined, criteria = [], []
    for s, x, y in _labelled_rows(stores, events, labels, max_clips, "features", "hunting"):
        try:
            check_saliency_inputs(x, y)
        except InputError as e:
            raise InputError(f"{s.path}: {e}") from None
        scores = saliency(x, y, mesh=mesh)
        combined.append(np.asarray(scores["combined"]))
        criteria.append({name: np.asarray(scores[name]) for name in CRITERIA})
    combined = np.stack(combined)
    check_finite(combined, "the combined saliency")
    rss = np.asarray(robust_saliency(combined, lam))
    check_finite(rss, f"the robust saliency (lam {lam})")
    heads = np.asarray(top_k_heads(rss, k))
    return HuntResult(
        heads,
        rss,
        combined,
        stores[0].spec.backbone,
        tuple(s.spec.prompt for s in stores),
        {name: np.stack([c[name] for c in criteria]) for name in CRITERIA},
        head_sample(x, y, heads, rss, stores[-1].spec.prompt),
    )


def head_sample(x, labels, heads, rss, prompt: str) -> HeadSample:
    """``HeadSample`` of all-head features x [N, L, H, D] with labels [N]."""
    keep = clip_subset(labels, SAMPLE_ROWS)
    x, labels = x[keep], labels[keep]
    layer = int(np.argmin(np.asarray(rss).mean(axis=1)))
    return HeadSample(
        labels=labels,
        experts=gather_heads(x, heads).reshape(len(x), -1),
        layer=layer,
        layer_heads=x[:, layer].reshape(len(x), -1),
        prompt=prompt,
    )


def write_heads(path, result: HuntResult, **settings) -> None:
    """The heads file of a hunt: ``HuntResult.to_json`` and the ``settings`` it ran with (k,
    lam), as ``load_heads`` reads it."""
    path = paths.mkdir(paths.of(path).parent) / paths.of(path).name
    paths.write_text(path, json.dumps({**result.to_json(), **settings}, indent=1))


def load_heads(path) -> np.ndarray:
    """Expert heads [K, 2] from a ``hunt`` JSON file ("heads") or a published one
    ("expert_heads", as in checkpoints/)."""
    path = paths.of(path)
    record = files.read_json(path, "a heads file")
    try:
        heads = np.asarray(
            record["heads"] if "heads" in record else record["expert_heads"], np.int32
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise InputError(f"{path}: not a heads file ({e})") from None
    try:
        return check_heads(heads)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None


def expert_features(video: VideoFeatures, store: FeatureStore, heads: np.ndarray) -> np.ndarray:
    """[S, K * D]: the experts' features of a video, from an all-head or an expert-head store
    (``detector.Probe.features_of``)."""
    return Probe("heads", heads).features_of(video.kinds(), store.spec, str(store.path))


# How the prompts' layer choices combine: HiProbe-VAD probes with one prompt; over M prompts the
# chosen layer is the argmax of the mean of each prompt's DLSP scores (``probe.layer_scores``).
COMBINE_PROMPTS = "mean of the per-prompt DLSP layer scores"


@dataclasses.dataclass(frozen=True)
class LayerResult:
    """HiProbe-VAD's layer (``hunt_layer``): ``layer``, the chosen decoder layer; ``layers``:
    the layers scored (the stores' hidden layers); ``scores`` [L]: the DLSP score of each, the
    mean over the prompts of ``prompt_scores`` [M, L]; ``criteria``: {"kl", "ldr", "entropy"}
    each [M, L], the raw criterion under each prompt."""

    layer: int
    layers: tuple[int, ...]
    scores: np.ndarray
    prompt_scores: np.ndarray
    criteria: dict
    backbone: str
    prompts: tuple[str, ...]
    stores: tuple[str, ...]

    def to_json(self) -> dict:
        return {
            "probe": "hidden",
            "layer": self.layer,
            "layers": list(self.layers),
            "combine": COMBINE_PROMPTS,
            "scores": np.round(self.scores, 6).tolist(),
            "prompt_scores": np.round(self.prompt_scores, 6).tolist(),
            "criteria": {k: np.round(v, 6).tolist() for k, v in self.criteria.items()},
            "backbone": self.backbone,
            "prompts": list(self.prompts),
            "stores": list(self.stores),
        }


def _hidden_rows(stores: Sequence[FeatureStore], events, labels, max_clips):
    """Each store's labelled hidden states [N, L, E] (the same rows of the same videos in every
    store, at most ``max_clips``) and their labels [N]."""
    first = stores[0].spec
    for s in stores:
        if not s.spec.holds("hidden"):
            raise InputError(f"{s.path}: holds no hidden states (extract with --features hidden)")
        if (s.spec.hidden_layers, s.spec.clip) != (first.hidden_layers, first.clip):
            raise InputError(f"{s.path}: other hidden layers or clip unit than {stores[0].path}")
    out = list(_labelled_rows(stores, events, labels, max_clips, "hidden", "probing"))
    return [x for _, x, _ in out], out[-1][2]


def _labelled_rows(stores: Sequence[FeatureStore], events, labels, max_clips, kind, job):
    """(store, its rows of ``kind`` ("features" or "hidden") [N, ...], their labels [N]) for each
    store: the same rows (at most ``max_clips``, ``clip_subset``) of the same labelled videos in
    every store, else an InputError naming the store (``job``: what needs both classes)."""
    reference = rows = None
    for s in stores:
        videos = labelled_videos(s, events, labels)
        layout = [(v.video_id, v.num_segments) for v, _ in videos]
        if reference is not None and layout != reference:
            raise InputError(f"{s.path}: holds other videos or segments than {stores[0].path}")
        reference = layout
        y = np.concatenate([y for _, y in videos])
        if len(np.unique(y)) < 2:
            raise InputError(f"{s.path}: all segments have one label; {job} needs both classes")
        rows = clip_subset(y, max_clips) if rows is None else rows
        yield s, np.concatenate([getattr(v, kind) for v, _ in videos])[rows], y[rows]


def hunt_layer(
    stores: Sequence[FeatureStore],
    events: Events | None = None,
    max_clips: int | None = 4000,
    mesh=None,
    labels: Labels | None = None,
) -> LayerResult:
    """HiProbe-VAD's Dynamic Layer Saliency Probing over the hidden states of one or more
    stores of the same videos (one a prompt): each prompt's criteria (``probe.layer_saliency``)
    and DLSP scores; the layer of the highest mean score (``COMBINE_PROMPTS``)."""
    if not stores:
        raise InputError("probing layers needs at least one store")
    hidden, y = _hidden_rows(stores, events, labels, max_clips)
    criteria, scores = [], []
    for s, x in zip(stores, hidden, strict=True):
        try:
            crit = {k: np.asarray(v) for k, v in probe.layer_saliency(x, y, mesh=mesh).items()}
        except InputError as e:
            raise InputError(f"{s.path}: {e}") from None
        criteria.append(crit)
        scores.append(np.asarray(probe.layer_scores(crit)))
    mean = np.mean(scores, axis=0)
    layers = stores[0].spec.hidden_layers
    return LayerResult(
        layer=int(layers[int(np.argmax(mean))]),
        layers=tuple(layers),
        scores=mean,
        prompt_scores=np.stack(scores),
        criteria={k: np.stack([c[k] for c in criteria]) for k in probe.CRITERIA},
        backbone=stores[0].spec.backbone,
        prompts=tuple(s.spec.prompt for s in stores),
        stores=tuple(str(s.path) for s in stores),
    )


def write_layers(path, result: LayerResult, **settings) -> None:
    """The layers file of a hidden-state hunt (``LayerResult.to_json`` and ``settings``)."""
    path = paths.mkdir(paths.of(path).parent) / paths.of(path).name
    paths.write_text(path, json.dumps({**result.to_json(), **settings}, indent=1))


def load_layer(path) -> int:
    """The chosen layer of a layers file (``write_layers``)."""
    path = paths.of(path)
    record = files.read_json(path, "a layers file")
    layer = record.get("layer") if isinstance(record, dict) else None
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise InputError(f"{path}: not a layers file (no layer index)")
    return layer
