"""PNG figures, the original's set: the robust-saliency heatmap of all heads, each criterion's
saliency beside it, the heads' importance, t-SNE of the experts' features against a layer's, a
video's score timeline, the scores of many videos, and the frame-level ROC and PR curves.

Each function writes to ``path`` (a local path or a ``paths`` URL, written whole; or a binary
file object, as matplotlib's ``savefig`` takes) and returns it.
"""

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from headhunt_jax import paths

NORMAL, ANOMALY, OTHER = "tab:blue", "tab:red", "tab:gray"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rss_heatmap(rss, heads, path, title="Robust saliency score") -> Path:
    """rss [L, H] as a layer x head heatmap, the expert heads circled and ranked."""
    plt = _pyplot()
    rss = np.asarray(rss)
    fig, ax = plt.subplots(
        figsize=(max(4.0, 1.2 + 0.28 * rss.shape[1]), max(3.0, 1.0 + 0.22 * rss.shape[0]))
    )
    im = ax.imshow(rss, origin="lower", aspect="auto", cmap="viridis")
    for rank, (layer, head) in enumerate(np.asarray(heads).tolist(), start=1):
        ax.scatter(head, layer, s=120, facecolors="none", edgecolors="red", linewidths=1.5)
        ax.annotate(str(rank), (head, layer), color="red", ha="center", va="center", fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def timeline(result: dict, path, truth: Sequence[tuple[int, int]] = ()) -> Path:
    """A detection result (``detection.video_result``) over time: raw and smoothed segment scores,
    the threshold, detected events, and ground-truth frame ranges shaded."""
    plt = _pyplot()
    fps = result["fps"]
    spans = np.asarray(result["segment_frames"], float) / fps
    mids = spans.mean(axis=1)
    fig, ax = plt.subplots(figsize=(8, 3.0))
    for i, (start, end) in enumerate(truth):
        ax.axvspan(
            start / fps,
            end / fps,
            color="red",
            alpha=0.15,
            label="ground truth" if i == 0 else None,
        )
    for i, e in enumerate(result["events"]):
        ax.axvspan(
            e["start_s"],
            e["end_s"],
            ymin=0.93,
            ymax=1.0,
            color="black",
            label="detected" if i == 0 else None,
        )
    ax.plot(
        mids, result["segment_scores"], "o-", ms=3, lw=1, color="tab:blue", label="segment score"
    )
    ax.plot(mids, result["smoothed_scores"], lw=2, color="tab:orange", label="smoothed")
    ax.axhline(result["tau"], ls="--", lw=1, color="gray", label="threshold")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(0, max(spans[-1, 1], result["frames"] / fps))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("anomaly score")
    ax.set_title(result["video"], fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=7, ncol=5, frameon=False)
    return _save(fig, path)


def _save(fig, path):
    plt = _pyplot()
    fig.tight_layout()
    if isinstance(path, str | Path) or paths.is_url(path):  # a file, on a disk or a bucket
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=110, format="png")
        plt.close(fig)
        return paths.write_bytes(path, buffer.getvalue())
    fig.savefig(path, dpi=110, format="png")  # a file object
    plt.close(fig)
    return path


def _scaled(values) -> np.ndarray:
    """Min-max scaled over all heads, as the criteria enter the combined saliency."""
    values = np.asarray(values, np.float64)
    span = values.max() - values.min()
    return (values - values.min()) / (span if span > 0 else 1.0)


def saliency_criteria(criteria: Mapping[str, np.ndarray], rss, heads, path):
    """Each criterion's saliency map (``HuntResult.criteria``: [M, L, H] raw values a prompt;
    shown min-max scaled and averaged over the prompts, as it enters the combined saliency)
    beside the robust saliency score [L, H], the expert heads marked."""
    plt = _pyplot()
    panels = [(name.upper(), _scaled(v).mean(axis=0)) for name, v in criteria.items()]
    panels.append(("RSS", np.asarray(rss)))
    layers, num_heads = panels[-1][1].shape
    size = (max(2.4, 0.9 + 0.1 * num_heads), max(2.4, 0.8 + 0.09 * layers))
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]))
    for ax, (name, values) in zip(np.atleast_1d(axes), panels, strict=True):
        im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
        heads_arr = np.asarray(heads).reshape(-1, 2)
        ax.scatter(heads_arr[:, 1], heads_arr[:, 0], s=40, facecolors="none", edgecolors="red")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def head_importance(rss, combined, heads, path, top: int = 20):
    """The ``top`` heads by robust saliency score as bars, with their mean saliency over the
    prompts and its spread (combined [M, L, H], population std), the experts in red."""
    plt = _pyplot()
    rss = np.asarray(rss)
    combined = np.asarray(combined)
    num_heads = rss.shape[1]
    order = np.argsort(rss.ravel(), kind="stable")[::-1][:top]
    experts = {(int(layer), int(head)) for layer, head in np.asarray(heads).reshape(-1, 2)}
    pairs = [divmod(int(i), num_heads) for i in order]
    flat = combined.reshape(len(combined), -1)[:, order]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(order) + 1.5), 3.4))
    colors = [ANOMALY if p in experts else NORMAL for p in pairs]
    x = np.arange(len(order))
    ax.bar(x, rss.ravel()[order], color=colors, label="RSS")
    ax.errorbar(
        x,
        flat.mean(axis=0),
        yerr=flat.std(axis=0),
        fmt="o",
        ms=3,
        color="black",
        capsize=2,
        label="mean saliency over prompts (± std)",
    )
    ax.set_xticks(x, [f"{layer},{head}" for layer, head in pairs], rotation=90, fontsize=7)
    ax.set_xlabel("head (layer, head); experts in red")
    ax.set_ylabel("saliency")
    ax.set_title(f"The {len(order)} heads of highest robust saliency")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _embedding(features, seed: int):
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    n = len(features)
    # t-SNE needs perplexity < n; 30 (its default) for the usual sizes.
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=1000, random_state=seed)
    # One thread: Barnes-Hut's OpenMP threads spin against XLA's idle pool (2 cores: 20 s for
    # 96 rows instead of 0.2 s).
    with threadpool_limits(limits=1):
        return tsne.fit_transform(np.asarray(features, np.float32))


def tsne(sample, path, seed: int = 0):
    """t-SNE of the expert heads' concatenated features (``HuntResult.sample``, normal vs
    anomalous), beside every head of the layer of lowest mean RSS for comparison."""
    plt = _pyplot()
    labels = np.asarray(sample.labels)
    panels = [
        ("the expert heads", sample.experts),
        (f"layer {sample.layer}, every head (lowest mean RSS)", sample.layer_heads),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (title, features) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(features) < 4:
            ax.text(0.5, 0.5, f"{len(features)} rows: too few for t-SNE", ha="center")
            continue
        points = _embedding(features, seed)
        for value, name, color in ((0, "normal", NORMAL), (1, "anomalous", ANOMALY)):
            mask = labels == value
            ax.scatter(*points[mask].T, s=12, alpha=0.7, color=color, label=name)
        ax.legend(fontsize=8)
    fig.suptitle(f"t-SNE of head features ({len(labels)} clips)", fontsize=10)
    return _save(fig, path)


def score_summary(
    results: Sequence[dict], path, labels: Mapping[str, int] | None = None, most: int = 100
):
    """Each video's score (``video_score``, the highest smoothed score) as a bar, highest first,
    coloured by its label where known, the detector's threshold marked; at most ``most``
    videos (the highest)."""
    plt = _pyplot()
    ranked = sorted(results, key=lambda r: -r["video_score"])
    shown = ranked[:most]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.2 * len(shown)))
    label_of = (lambda v: None) if labels is None else labels.get
    colors = [{None: OTHER, 0: NORMAL, 1: ANOMALY}[label_of(r["video"])] for r in shown]
    ax.barh(np.arange(len(shown)), [r["video_score"] for r in shown], color=colors)
    ax.set_yticks(np.arange(len(shown)), [r["video"][-40:] for r in shown], fontsize=7)
    ax.invert_yaxis()
    if shown:
        ax.axvline(shown[0]["tau"], ls="--", lw=1, color="black", label="threshold tau")
    ax.set_xlim(0, 1)
    ax.set_xlabel("video score (highest smoothed segment score)")
    title = "Video scores" + (
        f" (the {most} highest of {len(ranked)})" if len(ranked) > most else ""
    )
    ax.set_title(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (ANOMALY, NORMAL)]
    if labels is not None:
        ax.legend(handles, ["anomalous", "normal"], fontsize=7, loc="lower right")
    return _save(fig, path)


def roc_pr(curves: Mapping[str, np.ndarray], path, auc=None, ap=None):
    """Frame-level ROC and precision-recall curves (``evaluation.frame_curves``)."""
    plt = _pyplot()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(8, 3.6))
    roc.plot(curves["fpr"], curves["tpr"], lw=1.5)
    roc.plot([0, 1], [0, 1], ls="--", lw=1, color=OTHER)
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    roc.set_title("ROC" + ("" if auc is None else f" (AUC {auc:.3f})"), fontsize=10)
    pr.step(curves["recall"], curves["precision"], where="post", lw=1.5)
    pr.set_xlabel("recall")
    pr.set_ylabel("precision")
    pr.set_title("Precision-recall" + ("" if ap is None else f" (AP {ap:.3f})"), fontsize=10)
    for ax in (roc, pr):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    return _save(fig, path)


HUNT_FIGURES = {
    "saliency_criteria": "Saliency of each criterion beside the robust saliency score",
    "head_importance": "The heads of highest robust saliency",
    "tsne": "t-SNE of the expert heads' features and of a layer's heads",
}


def hunt_figures(result, heatmap, prefix: str = "") -> dict[str, Path]:
    """A hunt's figures (``experts.HuntResult``): the RSS heatmap at ``heatmap`` and, in its
    folder, ``{prefix}saliency_criteria.png``, ``{prefix}head_importance.png`` and
    ``{prefix}tsne.png`` (when the result kept a sample). Returns {caption: path}."""
    heatmap = paths.of(heatmap)
    folder = heatmap.parent
    written = {
        "Robust saliency score of every head": rss_heatmap(result.rss, result.heads, heatmap)
    }
    path = lambda name: folder / f"{prefix}{name}.png"
    if result.criteria:
        written[HUNT_FIGURES["saliency_criteria"]] = saliency_criteria(
            result.criteria, result.rss, result.heads, path("saliency_criteria")
        )
    written[HUNT_FIGURES["head_importance"]] = head_importance(
        result.rss, result.combined, result.heads, path("head_importance")
    )
    if result.sample is not None:
        written[HUNT_FIGURES["tsne"]] = tsne(result.sample, path("tsne"))
    return written


LAYER_FIGURE = "DLSP criteria of every layer and the chosen one"


def layer_criteria(result, path) -> Path:
    """A hidden-state hunt's figure (``experts.LayerResult``): each DLSP criterion per layer
    (KL, LDR, entropy; a line a prompt) and the DLSP score (mean over prompts, each prompt's
    faint), the chosen layer marked."""
    plt = _pyplot()
    layers = np.asarray(result.layers)
    names = {"kl": "KL (anomaly sensitivity)", "ldr": "LDR (separability)", "entropy": "entropy"}
    panels = [(names[k], np.asarray(v)) for k, v in result.criteria.items()]
    panels.append(("DLSP score", np.asarray(result.prompt_scores)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    for ax, (title, values) in zip(np.atleast_1d(axes), panels, strict=True):
        for m, row in enumerate(values):
            ax.plot(layers, row, marker="o", ms=2.5, alpha=0.5, label=f"prompt {m + 1}")
        if title == "DLSP score":
            ax.plot(layers, result.scores, color="black", lw=2, label="mean")
        ax.axvline(result.layer, color=ANOMALY, ls="--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("layer")
    np.atleast_1d(axes)[-1].legend(fontsize=6)
    fig.suptitle(f"chosen layer {result.layer}", fontsize=9)
    return _save(fig, path)
