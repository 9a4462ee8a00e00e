"""The original's figures from a hunt and a detection run, and the curves behind ROC and PR."""

import io

import numpy as np
import pytest
from PIL import Image
from test_pipeline import _store

from headhunt_jax import annotations, experts, plots
from headhunt_jax.evaluation import curves, ranking_metrics
from headhunt_jax.hunt import CRITERIA, saliency


@pytest.fixture(scope="module")
def hunted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hunt")
    labels = [0, 1, 0, 1, 0, 1]
    stores = [_store(tmp / f"p{m}", f"prompt {m}", labels, seed=m) for m in range(2)]
    # Events: segments 2-5 of the anomalous videos are the shifted ones.
    events = {f"v{i}": [(96, 288)] for i, label in enumerate(labels) if label}
    return stores, events, experts.hunt(stores, k=2, events=events)


def test_hunt_keeps_each_criterion_and_a_sample(hunted):
    stores, events, result = hunted
    for m, store in enumerate(stores):
        videos = annotations.labelled_videos(store, events)
        x = np.concatenate([v.features for v, _ in videos])
        y = np.concatenate([y for _, y in videos])
        want = saliency(x, y)
        for name in CRITERIA:
            np.testing.assert_array_equal(result.criteria[name][m], want[name])
    sample = result.sample
    assert sample.prompt == "prompt 1" and sample.experts.shape == (48, 2 * 4)
    assert sample.layer == int(np.argmin(result.rss.mean(axis=1)))
    layer_heads = x[:, sample.layer].reshape(48, -1)  # the last store's rows, all kept (< 1000)
    np.testing.assert_array_equal(sample.layer_heads, layer_heads)
    np.testing.assert_array_equal(sample.labels, y)
    heads = result.heads
    np.testing.assert_array_equal(
        sample.experts, np.concatenate([x[:, layer, head] for layer, head in heads], axis=1)
    )
    assert set(result.to_json()["criteria"]) == set(CRITERIA)


def test_hunt_figures_are_written(hunted, tmp_path):
    _, _, result = hunted
    written = plots.hunt_figures(result, tmp_path / "heads.png", prefix="heads_")
    names = sorted(p.name for p in written.values())
    assert names == [
        "heads.png",
        "heads_head_importance.png",
        "heads_saliency_criteria.png",
        "heads_tsne.png",
    ]
    for path in written.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_score_summary_and_roc_pr_write_pngs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = labels * 0.3 + rng.random(200)
    results = [
        {"video": f"v{i}", "video_score": float(s), "tau": 0.5} for i, s in enumerate(scores[:12])
    ]
    for figure in (
        plots.score_summary(results, io.BytesIO(), {"v0": 0, "v1": 1}),
        plots.roc_pr(curves(labels, scores), io.BytesIO(), *ranking_metrics(labels, scores)),
    ):
        assert Image.open(io.BytesIO(figure.getvalue())).format == "PNG"


def test_curves_are_sklearns_and_enclose_auc_and_ap():
    from sklearn.metrics import precision_recall_curve, roc_curve

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = np.round(labels * 0.4 + rng.random(500), 2)  # ties
    got = curves(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(got["fpr"], fpr)
    np.testing.assert_allclose(got["tpr"], tpr)
    precision, recall, _ = precision_recall_curve(labels, scores)
    # sklearn lists the PR points by ascending threshold, ending at (recall 0, precision 1).
    np.testing.assert_allclose(got["recall"], recall[::-1])
    np.testing.assert_allclose(got["precision"], precision[::-1])
    auc, ap = ranking_metrics(labels, scores)
    assert np.trapezoid(got["tpr"], got["fpr"]) == pytest.approx(auc, abs=1e-6)
    assert np.sum(np.diff(got["recall"]) * got["precision"][1:]) == pytest.approx(ap, abs=1e-6)
