"""PNG figures: the robust-saliency heatmap of all heads, and a video's score timeline."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def timeline(result: dict, path, truth: Sequence[tuple[int, int]] = ()) -> Path:
    """A detection result (``pipeline.video_result``) over time: raw and smoothed segment scores,
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
