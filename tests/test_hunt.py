"""Head saliency against a per-head numpy/scipy/sklearn loop (the original's way)."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.preprocessing import MinMaxScaler

import headhunt_jax as hh
from headhunt_jax import criteria

N, L, H, D = 48, 2, 3, 6


def reference_criteria(x, y):
    """(lda, kl, mmd, nmi) of one head x [N, D] in float64, and sklearn's 2-means labels."""
    a = x[y == 1].astype(np.float64)
    b = x[y == 0].astype(np.float64)
    if len(a) < 2 or len(b) < 2:
        return np.zeros(4), None
    dim = x.shape[1]
    diff = a.mean(0) - b.mean(0)

    scatter = (len(a) - 1) * np.cov(a, rowvar=False) + (len(b) - 1) * np.cov(b, rowvar=False)
    scatter += 1e-6 * np.eye(dim)
    w = np.linalg.pinv(scatter) @ diff
    within = w @ scatter @ w
    lda = 0.0 if within < 1e-9 else (w @ diff) ** 2 / within

    cov_a = LedoitWolf().fit(a).covariance_ + 1e-10 * np.eye(dim)
    cov_b = LedoitWolf().fit(b).covariance_ + 1e-10 * np.eye(dim)
    logdet_a = np.linalg.slogdet(cov_a)[1]
    logdet_b = np.linalg.slogdet(cov_b)[1]
    inv_a, inv_b = np.linalg.inv(cov_a), np.linalg.inv(cov_b)
    kl_ab = 0.5 * (logdet_b - logdet_a - dim + np.trace(inv_b @ cov_a) + diff @ inv_b @ diff)
    kl_ba = 0.5 * (logdet_a - logdet_b - dim + np.trace(inv_a @ cov_b) + diff @ inv_a @ diff)
    kl = np.clip(0.5 * (kl_ab + kl_ba), 0, 1e6)

    pooled = np.vstack([a, b])
    sq = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    median = np.median(sq[sq > 0])
    gamma = 1.0 / (2 * median)
    mmd = max(
        rbf_kernel(a, a, gamma=gamma).mean()
        + rbf_kernel(b, b, gamma=gamma).mean()
        - 2 * rbf_kernel(a, b, gamma=gamma).mean(),
        0.0,
    )

    truth = np.r_[np.ones(len(a)), np.zeros(len(b))]
    clusters = KMeans(n_clusters=2, random_state=42, n_init="auto").fit_predict(pooled)
    nmi = normalized_mutual_info_score(truth, clusters)
    return np.array([lda, kl, mmd, nmi]), clusters


def reference_saliency(features, labels):
    """[4, L, H] raw criteria and [L, H] combined saliency, head by head."""
    raw = np.zeros((4,) + features.shape[1:3])
    for layer in range(features.shape[1]):
        for head in range(features.shape[2]):
            raw[:, layer, head] = reference_criteria(features[:, layer, head], labels)[0]
    scaled = [MinMaxScaler().fit_transform(r.reshape(-1, 1)).reshape(r.shape) for r in raw]
    return raw, np.nanmean(scaled, axis=0)


def random_heads(seed, n=N, dim=D):
    """Gaussian clips; each head's anomalies shifted and rescaled by its own random amount."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(int)
    rng.shuffle(labels)
    features = rng.normal(size=(n, L, H, dim))
    shift = rng.uniform(0.2, 1.5, size=(1, L, H, dim))
    scale = rng.uniform(0.5, 2.0, size=(1, L, H, dim))
    anomalous = labels[:, None, None, None] == 1
    features = np.where(anomalous, features * scale + shift, features)
    return features.astype(np.float32), labels


def blob_heads(seed):
    """Two well-separated blobs per head, the labels related to the blobs by a different amount
    in each head: k-means is unambiguous, so sklearn's and ours must find the same clusters."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(N) % 2).astype(int)
    features = np.empty((N, L, H, D), np.float32)
    for i, agreement in enumerate(np.linspace(0.55, 1.0, L * H)):
        blob = np.where(rng.random(N) < agreement, labels, 1 - labels)
        centre = np.zeros(D)
        centre[i % D] = 12.0
        features[:, i // H, i % H] = rng.normal(size=(N, D)) + blob[:, None] * centre
    return features, labels


def test_criteria_match_reference():
    features, labels = random_heads(0)
    # 6 heads in chunks of 4: the last chunk is padded. (The same shapes in the tests below share
    # one compilation.)
    out = hh.saliency(features, labels, heads_per_chunk=4)
    raw, _ = reference_saliency(features, labels)
    for i, name in enumerate(("lda", "kl", "mmd")):
        np.testing.assert_allclose(out[name], raw[i], rtol=1e-5, err_msg=name)


def test_lda_with_fewer_samples_than_dimensions():
    # N - 2 < D: the within-class scatter is singular and its 1e-6 ridge dominates the ratio.
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(8), np.zeros(12)].astype(int)
    features = rng.normal(size=(20, 1, 2, 24)).astype(np.float32)
    features[labels == 1] += 0.5
    out = hh.saliency(features, labels)
    for head in range(2):
        expected = reference_criteria(features[:, 0, head], labels)[0]
        np.testing.assert_allclose(out["lda"][0, head], expected[0], rtol=1e-5)
        np.testing.assert_allclose(out["kl"][0, head], expected[1], rtol=1e-5)


def test_nmi_and_combined_where_clusterings_agree():
    features, labels = blob_heads(2)
    out = hh.saliency(features, labels)
    raw, combined = reference_saliency(features, labels)
    for layer in range(L):
        for head in range(H):
            clusters = reference_criteria(features[:, layer, head], labels)[1]
            blob = features[:, layer, head].max(axis=1) > 6.0
            # reference_criteria stacks the anomalies first
            blob = np.r_[blob[labels == 1], blob[labels == 0]]
            assert normalized_mutual_info_score(blob, clusters) == 1.0
    # Float32 NMI near 0 is exact to ~1e-7 absolute (the mutual information is a cancelling sum).
    np.testing.assert_allclose(out["nmi"], raw[3], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["combined"], combined, atol=1e-5)


def test_combined_is_the_mean_of_min_max_scaled_criteria():
    features, labels = random_heads(3)
    out = hh.saliency(features, labels, heads_per_chunk=4)
    scaled = [
        (v - v.min()) / (v.max() - v.min()) for v in (out[c] for c in ("lda", "kl", "mmd", "nmi"))
    ]
    np.testing.assert_allclose(out["combined"], np.mean(scaled, axis=0), atol=1e-6)


def test_the_registry_is_what_is_scored_returned_and_combined(monkeypatch):
    # A fifth criterion, one function and one registry entry: the largest squared distance
    # between two clips, read from what the criteria share.
    def spread(head, classes):
        return jnp.max(head.d2)

    features, labels = random_heads(3)
    before = hh.saliency(features, labels, heads_per_chunk=4)
    assert set(before) == {*criteria.REGISTRY, "combined"}
    with monkeypatch.context() as m:
        m.setitem(criteria.REGISTRY, "spread", spread)
        out = hh.saliency(features, labels, heads_per_chunk=4)
    assert set(out) == {"lda", "kl", "mmd", "nmi", "spread", "combined"}
    for name in ("lda", "kl", "mmd", "nmi"):
        np.testing.assert_array_equal(out[name], before[name], err_msg=name)
    x = features.astype(np.float64)
    want = ((x[:, None] - x[None]) ** 2).sum(-1).max(axis=(0, 1))
    np.testing.assert_allclose(out["spread"], want, rtol=1e-5)
    scaled = [
        (v - v.min()) / (v.max() - v.min())
        for v in (out[c] for c in ("lda", "kl", "mmd", "nmi", "spread"))
    ]
    np.testing.assert_allclose(out["combined"], np.mean(scaled, axis=0), atol=1e-6)
    assert np.abs(out["combined"] - before["combined"]).max() > 1e-3
    # The registry restored, the four criteria are back (nothing compiled for five is reused).
    again = hh.saliency(features, labels, heads_per_chunk=4)
    assert set(again) == set(before)
    np.testing.assert_array_equal(again["combined"], before["combined"])


def test_duplicate_samples_are_left_out_of_the_median():
    features, labels = random_heads(4)
    features[1::4] = features[0::4]  # many exact duplicate pairs
    out = hh.saliency(features, labels, heads_per_chunk=4)
    raw, _ = reference_saliency(features, labels)
    np.testing.assert_allclose(out["mmd"], raw[2], rtol=1e-5)


def test_a_class_with_one_clip_gives_zeros():
    features, _ = random_heads(5)
    labels = np.zeros(N, int)
    labels[7] = 1
    out = hh.saliency(features, labels)
    for name in ("lda", "kl", "mmd", "nmi", "combined"):
        np.testing.assert_array_equal(out[name], 0.0)


def test_top_k_of_planted_heads_matches_the_reference_pipeline():
    rng = np.random.default_rng(6)
    labels = (np.arange(N) % 2).astype(int)
    planted = [(1, 2), (0, 1), (1, 0), (0, 0), (1, 1)]
    strengths = [2.4, 1.6, 1.1, 0.8, 0.6]
    direction = rng.normal(size=D)
    combined, reference = [], []
    for _ in range(2):
        features = rng.normal(size=(N, L, H, D)).astype(np.float32) * 1.0
        for (layer, head), s in zip(planted, strengths, strict=True):
            features[labels == 1, layer, head] += (s * direction).astype(np.float32)
        combined.append(hh.saliency(features, labels)["combined"])
        reference.append(reference_saliency(features, labels)[1])
    rss = hh.robust_saliency(np.stack(combined))
    ref_rss = np.mean(reference, axis=0) - 0.5 * np.std(reference, axis=0)
    ref_order = np.argsort(ref_rss.ravel(), kind="stable")[::-1][:5]
    assert np.all(-np.diff(ref_rss.ravel()[ref_order]) > 1e-3)  # no near-ties in the reference
    expected = np.stack(np.divmod(ref_order, H), axis=1)
    np.testing.assert_array_equal(hh.top_k_heads(rss, k=5), expected)
    np.testing.assert_array_equal(expected, planted)


def test_robust_saliency_is_mean_minus_population_std():
    combined = np.random.default_rng(7).random((3, L, H))
    np.testing.assert_allclose(
        hh.robust_saliency(combined, lam=0.7),
        combined.mean(0) - 0.7 * combined.std(0),
        rtol=1e-6,
    )


def test_top_k_ties_follow_the_reversed_stable_argsort():
    rss = np.array([[0.5, 0.9, 0.5], [0.9, 0.1, 0.5]], np.float32)
    order = np.argsort(rss.ravel(), kind="stable")[::-1][:4]
    np.testing.assert_array_equal(hh.top_k_heads(rss, k=4), np.stack(np.divmod(order, 3), axis=1))


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.zeros((N, L, H, D)), np.zeros(N), "one class"),
        (np.zeros((N, L, H, D)), np.ones(N), "one class"),
        (np.full((N, L, H, D), np.nan), np.arange(N) % 2, "NaN or inf"),
        (np.full((N, L, H, D), np.inf), np.arange(N) % 2, "NaN or inf"),
        (np.zeros((N, L, H)), np.arange(N) % 2, r"\[N, L, H, D\]"),
        (np.zeros((N, L, H, D)), np.arange(N - 1) % 2, "labels must be"),
        (np.zeros((N, L, H, D)), np.arange(N) % 3, "0 .normal. or 1"),
    ],
)
def test_saliency_rejects_bad_input(features, labels, message):
    with pytest.raises(ValueError, match=message):
        hh.saliency(features, labels)


def test_robust_saliency_and_top_k_reject_bad_input():
    with pytest.raises(ValueError, match="at least 2 prompts"):
        hh.robust_saliency(np.zeros((1, L, H)))
    with pytest.raises(ValueError, match="NaN or inf"):
        hh.robust_saliency(np.full((2, L, H), np.nan))
    with pytest.raises(ValueError, match=r"\[M, L, H\]"):
        hh.robust_saliency(np.zeros((L, H)))
    with pytest.raises(ValueError, match="k must be"):
        hh.top_k_heads(np.zeros((L, H)), k=L * H + 1)
    with pytest.raises(ValueError, match="NaN"):
        hh.top_k_heads(np.full((L, H), np.nan))


def original_kl(a, b):
    """The original's symmetric KL of one head (metrics.calculate_kl_divergence): Ledoit-Wolf on
    the float32 samples, a 1e-10 ridge in float64, and 0 where an exception stops it."""
    dim = a.shape[1]
    try:
        cov_a = LedoitWolf().fit(a).covariance_ + 1e-10 * np.eye(dim)
        cov_b = LedoitWolf().fit(b).covariance_ + 1e-10 * np.eye(dim)
    except Exception:
        return 0.0
    diff = b.mean(0) - a.mean(0)
    try:
        logdet_a = np.linalg.slogdet(cov_a)[1]
        logdet_b = np.linalg.slogdet(cov_b)[1]
        inv_a, inv_b = np.linalg.inv(cov_a), np.linalg.inv(cov_b)
    except np.linalg.LinAlgError:
        return 0.0
    kl_ab = 0.5 * (logdet_b - logdet_a - dim + np.trace(inv_b @ cov_a) + diff @ inv_b @ diff)
    kl_ba = 0.5 * (logdet_a - logdet_b - dim + np.trace(inv_a @ cov_b) + diff @ inv_a @ diff)
    return float(np.clip(0.5 * (kl_ab + kl_ba), 0, 1e6))


def test_kl_is_zero_where_the_original_cannot_invert_a_class_covariance():
    rng = np.random.default_rng(9)
    labels = np.zeros(N, int)
    labels[rng.choice(N, 8, replace=False)] = 1
    features = np.empty((N, 1, 4, D), np.float32)
    features[:, 0, 0] = rng.normal(size=(N, D)) + 0.8 * labels[:, None]
    # Heads 1 and 2: the anomalies are m +- a u, so the Ledoit-Wolf shrinkage is 0 and the
    # anomalies' covariance a^2 u u^T, of rank 1; every value is exact in float32. With
    # a^2 >= 2^20 the 1e-10 ridge is lost in float64 and the original's inversion fails; with a
    # smaller a the ridge keeps the matrix invertible and the divergence is beyond the clip.
    # The normals are pairs +-r, so the mean of all clips, m / 6, is exact too.
    u = np.array([1, -2, 1, 2, -1, 1])
    m = 6 * rng.integers(-50, 50, size=D)
    normals = rng.integers(-3000, 3000, size=(20, D))
    signs = np.where(np.arange(8) % 2, 1, -1)[:, None]
    for head, a in ((1, 2**11), (2, 2**8)):
        features[labels == 1, 0, head] = m + signs * a * u
        features[labels == 0, 0, head] = np.concatenate([normals, -normals])
    # Head 3: values near 1e9, where sklearn's shrinkage overflows float32 and LedoitWolf fails.
    features[:, 0, 3] = rng.normal(size=(N, D)) * 1e9
    out = hh.saliency(features, labels)
    heads = [(features[labels == 1, 0, h], features[labels == 0, 0, h]) for h in range(4)]

    singular = LedoitWolf().fit(heads[1][0]).covariance_ + 1e-10 * np.eye(D)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.inv(singular)
    with pytest.raises(ValueError), np.errstate(all="ignore"):
        LedoitWolf().fit(heads[3][0])
    with np.errstate(all="ignore"):  # head 3 overflows in the original
        expected = [original_kl(a, b) for a, b in heads]
    assert expected[1:] == [0.0, 1e6, 0.0]
    np.testing.assert_array_equal(out["kl"][0, 1:], expected[1:])

    # The ordinary head is unchanged.
    np.testing.assert_allclose(out["kl"][0, 0], expected[0], rtol=1e-5)
    reference = reference_criteria(features[:, 0, 0], labels)[0]
    for i, name in enumerate(("lda", "kl", "mmd")):
        np.testing.assert_allclose(out[name][0, 0], reference[i], rtol=1e-5, err_msg=name)
