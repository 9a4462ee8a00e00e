"""Robust head identification: headhunt_jax against the original's per-head numpy/sklearn loop.

Synthetic head features of 300 clips for 28 x 28 heads of dimension 128 (InternVL3-8B's shape)
under 2 prompts, a few heads carrying the anomaly signal. headhunt_jax scores every head of both
prompts (compile time included: the first call in this process compiles), then the robust
saliency and the top-5 heads. The loop computes the same four criteria head by head the way the
original does (np.cov + pinv, sklearn LedoitWolf, a broadcast [N, N, D] distance array and
rbf_kernel, sklearn KMeans + NMI); it is timed on a sample of heads per prompt and extrapolated
to all of them, twice: with numpy/sklearn's default BLAS and OpenMP threads (how the original
runs) and with them limited to one thread (on a small shared machine the default threads
oversubscribe the cores and the loop gets many times slower). Prints the times, both ratios, and
the largest relative difference of the criteria on the sampled heads.

    python benchmarks/rhi_vs_loop.py [--clips 300] [--sample 16]
"""

import argparse
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.pairwise import rbf_kernel
from threadpoolctl import threadpool_limits

import headhunt_jax as hh

LAYERS, HEADS, DIM, PROMPTS = 28, 28, 128, 2


def loop_criteria(anomalous, normal):
    """The original's four criteria of one head, in float64."""
    dim = anomalous.shape[1]
    diff = anomalous.mean(0) - normal.mean(0)
    scatter = (len(anomalous) - 1) * np.cov(anomalous, rowvar=False)
    scatter += (len(normal) - 1) * np.cov(normal, rowvar=False) + 1e-6 * np.eye(dim)
    w = np.linalg.pinv(scatter) @ diff
    lda = (w @ diff) ** 2 / (w @ scatter @ w)

    cov_a = LedoitWolf().fit(anomalous).covariance_ + 1e-10 * np.eye(dim)
    cov_n = LedoitWolf().fit(normal).covariance_ + 1e-10 * np.eye(dim)
    logdet_a, logdet_n = np.linalg.slogdet(cov_a)[1], np.linalg.slogdet(cov_n)[1]
    inv_a, inv_n = np.linalg.inv(cov_a), np.linalg.inv(cov_n)
    forward = logdet_n - logdet_a - dim + np.trace(inv_n @ cov_a) + diff @ inv_n @ diff
    backward = logdet_a - logdet_n - dim + np.trace(inv_a @ cov_n) + diff @ inv_a @ diff
    kl = np.clip(0.25 * (forward + backward), 0, 1e6)

    pooled = np.vstack([anomalous, normal])
    sq = np.sum((pooled[:, None, :] - pooled[None, :, :]) ** 2, axis=-1)
    gamma = 1.0 / (2 * np.median(sq[sq > 0]))
    mmd = (
        rbf_kernel(anomalous, anomalous, gamma=gamma).mean()
        + rbf_kernel(normal, normal, gamma=gamma).mean()
        - 2 * rbf_kernel(anomalous, normal, gamma=gamma).mean()
    )

    truth = np.r_[np.zeros(len(anomalous)), np.ones(len(normal))]
    clusters = KMeans(n_clusters=2, random_state=42, n_init="auto").fit_predict(pooled)
    nmi = normalized_mutual_info_score(truth, clusters)
    return np.array([lda, kl, max(mmd, 0.0), nmi])


def synthetic_prompts(clips, seed=0):
    """[PROMPTS] features [clips, L, H, D] float32 and labels [clips]; 10 heads carry a shift."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(clips) < 0.4).astype(int)
    planted = rng.choice(LAYERS * HEADS, size=10, replace=False)
    strength = np.zeros(LAYERS * HEADS)
    strength[planted] = rng.uniform(0.1, 0.6, size=10)
    direction = rng.normal(size=(LAYERS * HEADS, DIM))
    prompts = []
    for _ in range(PROMPTS):
        features = rng.normal(size=(clips, LAYERS * HEADS, DIM))
        features += labels[:, None, None] * (strength[:, None] * direction)[None]
        prompts.append(features.reshape(clips, LAYERS, HEADS, DIM).astype(np.float32))
    return prompts, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--sample", type=int, default=16, help="heads per prompt the loop times")
    args = parser.parse_args()

    prompts, labels = synthetic_prompts(args.clips)

    start = time.perf_counter()
    combined, raw = [], []
    for features in prompts:
        out = hh.saliency(features, labels)
        combined.append(out["combined"])
        raw.append(np.stack([out[c] for c in ("lda", "kl", "mmd", "nmi")], axis=-1))
    experts = np.asarray(hh.top_k_heads(hh.robust_saliency(np.stack(combined)), k=5))
    jax_seconds = time.perf_counter() - start

    sample = np.random.default_rng(1).choice(LAYERS * HEADS, size=args.sample, replace=False)

    def run_loop():
        start = time.perf_counter()
        looped = [
            [
                loop_criteria(
                    features[labels == 1, i // HEADS, i % HEADS].astype(np.float64),
                    features[labels == 0, i // HEADS, i % HEADS].astype(np.float64),
                )
                for i in sample
            ]
            for features in prompts
        ]
        return (time.perf_counter() - start) * (LAYERS * HEADS) / args.sample, looped

    loop_seconds, looped = run_loop()
    with threadpool_limits(limits=1):
        single_seconds, _ = run_loop()

    mine = np.stack([r[sample // HEADS, sample % HEADS] for r in raw])
    relative = np.abs(mine[..., :3] - np.asarray(looped)[..., :3]) / np.asarray(looped)[..., :3]
    nmi_equal = np.mean(np.isclose(mine[..., 3], np.asarray(looped)[..., 3], atol=1e-6))

    print(f"{args.clips} clips, {LAYERS} x {HEADS} heads of {DIM}, {PROMPTS} prompts")
    print(f"headhunt_jax (compile included): {jax_seconds:8.2f} s")
    print(f"per-head loop, extrapolated from {args.sample} heads a prompt:")
    print(f"  default BLAS/OpenMP threads: {loop_seconds:8.2f} s")
    print(f"  one thread:                  {single_seconds:8.2f} s")
    print(f"ratio loop / headhunt_jax, default threads: {loop_seconds / jax_seconds:.1f}x")
    print(f"ratio loop / headhunt_jax, one thread:      {single_seconds / jax_seconds:.1f}x")
    print(f"max relative difference of lda, kl, mmd on the sampled heads: {relative.max():.1e}")
    # Heads without cluster structure: sklearn's randomly seeded k-means and the deterministic
    # seeding here settle in different local optima, so their NMIs differ.
    print(f"sampled heads with the same nmi (same k-means clusters): {nmi_equal:.0%}")
    print(f"top-5 heads (layer, head): {[tuple(map(int, h)) for h in experts]}")


if __name__ == "__main__":
    main()
